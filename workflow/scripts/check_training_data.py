"""Check a run's training records against its model; write the accepted ones and the rejects (rule
check_training_data)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "check_training_data")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.check_training_data import check_training_data  # noqa: E402
from vidtune.modeling import load_processor  # noqa: E402

training = snakemake.params.training
summary = check_training_data(Path(snakemake.input.meta), load_processor(snakemake.input.model),
                              Path(snakemake.output.meta).parent, max_seq_length=training["max_seq_length"],
                              over_length=training["over_length"])
log.info("summary: %s", {key: summary[key] for key in ("records", "accepted", "rejected", "truncated")})
