"""Extract the frames of one shard's media items missing from the frame cache (rule extract_frames)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "extract_frames")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.atomic import read_json, write_json  # noqa: E402
from vidtune.frames import extract_shard  # noqa: E402

manifest = read_json(snakemake.input.manifest)
index = extract_shard(manifest, cache_root=Path(snakemake.params.cache), workers=snakemake.threads,
                      timeout_s=snakemake.resources.decode_timeout_s, log=log)
# The summary (extracted vs reused) differs between a fresh and a cached run; the index must not.
log.info("summary: %s", index.pop("summary"))
write_json(snakemake.output.index, index)
