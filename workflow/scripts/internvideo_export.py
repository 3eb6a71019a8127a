"""Write a dataset's InternVideo2.5 (xtuner) training files (rule internvideo_export)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "internvideo_export")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.internvl_files import write_internvideo_export  # noqa: E402

summary = write_internvideo_export(Path(snakemake.input.table), [Path(p) for p in snakemake.input.indexes],
                                   Path(snakemake.output.meta).parent, snakemake.wildcards.dataset,
                                   snakemake.params.dataset)
log.info("summary: %s", summary)
