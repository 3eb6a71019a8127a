"""Join a prediction's shards into one file sorted by id (rule join_predictions)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "join_predictions")  # noqa: F821 - injected by Snakemake

from vidtune.atomic import read_jsonl, write_jsonl  # noqa: E402
from vidtune.prediction_shards import join_predictions  # noqa: E402

shards = [read_jsonl(path) for path in snakemake.input.shards]
joined = join_predictions(shards)
write_jsonl(snakemake.output.predictions, joined)
log.info("%d predictions from %d shards", len(joined), len(shards))
