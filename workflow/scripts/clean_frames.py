"""Remove the frame cache folders that no frame index refers to (rule clean_frames, run on request)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "clean_frames")  # noqa: F821 - injected by Snakemake

from vidtune.frames.clean import collect  # noqa: E402

collected = collect(snakemake.params.results, log=log)  # noqa: F821
log.info(collected.summary())
print(collected.summary())
