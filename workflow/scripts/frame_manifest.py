"""List one shard's media items for frame extraction (checkpoint frame_manifest)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "frame_manifest")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.atomic import write_json  # noqa: E402
from vidtune.frames import FrameSettings, build_manifests  # noqa: E402
from vidtune.frames.manifest import shard_of  # noqa: E402
from vidtune.samples import read_table  # noqa: E402

dataset = snakemake.params.dataset
shard, num_shards = int(snakemake.wildcards.shard), dataset["shards"]
# Only this shard's samples: content signatures are read for its own media files alone.
samples = [s for s in read_table(snakemake.input.samples) if shard_of(s.group_key, num_shards) == shard]
manifest = build_manifests(samples, Path(dataset["root"]), FrameSettings.from_config(dataset["frames"]),
                           num_shards)[shard]
write_json(snakemake.output.manifest, manifest)
log.info("shard %d: %d media items", shard, len(manifest["items"]))
