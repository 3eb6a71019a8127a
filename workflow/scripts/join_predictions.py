"""Join a prediction's shards into one file sorted by id (rule join_predictions)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "join_predictions")  # noqa: F821 - injected by Snakemake

import json  # noqa: E402

from vidtune.atomic import write_jsonl  # noqa: E402
from vidtune.prediction_shards import join_predictions  # noqa: E402

shards = []
for path in snakemake.input.shards:
    with open(path, encoding="utf-8") as handle:
        shards.append([json.loads(line) for line in handle if line.strip()])
joined = join_predictions(shards)
write_jsonl(snakemake.output.predictions, joined)
log.info("%d predictions from %d shards", len(joined), len(shards))
