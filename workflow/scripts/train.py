"""Finetune a run's base model; resumes from the last complete checkpoint of the same data and settings.

With `gpus` above 1 the training runs as one process per GPU under torchrun (vidtune.train.train_job)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "train")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.fingerprint import claim_state_folder, fingerprint  # noqa: E402
from vidtune.reach import weight_settings  # noqa: E402
from vidtune.train import train_job  # noqa: E402
from vidtune.training.settings import TrainingSettings  # noqa: E402

out_dir = Path(snakemake.params.out_dir)
# Checkpoints are kept when the data and the settings that change the weights are the same: a larger
# time limit (resources) or another logging interval resumes from the last one.
current = fingerprint([snakemake.input.meta, *snakemake.input.records,
                       snakemake.input.model],
                      {"training": weight_settings(snakemake.params.training)})
if claim_state_folder(out_dir / "checkpoints", current):  # once, before any training process starts
    log.info("checkpoints of the same data and settings kept for resuming")
# params hold the trainer_args keys that change the weights; the logging and reporting ones reach no output, so
# they come from the config (changing them reruns nothing).
trainer_args = snakemake.config["runs"][snakemake.wildcards.run]["training"]["trainer_args"]
settings = TrainingSettings.from_config({**snakemake.params.training, "trainer_args": trainer_args,
                                        "save_steps": snakemake.resources.save_steps,
                                        "save_total_limit": snakemake.resources.save_total_limit,
                                        "data_workers": snakemake.resources.data_workers})
summary = train_job(Path(snakemake.input.meta), Path(snakemake.input.model), out_dir, settings, log=log)
log.info("summary: %s", summary)
