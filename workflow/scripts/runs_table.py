"""One table of every run's metrics, base vs finetuned (rule runs_table)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "runs_table")  # noqa: F821 - injected by Snakemake

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from vidtune.atomic import write_text  # noqa: E402
from vidtune.scoring import cross_run_table  # noqa: E402

metrics = {run: json.loads(Path(path).read_text()) for run, path in zip(snakemake.params.runs, snakemake.input.metrics)}
write_text(snakemake.output.table, cross_run_table(metrics))
