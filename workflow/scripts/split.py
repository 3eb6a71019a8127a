"""Add the split column to a dataset's sample table (rule split)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "split")  # noqa: F821 - injected by Snakemake

from collections import Counter  # noqa: E402

from vidtune.samples import read_table, write_split_table  # noqa: E402
from vidtune.split import assign_splits  # noqa: E402

samples = read_table(snakemake.input.samples)
splits = assign_splits(samples, snakemake.params.dataset["split"])
write_split_table(snakemake.output.table, zip(samples, splits))
log.info("split sizes: %s", dict(sorted(Counter(splits).items())))
