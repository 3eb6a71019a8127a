"""List one shard's media items for frame extraction (checkpoint frame_manifest)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "frame_manifest")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.atomic import write_json  # noqa: E402
from vidtune.frames import FrameSettings, build_manifests  # noqa: E402
from vidtune.samples import read_table  # noqa: E402

dataset = snakemake.params.dataset
shard = int(snakemake.wildcards.shard)
manifests = build_manifests(read_table(snakemake.input.samples), Path(dataset["root"]),
                            FrameSettings.from_config(dataset["frames"]), dataset["shards"],
                            only_shard=shard)
write_json(snakemake.output.manifest, manifests[shard])
log.info("shard %d: %d media items", shard, len(manifests[shard]["items"]))
