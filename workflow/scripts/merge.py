"""Merge the trained adapter into the base model and verify the result (rule merge)."""

from vidtune.runtime import start_script

log = start_script(snakemake, "merge")  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from vidtune.atomic import read_jsonl  # noqa: E402
from vidtune.internvl_checkpoint.layout import is_original_layout  # noqa: E402
from vidtune.merge import merge  # noqa: E402

check_records = [record for path in snakemake.input.check for record in read_jsonl(path)[:2]]
result = merge(Path(snakemake.input.base), Path(snakemake.input.trained), Path(snakemake.output.model),
               check_records, root=Path(snakemake.config["results"]),
               # A base given in InternVL's original layout gets its merged model back in that layout too.
               original_base=Path(base) if (base := snakemake.params.model.get("path")) and is_original_layout(base)
               else None)
log.info("merge check: %s", result)
