"""Predict one shard of a run's evaluation records with the base or the merged model (rules predict_*)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "predict")  # noqa: F821 - injected by Snakemake

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from vidtune.atomic import write_jsonl  # noqa: E402
from vidtune.prediction_shards import shard_records  # noqa: E402

settings = snakemake.params.evaluation
records = []
for path in snakemake.input.records:
    with open(path, encoding="utf-8") as handle:
        records += [json.loads(line) for line in handle if line.strip()]
shard = int(snakemake.wildcards.shard)
mine = shard_records(records, settings["batch_size"], settings["shards"], shard)
log.info("shard %d of %d: %d of %d records", shard, settings["shards"], len(mine), len(records))
predictions = []
if mine:  # a shard past the last batch loads no model
    from vidtune.predict import predict_records

    # Record paths are relative to the results folder.
    predictions = predict_records(Path(snakemake.input.model), mine, Path(snakemake.config["results"]), settings)
write_jsonl(snakemake.output.predictions, predictions)
log.info("%d predictions", len(predictions))
