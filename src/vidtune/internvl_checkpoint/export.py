"""Write a native InternVL model back in InternVL's original layout, beside the base folder it came from.

The result is what InternVL's guides make by hand after a merge: the base folder's config.json, its Python
files, tokenizer and generation config, with the merged weights under the original names, so InternVL's
own ``chat()``, its evaluation scripts and LMDeploy load it (``AutoModel.from_pretrained(folder,
trust_remote_code=True)``). Weights are streamed shard by shard; the folder appears whole or not at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vidtune.atomic import atomic_dir, write_json
from vidtune.errors import ModelError
from vidtune.internvl_checkpoint.convert import weight_map
from vidtune.internvl_checkpoint.layout import UnsupportedCheckpoint, read_original_checkpoint, weight_files

# Files of the base folder that describe the model rather than hold its weights.
_SKIPPED = {"model.safetensors.index.json", "pytorch_model.bin.index.json"}


def export_original_layout(native_dir: str | Path, base_dir: str | Path, out_dir: str | Path) -> dict:
    """Write ``native_dir``'s weights in the layout of the original-layout ``base_dir`` to ``out_dir``
    (one output shard per native shard); returns a summary."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    native_dir, base_dir, out_dir = Path(native_dir), Path(base_dir), Path(out_dir)
    try:
        base = read_original_checkpoint(base_dir)
    except UnsupportedCheckpoint as error:
        raise ModelError(str(error), file=base_dir, fix="export needs the original-layout base folder") from None
    mapping = weight_map(base)
    native_files = weight_files(native_dir)
    pending: dict = {}
    index: dict[str, str] = {}
    with atomic_dir(out_dir) as temp:
        for path in sorted(base_dir.iterdir()):
            if path.is_file() and not path.name.endswith((".safetensors", ".bin")) and path.name not in _SKIPPED:
                shutil.copy2(path, temp / path.name)
        for number, path in enumerate(native_files, 1):
            name = f"model-{number:05d}-of-{len(native_files):05d}.safetensors"
            tensors = {}
            with safe_open(path, "pt") as handle:
                for native in handle.keys():
                    try:
                        tensors.update(mapping.to_original(native, handle.get_tensor(native), pending))
                    except KeyError:
                        raise ModelError(f"tensor {native} has no place in the original layout", file=path,
                                         fix="merge onto the base model this folder was converted from") from None
            if tensors:
                save_file(tensors, temp / name, metadata={"format": "pt"})
                index.update(dict.fromkeys(tensors, name))
        if pending:
            raise ModelError(f"packed tensors with missing parts: {sorted(pending)[:3]}", file=native_dir,
                             fix="the native folder is incomplete; re-run the merge")
        total = sum((temp / shard).stat().st_size for shard in set(index.values()))
        write_json(temp / "model.safetensors.index.json",
                   {"metadata": {"total_size": total}, "weight_map": dict(sorted(index.items()))})
    return {"tensors": len(index), "shards": len(set(index.values())), "base": str(base_dir)}
