"""Render the synthetic demo clips and their annotations (rule make_demo_dataset)."""

from pathlib import Path

from vidtune.runtime import start_script

log = start_script(snakemake, "make_demo_dataset")  # noqa: F821 - injected by Snakemake

from vidtune.demo import make_demo_dataset  # noqa: E402

annotations = Path(snakemake.output.annotations)
demo = snakemake.params.demo
count = make_demo_dataset(annotations.parent, annotations, num_videos=demo["num_videos"],
                          seconds=demo["seconds"], size=demo["size"], fps=demo["fps"], seed=demo["seed"])
log.info("rendered %d demo clips under %s", count, annotations.parent)
