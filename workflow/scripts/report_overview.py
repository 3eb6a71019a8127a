"""Write the report's overview: data summary of every dataset, every run compared (rule report_overview)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "report_overview")  # noqa: F821 - injected by Snakemake

from vidtune.atomic import read_json as read  # noqa: E402
from vidtune.check_training_data import combine_summaries  # noqa: E402
from vidtune.report import comparison_html, data_summary_html  # noqa: E402


inputs, params = snakemake.input, snakemake.params
summaries = {name: {**read(ingest), **read(summary)}
             for name, ingest, summary in zip(params.datasets, inputs.ingest, inputs.summaries)}
by_run = {}
for run, check in zip(params.checked, inputs.checks, strict=True):
    by_run.setdefault(run, []).append(read(check))
checks = {run: combine_summaries(summaries) for run, summaries in by_run.items()}
data_summary_html(summaries, snakemake.output.data, checks)
runs = {run: {"metrics": read(metrics), "train": read(train), "swept": swept}
        for run, metrics, train, swept in zip(params.runs, inputs.metrics, inputs.train, params.swept)}
comparison_html(runs, read(inputs.comparison), snakemake.output.runs)
log.info("overview written")
