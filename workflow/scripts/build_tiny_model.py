"""Build a tiny, randomly initialised InternVL model folder (rule build_tiny_model)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "build_tiny_model")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.tiny_model import build_tiny_model  # noqa: E402

build_tiny_model(Path(snakemake.output.model), snakemake.params.model["tiny"])
log.info("built %s", snakemake.output.model)
