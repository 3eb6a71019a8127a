"""Write one run's report pages: metrics table and chart, configuration, sample gallery (rule report_run)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "report_run")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.atomic import read_json, read_jsonl  # noqa: E402
from vidtune.internvl_format import record_media_paths  # noqa: E402
from vidtune.report import config_html, gallery_html, metrics_bar_chart, metrics_table_html  # noqa: E402


metrics = read_json(snakemake.input.metrics)
out = snakemake.output
metrics_table_html(metrics, out.metrics_table)
metrics_bar_chart(metrics, out.metrics_chart)
# The settings that made this run's model and predictions (vidtune.reach: those reaching train or predict).
config_html({"run": snakemake.params.run, "model": snakemake.params.model}, out.config)
frames = {record["id"]: [str(p) for p in record_media_paths(record, Path(snakemake.config["results"]))]
          for path in snakemake.input.records for record in read_jsonl(path)}
evaluation = snakemake.params.run["evaluation"]
gallery_html(read_jsonl(snakemake.input.per_sample), frames, out.gallery, size=evaluation["gallery_size"],
             seed=0)
log.info("report pages written")
