"""Every run side by side with intervals, and the best run per metric, in Markdown (rule runs_table)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "runs_table")  # noqa: F821 - injected by Snakemake

from vidtune.atomic import read_json as read, write_text  # noqa: E402
from vidtune.comparison import markdown_table  # noqa: E402


inputs, params = snakemake.input, snakemake.params
runs = {run: {"metrics": read(metrics), "train": read(train), "swept": swept}
        for run, metrics, train, swept in zip(params.runs, inputs.metrics, inputs.train, params.swept)}
write_text(snakemake.output.table, markdown_table(runs, read(inputs.comparison)))
