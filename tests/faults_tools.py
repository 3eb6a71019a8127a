"""Tools of the fault-injection suite (tests/test_faults.py): start a workflow run that can be killed from
outside, find a job's process by the log file it holds open, compare two runs' outputs.

A job is found by its log: every workflow script opens its rule's log file first thing
(:func:`vidtune.runtime.start_script`), so the process that holds ``results/logs/<rule>/...`` open is that
job's process, whatever Snakemake named its script.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from conftest import REPO, SNAKEMAKE, Workflow

# Files every run writes differently by design, left out of byte comparisons: logs (timestamps) and
# TensorBoard event files (named and stamped with the time), training state kept for resuming only.
NOT_COMPARED = ("results/logs/", "/train/runs/", "/train/checkpoints/")


def processes_holding(path: Path) -> list[int]:
    """Ids of the processes that hold ``path`` open (from /proc)."""
    target = str(path.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


class Run:
    """One ``snakemake`` invocation in its own session, so the whole run can be killed like a lost node."""

    def __init__(self, workflow: Workflow, *args: str, env: dict | None = None):
        self.workflow = workflow
        command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workflow.workdir),
                   "--cores", "2", *args]
        self.started = time.time()
        self.process = subprocess.Popen(command, cwd=workflow.workdir, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                        env={**os.environ, **(env or {})})
        self.killed: str | None = None  # what the watcher killed, if anything
        self.seen: dict = {}  # what the watcher saw when it killed

    def kill_when(self, ready: Callable[[], dict | None], target: Callable[[], list[int]] | str,
                  poll_s: float = 0.002) -> None:
        """Watch in a thread: once ``ready()`` returns a dict (what it saw), SIGKILL ``target``: the
        processes it returns, or ``"run"`` for snakemake and every job it started (its session)."""

        def watch():
            while self.process.poll() is None:
                seen = ready()
                if seen is not None:
                    if target == "run":
                        os.killpg(self.process.pid, signal.SIGKILL)
                        self.killed = "run"
                    else:
                        pids = target()
                        if not pids:
                            time.sleep(poll_s)
                            continue
                        for pid in pids:
                            os.kill(pid, signal.SIGKILL)
                        self.killed = f"job {pids}"
                    self.seen = seen
                    return
                time.sleep(poll_s)

        self.watcher = threading.Thread(target=watch, daemon=True)
        self.watcher.start()

    def wait(self, timeout: float = 900) -> "Run":
        self.output, _ = self.process.communicate(timeout=timeout)
        self.returncode = self.process.returncode
        if hasattr(self, "watcher"):
            self.watcher.join(5)
        return self

    def finished(self, rule: str) -> int:
        """How many jobs of ``rule`` this invocation finished."""
        return self.output.count(f"(Rule: {rule})")


def output_digests(workdir: Path) -> dict[str, str]:
    """sha256 of every file under results/ (relative path -> digest), less the by-design differences."""
    digests = {}
    for path in sorted((workdir / "results").rglob("*")):
        relative = path.relative_to(workdir).as_posix()
        if path.is_file() and not any(part in "/" + relative for part in NOT_COMPARED):
            digests[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def leftover_temporaries(workdir: Path) -> list[str]:
    """Hidden ``.tmp-`` siblings (files or folders) anywhere under results/."""
    return sorted(p.relative_to(workdir).as_posix() for p in (workdir / "results").rglob(".*.tmp-*"))
