"""Write the report's overview: data summary of every dataset, metrics of every run (rule report_overview)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "report_overview")  # noqa: F821 - injected by Snakemake

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from vidtune.report import cross_run_html, data_summary_html  # noqa: E402


def read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


inputs = snakemake.input
summaries = {name: {**read(ingest), **read(summary)}
             for name, ingest, summary in zip(snakemake.params.datasets, inputs.ingest, inputs.summaries)}
data_summary_html(summaries, snakemake.output.data)
cross_run_html({run: read(path) for run, path in zip(snakemake.params.runs, inputs.metrics)},
               snakemake.output.runs)
log.info("overview written")
