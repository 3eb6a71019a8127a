"""Paired bootstrap of every two runs' finetuned metrics on the same test set (rule compare_runs)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "compare_runs")  # noqa: F821 - injected by Snakemake

from vidtune.atomic import read_jsonl, write_json  # noqa: E402
from vidtune.scoring import compare_runs  # noqa: E402


per_sample = {run: read_jsonl(path) for run, path in zip(snakemake.params.runs, snakemake.input.per_sample)}
comparison = compare_runs(per_sample, **snakemake.params.bootstrap)
write_json(snakemake.output.comparison, comparison)
log.info("compared %d pairs of runs", len(comparison["differences"]))
