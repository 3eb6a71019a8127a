"""What every workflow script does first: threads, logging and error reporting.

Kept free of heavy imports so it runs before torch is imported: ``OMP_NUM_THREADS`` must be set first.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def start_script(snakemake, name: str) -> logging.Logger:
    """Set thread counts from the rule's ``threads`` and send log records to the rule's log file."""
    threads = str(max(1, int(snakemake.threads)))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub download, ever
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(log_path, mode="w", encoding="utf-8")]
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    handlers.append(console)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    log = logging.getLogger(f"vidtune.{name}")

    def log_failure(kind, error, traceback):  # the job's log says why it failed, not only Snakemake's output
        log.error("failed: %s", error if str(error) else kind.__name__)
        sys.__excepthook__(kind, error, traceback)

    sys.excepthook = log_failure
    return log
