"""Raw annotations of one dataset -> canonical sample table, rejects and a summary (rule ingest)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "ingest")  # noqa: F821 - injected by Snakemake

from vidtune.atomic import write_json, write_jsonl  # noqa: E402
from vidtune.errors import DataError  # noqa: E402
from vidtune.ingest import ingest_dataset  # noqa: E402
from vidtune.samples import write_table  # noqa: E402

try:
    result = ingest_dataset(snakemake.wildcards.dataset, snakemake.params.dataset)
except DataError as error:
    # Snakemake removes a failed job's outputs; the log keeps every reject for the user to fix.
    for reject in getattr(error, "rejects", []):
        log.error("rejected %s (record %s): %s", reject.file, reject.record, reject.reason)
    raise
for reject in result.rejects:
    log.warning("rejected %s (record %s): %s", reject.file, reject.record, reject.reason)
write_jsonl(snakemake.output.rejects, [reject.as_dict() for reject in result.rejects])
write_json(snakemake.output.summary, result.summary)
write_table(snakemake.output.samples, result.samples)
log.info("%d samples, %d rejects", len(result.samples), len(result.rejects))
