"""Check one dataset's training records against a run's model; write the accepted ones and the rejects
(checkpoint check_training_data)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "check_training_data")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.check_training_data import check_dataset  # noqa: E402
from vidtune.internvl_format import read_meta  # noqa: E402
from vidtune.families import family_for_folder  # noqa: E402

training = snakemake.params.training
# The dataset as the run's meta.json gives it to a trainer: its records, their root, its tiling.
dataset = next(entry for entry in read_meta(snakemake.input.meta) if entry.name == snakemake.wildcards.dataset)
family = family_for_folder(snakemake.input.model)
check_dataset(dataset.annotation, dataset.root, family.load_processor(snakemake.input.model),
              Path(snakemake.output.records).parent, family=family, dataset=dataset.name, max_dynamic_patch=dataset.max_dynamic_patch,
              max_seq_length=training["max_seq_length"], over_length=training["over_length"])
