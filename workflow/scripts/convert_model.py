"""Convert an InternVL checkpoint in the original layout to transformers' native InternVL (rule convert_model)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "convert_model")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.internvl_checkpoint.convert import convert_checkpoint  # noqa: E402

record = convert_checkpoint(Path(snakemake.input.source), Path(snakemake.output.model),
                            source_as_given=snakemake.params.model["path"])
log.info("converted: %s", record)
