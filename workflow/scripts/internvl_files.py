"""Write a dataset's InternVL JSONL files per split, its rejects and data summary (checkpoint internvl_files)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "internvl_files")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.internvl_files import write_internvl_dataset  # noqa: E402

summary = write_internvl_dataset(Path(snakemake.input.table), [Path(p) for p in snakemake.input.indexes],
                                 Path(snakemake.output.summary).parent, snakemake.wildcards.dataset,
                                 snakemake.params.dataset, base=Path(snakemake.config["results"]),
                                 ingest_rejects=Path(snakemake.input.ingest_rejects))
log.info("summary: %s", summary)
