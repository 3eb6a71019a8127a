"""Predict one shard of a run's evaluation records with the base or the merged model (rules predict_*)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "predict")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.atomic import read_jsonl, write_jsonl  # noqa: E402
from vidtune.prediction_shards import shard_records  # noqa: E402

settings = snakemake.params.evaluation
datasets = snakemake.params.datasets  # each dataset's settings that reach prediction (its tiling), by name
# The record files come in the order of the sorted dataset names; each record is asked with its dataset's tiling.
records, dataset_of = [], {}
for name, path in zip(sorted(datasets), snakemake.input.records, strict=True):
    for record in read_jsonl(path):
        records.append(record)
        dataset_of[str(record.get("id"))] = name
shard = int(snakemake.wildcards.shard)
mine = shard_records(records, settings["batch_size"], settings["shards"], shard)
log.info("shard %d of %d: %d of %d records", shard, settings["shards"], len(mine), len(records))
predictions = []
if mine:  # a shard past the last batch loads no model
    from vidtune.predict import predict_records

    # Record paths are relative to the results folder.
    predictions = predict_records(Path(snakemake.input.model), mine, Path(snakemake.config["results"]), settings,
                                  datasets=[dataset_of[str(record.get("id"))] for record in mine],
                                  dataset_settings=datasets)
write_jsonl(snakemake.output.predictions, predictions)
log.info("%d predictions", len(predictions))
