"""Fingerprints of what determines a long step's result, so saved state is reused only when it still fits,
and of a model folder's contents, so a step made from it reruns only when its bytes change.

Training checkpoints live outside the step's declared outputs (Snakemake removes those before a rerun);
they carry the fingerprint of the data and settings they were made with, and a changed fingerprint
discards them rather than resuming a different run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from vidtune.atomic import write_text

FINGERPRINT_FILE = "FINGERPRINT"


def fingerprint(files: list[str | Path], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        path = Path(path)
        targets = [path / "config.json"] if path.is_dir() else [path]
        for target in targets:
            digest.update(str(target.name).encode())
            with open(target, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


# Files of a model folder that never change what is made from it (docs, the folder's own Python code).
_NOT_CONTENT = (".py", ".md")


def folder_fingerprint(folder: str | Path, cache_file: str | Path) -> str:
    """A hash of the contents of ``folder``'s files (not its docs or Python code), cheap to recompute.

    Each file's hash is cached in ``cache_file`` under its name, size and modification time: a file whose
    three are unchanged is not read again, so an untouched 16 GB checkpoint costs a directory listing; a
    file that was touched but holds the same bytes gives the same fingerprint.
    """
    folder, cache_file = Path(folder), Path(cache_file)
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    entries, changed = {}, False
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(_NOT_CONTENT):
            continue
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        entry = cached.get(path.name)
        if not entry or entry[:2] != key:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
            entry, changed = [*key, digest.hexdigest()], True
        entries[path.name] = entry
    if changed or set(entries) != set(cached):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_text(cache_file, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return hashlib.sha256(json.dumps({name: entry[2] for name, entry in entries.items()},
                                     sort_keys=True).encode()).hexdigest()


def claim_state_folder(folder: str | Path, current: str) -> bool:
    """Make ``folder`` hold state for ``current``; returns True when existing state was kept for reuse."""
    folder = Path(folder)
    marker = folder / FINGERPRINT_FILE
    kept = marker.is_file() and marker.read_text().strip() == current
    if not kept and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not kept:
        write_text(marker, current + "\n")
    return kept
