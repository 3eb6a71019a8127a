"""Build a randomly initialised model folder, tiny or of a named architecture, by its family (rule build_model)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "build_model")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.tiny_model import build_model  # noqa: E402

build_model(Path(snakemake.output.model), snakemake.params.model)
log.info("built %s", snakemake.output.model)
