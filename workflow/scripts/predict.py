"""Predict the evaluation records of a run with the base or the finetuned model (rule predict)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "predict")  # noqa: F821 - injected by Snakemake

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from vidtune.atomic import write_jsonl  # noqa: E402
from vidtune.predict import predict_records  # noqa: E402

records = []
for path in snakemake.input.records:
    with open(path, encoding="utf-8") as handle:
        records += [json.loads(line) for line in handle if line.strip()]
# Record paths are relative to the results folder.
predictions = predict_records(Path(snakemake.input.model), records, Path(snakemake.config["results"]),
                              snakemake.params.evaluation,
                              trust_remote_code=snakemake.params.model["trust_remote_code"])
write_jsonl(snakemake.output.predictions, sorted(predictions, key=lambda p: p["id"]))
log.info("%d predictions", len(predictions))
