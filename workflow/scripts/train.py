"""Finetune a run's base model; resumes from the last complete checkpoint of the same data and settings.

With `gpus` above 1 the training runs as one process per GPU under torchrun (vidtune.train.train_job)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "train")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.fingerprint import claim_state_folder, fingerprint  # noqa: E402
from vidtune.train import train_job  # noqa: E402

out_dir = Path(snakemake.params.out_dir)
training = snakemake.params.training
current = fingerprint([snakemake.input.meta, *snakemake.input.train, snakemake.input.model], training)
if claim_state_folder(out_dir / "checkpoints", current):  # once, before any training process starts
    log.info("checkpoints of the same data and settings kept for resuming")
summary = train_job(Path(snakemake.input.meta), Path(snakemake.input.model), out_dir, training,
                    trust_remote_code=snakemake.params.trust_remote_code, log=log)
log.info("summary: %s", summary)
