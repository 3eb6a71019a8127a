"""Shared fixtures: running the real workflow in a scratch working directory.

The expensive setups (one demo run, one SLURM cluster) are session-scoped and shared by the tests that
read them; tests that change data work on their own copy of a finished run.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

os.environ.setdefault("OMP_NUM_THREADS", "1")


def load_default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def quick_config(config: dict | None = None) -> dict:
    """The demo (or another config of the demo data, such as config/sweep_example.yaml), cut to the least
    that still proves the DAG: 8 clips, a few training steps."""
    config = load_default_config() if config is None else config
    config["demo"] = {"num_videos": 8, "seconds": 1, "size": 64}
    config["datasets"]["demo"]["split"] = {"train": 0.75, "val": 0.0, "test": 0.25, "seed": 0}
    training = config["runs"]["demo"]["training"]
    training.update({"epochs": 1, "max_steps": 3, "save_steps": 2, "batch_size": 2})
    config["runs"]["demo"]["evaluation"].update({"max_new_tokens": 6})
    return config


class Workflow:
    """A scratch working directory with its own config, in which the repository's Snakefile runs."""

    def __init__(self, workdir: Path, config: dict):
        self.workdir = workdir
        (workdir / "config").mkdir(parents=True, exist_ok=True)
        self.write_config(config)

    def write_config(self, config: dict) -> None:
        self.config = config
        (self.workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def snakemake(self, *args: str, check: bool = True, timeout: float = 1800,
                  env: dict | None = None) -> subprocess.CompletedProcess:
        command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(self.workdir),
                   "--cores", "2", *args]
        result = subprocess.run(command, cwd=self.workdir, capture_output=True, text=True,
                                timeout=timeout, env={**os.environ, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
        return result

    def planned_jobs(self, *targets: str) -> dict[str, int]:
        """Rule name -> job count of what a dry run would do."""
        result = self.snakemake("-n", *targets)
        jobs = parse_job_stats(result.stdout + result.stderr)
        for target in targets:
            jobs.pop(target, None)
        return jobs

    def path(self, relative: str) -> Path:
        return self.workdir / relative

    def copy(self, destination: Path) -> "Workflow":
        shutil.copytree(self.workdir, destination, symlinks=True)
        return Workflow(destination, copy.deepcopy(self.config))


def parse_job_stats(output: str) -> dict[str, int]:
    """Read the 'job count' table Snakemake prints into {rule: count} (without the target rule)."""
    jobs: dict[str, int] = {}
    lines = output.splitlines()
    for start, line in enumerate(lines):
        if line.split() == ["job", "count"]:
            for row in lines[start + 2:]:
                parts = row.split()
                if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
                    break
                jobs[parts[0]] = int(parts[1])
            break
    return jobs


def with_defaults(config: dict) -> dict:
    """The config as the workflow sees it (schema defaults filled in)."""
    from snakemake.utils import validate

    filled = copy.deepcopy(config)
    validate(filled, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    return filled


def executed_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> number of jobs a finished snakemake invocation really ran, from its own log."""
    counts: dict[str, int] = {}
    for match in re.finditer(r"^Finished jobid: \d+ \(Rule: (\w+)\)", result.stderr + result.stdout,
                             re.MULTILINE):
        counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    counts.pop("train_all", None)
    return counts


# The tiny model the training-level tests share: smaller than the demo's (32 px, one vision layer).
TRAINING_TEST_MODEL = {"image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_layers": 1,
                       "text_hidden_size": 64, "text_layers": 2, "seed": 0}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A built TRAINING_TEST_MODEL folder, read-only for the tests that use it."""
    from vidtune.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(folder, TRAINING_TEST_MODEL)
    return folder


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Workflow:
    """One complete `train_all` of the reduced demo, shared by the tests that only read it."""
    workflow = Workflow(tmp_path_factory.mktemp("quick") / "work", quick_config())
    workflow.snakemake("train_all")
    return workflow


# `make test` runs the suite on two workers (pytest-xdist: `-n 2 --dist loadscope`, scheduled by the hook
# below). Each test module is one unit of work, so its module-scoped workflow run is set up once; the SLURM
# modules are one unit, so one worker holds the test clusters (the two-node cluster's subnet is fixed). Units
# start longest first (measured on a 2-core machine), so that no long one starts last while the other worker
# idles. (pytest-xdist's own `loadgroup` does not group under pytest 9, whose node ids it can no longer suffix.)
SLURM_MODULES = frozenset({"test_multinode.py", "test_slurm.py", "test_slurm_small.py"})
LONGEST_FIRST = ("slurm", "test_reach.py", "test_real_shape.py", "test_faults.py", "test_deepspeed.py",
                 "test_formats_end_to_end.py", "test_families_example.py", "test_incremental.py", "test_sweep.py",
                 "test_demo.py", "test_internvl_checkpoint.py", "test_prediction_shards.py")


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its module's file name, or "slurm" for the SLURM modules."""
    module = Path(nodeid.split("::", 1)[0]).name
    return "slurm" if module in SLURM_MODULES else module


def pytest_collection_modifyitems(config, items: list[pytest.Item]) -> None:
    strays = sorted({item.path.name for item in items if item.get_closest_marker("slurm")} - SLURM_MODULES)
    if strays:
        raise pytest.UsageError(f"{', '.join(strays)}: SLURM tests; add the module to SLURM_MODULES in "
                                "tests/conftest.py, so that one worker runs every SLURM test")
    rank = {unit: index for index, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it (-p no:xdist) unused
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)
