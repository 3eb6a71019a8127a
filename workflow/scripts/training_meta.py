"""Write the meta.json of a run's checked training records (rule training_meta)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "training_meta")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.check_training_data import write_training_meta  # noqa: E402

datasets = snakemake.params.datasets
meta = write_training_meta(Path(snakemake.input.meta), dict(zip(datasets, snakemake.input.records, strict=True)),
                           Path(snakemake.output.meta))
log.info("meta.json: %s", {name: entry["length"] for name, entry in meta.items()})
