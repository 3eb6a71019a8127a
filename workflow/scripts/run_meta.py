"""Write a run's InternVL meta.json mixing its datasets' training files (rule run_meta)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "run_meta")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.atomic import read_jsonl  # noqa: E402
from vidtune.internvl_format import write_meta  # noqa: E402

datasets = snakemake.params.datasets
entries = []
for name, jsonl in zip(datasets, snakemake.input.train, strict=True):
    length = len(read_jsonl(jsonl))
    entries.append((name, Path(jsonl), length, datasets[name]))
# Record paths are relative to the results folder, whose name never changes a file's content.
write_meta(entries, Path(snakemake.output.meta), root=Path(snakemake.config["results"]))
log.info("meta.json: %s", {name: length for name, _, length, _ in entries})
