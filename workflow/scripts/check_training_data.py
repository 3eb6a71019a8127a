"""Check one dataset's training records against a run's model; write the accepted ones and the rejects
(checkpoint check_training_data)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "check_training_data")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.check_training_data import check_dataset  # noqa: E402
from vidtune.modeling import load_processor  # noqa: E402

training, dataset = snakemake.params.training, snakemake.params.dataset
# Record paths are relative to the results folder, as the InternVL files write them.
check_dataset(Path(snakemake.input.train), Path(snakemake.config["results"]), load_processor(snakemake.input.model),
              Path(snakemake.output.records).parent, dataset=snakemake.wildcards.dataset,
              max_dynamic_patch=dataset["max_dynamic_patch"], max_seq_length=training["max_seq_length"],
              over_length=training["over_length"])
