"""Score base and finetuned predictions of a run against all references (rule score)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "score")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.atomic import read_jsonl, write_json, write_jsonl  # noqa: E402
from vidtune.samples import read_split_table  # noqa: E402
from vidtune.scoring import score_run  # noqa: E402


def predictions(path):
    return {record["id"]: record["prediction"] for record in read_jsonl(path)}


base, finetuned = predictions(snakemake.input.base), predictions(snakemake.input.finetuned)
references = {}
for table in snakemake.input.tables:
    for sample, _ in read_split_table(Path(table)):
        if sample.sample_id in base:
            references[sample.sample_id] = list(sample.references)
metrics, per_sample = score_run(references, base, finetuned, snakemake.params.bootstrap)
write_jsonl(snakemake.output.per_sample, per_sample)
write_json(snakemake.output.metrics, metrics)
log.info("metrics: %s", metrics)
