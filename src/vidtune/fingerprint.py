"""Fingerprints of what determines a long step's result, so saved state is reused only when it still fits.

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
