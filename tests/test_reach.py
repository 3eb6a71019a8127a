"""Rerun exactly what a change reaches (issue 12).

The config schema declares, for every leaf key, the rules whose output it can change (`x-reaches`, read by
vidtune.reach). These tests hold the workflow to that map on one finished reduced demo:
- every leaf key, changed to another valid value, makes exactly its declared rules stale in a dry run
  (Snakemake's own reasons: params or the set of input files changed), and reordering every key of the
  config makes nothing stale;
- for one key of each kind (data, frames, training, evaluation, report-only, resource-only) the workflow
  really runs, and what ran is the key's reach and what lies downstream of it;
- a training job killed after a checkpoint, rerun with a larger time limit, resumes from that checkpoint;
- a user's own `--configfile` builds the user's datasets and runs only; a moved project is not stale.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Workflow, executed_jobs, quick_config, with_defaults
from faults_tools import Run, processes_holding

from vidtune.reach import ANY, TABLE_END, TABLE_START, leaves, reach_table, undeclared_leaves

pytestmark = pytest.mark.integration

TARGETS = ("train_all", "export")
# The reasons that say a job itself is stale, rather than that something before it will run.
OWN_REASONS = ("params have changed since last execution", "set of input files has changed since last execution")
# Base predictions are stored under a name made of their settings (shared by the runs that have the same): for
# these rules a changed setting is a new file to make.
KEYED_RULES = {"predict_base", "join_predictions"}
NEW_OUTPUT = "output files have to be generated"
DATASET, RUN, MODEL = "demo", "demo", "tiny"


def reach_config() -> dict:
    """The reduced demo with a val split, so that evaluation.split has another valid value."""
    config = quick_config()
    config["datasets"]["demo"]["split"] = {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 0}
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Workflow:
    workflow = Workflow(tmp_path_factory.mktemp("reach") / "work", reach_config())
    workflow.snakemake(*TARGETS)
    shutil.copytree(workflow.path(f"results/models/{MODEL}"), workflow.path(f"results/models/{MODEL}-by-path"))
    return workflow


def reasons(output: str) -> dict[str, set[str]]:
    """The "Reasons:" summary of a dry run: reason -> rules."""
    found: dict[str, set[str]] = {}
    block = output.split("\nReasons:\n", 1)
    if len(block) < 2:
        return found
    reason = None
    for line in block[1].splitlines():
        if line.startswith("        ") and reason:
            found.setdefault(reason, set()).update(r.strip() for r in line.split(","))
        elif line.startswith("    ") and line.rstrip().endswith(":"):
            reason = line.strip()[:-1]
        elif line.strip() and not line.startswith("    "):
            break
    return found


def dry_run(workflow: Workflow) -> tuple[set[str], set[str]]:
    """The rules a dry run finds stale in their own right (params or input set changed), and all it plans."""
    result = workflow.snakemake("-n", *TARGETS)
    found = reasons(result.stdout + result.stderr)
    stale = set().union(*(found.get(reason, set()) for reason in OWN_REASONS)) | \
        (found.get(NEW_OUTPUT, set()) & KEYED_RULES)
    return stale, set().union(*found.values()) - set(TARGETS)


def set_key(config: dict, path: tuple[str, ...], value) -> None:
    entry = config
    for part in path[:-1]:
        entry = entry.setdefault(part, {})
    entry[path[-1]] = value


def concrete(path: tuple[str, ...]) -> tuple[str, ...]:
    """The leaf's path in the demo config: <name> is the demo's dataset, model or run."""
    names = {"datasets": DATASET, "models": MODEL, "runs": RUN}
    return tuple(names[path[i - 1]] if part == ANY else part for i, part in enumerate(path))


def another_value(leaf, current):
    spec = leaf.schema
    if "enum" in spec:
        return next(value for value in spec["enum"] if value != current)
    if "anyOf" in spec:  # repeat_time: a share up to 1 or a whole number
        return 2 if current == 1 else 1
    if spec.get("type") in ("boolean", ["boolean", "null"]):  # lora.train_projector: null follows freeze_projector
        return not current
    if spec.get("type") == "integer":
        return current + 1 if current + 1 <= spec.get("maximum", current + 1) else current - 1
    if spec.get("type") == "number":
        return current / 2 if current else 0.5
    if leaf.path[-1] == "trainer_args":  # a TrainingArguments key that changes the weights
        return {**current, "max_grad_norm": 0.5}
    if spec.get("type") == "object":
        return {**current, "id_field": "uid"}  # a field the demo lacks, like "id": other options, same samples
    if leaf.path[-1] in ("root", "annotations"):  # the same place, written differently
        return str(Path(current).parent) + "/./" + Path(current).name
    return current + " Be brief."


def changed_config(base: dict, leaf) -> dict:
    """The finished run's config with this leaf set to another valid value (and what that value needs)."""
    config = with_defaults(base)
    path = concrete(leaf.path)
    if leaf.path == ("runs", ANY, "datasets"):  # a second dataset in the mix
        config["datasets"]["other"] = copy.deepcopy(config["datasets"][DATASET])
        set_key(config, path, [DATASET, "other"])
    elif leaf.path == ("runs", ANY, "model"):  # another base model, built alike
        config["models"]["other"] = copy.deepcopy(config["models"][MODEL])
        set_key(config, path, "other")
    elif leaf.path == ("runs", ANY, "sweep"):  # the run becomes two swept runs
        set_key(config, path, {"training.lora.dropout": [0.0, 0.1]})
    elif leaf.path == ("models", ANY, "path"):  # a copy of the built model, given by path instead
        config["models"][MODEL] = {"path": f"results/models/{MODEL}-by-path"}
    else:
        current = config
        for part in path:
            current = current[part]
        set_key(config, path, another_value(leaf, current))
    training = config["runs"][RUN]["training"]
    if leaf.name.startswith("runs.<name>.training.") and training["method"] != "full" and (
            training["lora"]["vision"] or not training["freeze_vision"] or training["freeze_language"]):
        # What LoRA on the vision tower needs (the parse refuses it half-set): both settings, as a user sets them.
        training["lora"]["vision"], training["freeze_vision"] = True, False
    return config


EVERY_KEY = [leaf for leaf in leaves() if leaf.reaches != ("all",) and ".tiny." not in leaf.name + "."
             and ".architecture." not in leaf.name]
# The built model's size keys: changing one means another model; one is enough to show the rule.
EVERY_KEY += [leaf for leaf in leaves() if leaf.name == "models.<name>.tiny.seed"]


def test_every_schema_key_declares_its_reach():
    assert undeclared_leaves() == []
    assert {leaf.name for leaf in leaves()} >= {"runs.<name>.training.runtime_min",
                                                "datasets.<name>.frames.timeout_s"}


def test_readme_reach_table_is_the_declared_map():
    readme = (REPO / "README.md").read_text()
    assert TABLE_START in readme and TABLE_END in readme, "README lacks the generated reach table"
    assert readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0] == reach_table(), \
        "README's table is out of date: regenerate it with `python -m vidtune.reach README.md`"


def test_reordered_config_makes_nothing_stale(finished, tmp_path):
    def reversed_keys(value):
        if isinstance(value, dict):
            return {key: reversed_keys(value[key]) for key in reversed(list(value))}
        return value

    config = with_defaults(finished.config)
    config["runs"][RUN]["training"]["learning_rate"] = float(config["runs"][RUN]["training"]["learning_rate"])
    config["runs"][RUN]["training"]["max_steps"] = int(config["runs"][RUN]["training"]["max_steps"])
    config["datasets"][DATASET]["max_reject_share"] = 0.05  # written as a float either way
    config["runs"][RUN]["training"]["epochs"] = 1  # 1 vs the schema's 1.0: one value
    finished.write_config(reversed_keys(config))
    try:
        assert dry_run(finished) == (set(), set())
        assert "Nothing to be done" in finished.snakemake("-n", *TARGETS).stdout
    finally:
        finished.write_config(reach_config())


def test_logging_trainer_args_make_nothing_stale(finished):
    """trainer_args keys that only log or report reach no step (issue 24)."""
    config = with_defaults(finished.config)
    config["runs"][RUN]["training"]["trainer_args"] = {"run_name": "another", "log_level": "info",
                                                       "disable_tqdm": False}
    finished.write_config(config)
    try:
        assert dry_run(finished) == (set(), set())
    finally:
        finished.write_config(reach_config())


@pytest.fixture(scope="module")
def after(finished) -> dict[str, set[str]]:
    return downstream(finished)


@pytest.mark.parametrize("leaf", EVERY_KEY, ids=lambda leaf: leaf.name)
def test_each_key_makes_exactly_its_reach_stale(finished, after, leaf):
    base = finished.config
    finished.write_config(changed_config(base, leaf))
    try:
        stale, planned = dry_run(finished)
    finally:
        finished.write_config(base)
    declared = set(leaf.reaches)
    if leaf.path == ("models", ANY, "path"):
        # The copy is a native folder, used where it is: convert_model has a job only for a folder in InternVL's
        # original layout (its reruns: tests/test_internvl_checkpoint.py).
        declared.discard("convert_model")
    assert stale <= declared, f"{leaf.name} also makes {sorted(stale - declared)} stale"
    # Snakemake reports a job's own staleness only when nothing before it reruns (a job after a rerunning
    # one, or after a rerunning checkpoint, is simply planned): a declared rule it does not report must be
    # after one that runs. The real runs below show that those run.
    # (A key that adds jobs, a sweep say, plans its new ones for their missing outputs.)
    unexplained = {rule for rule in declared - stale - planned if not any(rule in after[p] for p in planned)}
    assert (stale or not declared) and not unexplained, \
        f"{leaf.name} should make {sorted(unexplained or declared)} stale"


def downstream(workflow: Workflow) -> dict[str, set[str]]:
    """Rule -> every rule after it, from Snakemake's rule graph."""
    dot = workflow.snakemake("--rulegraph", "dot", *TARGETS).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.MULTILINE))
    edges = [(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.MULTILINE)]
    after: dict[str, set[str]] = {name: set() for name in names.values()}
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            new = {b} | after[b]
            if not new <= after[a]:
                after[a] |= new
                changed = True
    return after


# One key of each kind, changed for real: what runs is the reach and what lies after it, nothing else.
REAL_CASES = {
    "data": (("datasets", DATASET, "prompt"), "Say what happens."),
    "frames": (("datasets", DATASET, "frames", "num_frames"), 3),
    "training": (("runs", RUN, "training", "lora", "dropout"), 0.1),
    "evaluation": (("runs", RUN, "evaluation", "max_new_tokens"), 4),
    "report-only": (("runs", RUN, "evaluation", "gallery_size"), 2),
    "resource-only": (("runs", RUN, "training", "runtime_min"), 30),
    "decode time-out": (("datasets", DATASET, "frames", "timeout_s"), 60.0),
}


@pytest.mark.parametrize("kind", list(REAL_CASES))
def test_real_run_reruns_the_reach_and_what_follows(finished, tmp_path, kind):
    path, value = REAL_CASES[kind]
    work = finished.copy(tmp_path / "work")
    after = downstream(work)
    leaf = next(leaf for leaf in leaves() if concrete(leaf.path) == path)
    config = copy.deepcopy(work.config)
    set_key(config, path, value)
    work.write_config(config)
    ran = set(executed_jobs(work.snakemake(*TARGETS)))
    ran.discard("export")
    reach = set(leaf.reaches)
    allowed = reach.union(*(after[rule] for rule in reach)) - set(TARGETS)
    assert reach <= ran, f"{kind}: {sorted(reach - ran)} did not run"
    assert ran <= allowed, f"{kind}: {sorted(ran - allowed)} ran but is not reached by {leaf.name}"
    assert "Nothing to be done" in work.snakemake("-n", *TARGETS).stdout


def test_issue_table(finished, tmp_path):
    """The issue's before/after table: key order, a SLURM time limit, the gallery size, the decode time-out."""
    work = finished.copy(tmp_path / "work")
    config = with_defaults(work.config)
    config = {key: config[key] for key in reversed(list(config))}
    config["runs"][RUN]["training"]["runtime_min"] = 1440
    config["datasets"][DATASET]["frames"]["timeout_s"] = 600
    config["runs"][RUN]["evaluation"]["gallery_size"] = 4
    work.write_config(config)
    assert set(executed_jobs(work.snakemake(*TARGETS))) == {"report_run"}


def test_larger_time_limit_resumes_training_from_its_checkpoint(finished, tmp_path):
    """The training job killed after a checkpoint (as SLURM does at its time limit), rerun with a larger
    runtime_min, resumes from that checkpoint instead of starting over."""
    work = finished.copy(tmp_path / "work")
    config = copy.deepcopy(work.config)
    training = config["runs"][RUN]["training"]
    training.update({"max_steps": 40, "save_steps": 4, "runtime_min": 5})
    work.write_config(config)
    first = work.path(f"results/runs/{RUN}/train/checkpoints/checkpoint-4")  # this training's first
    run = Run(work, "train_all")
    run.kill_when(lambda: {} if (first / "vidtune_checkpoint_complete").is_file() else None,
                  lambda: processes_holding(work.path(f"results/logs/train/{RUN}.log")))
    assert run.wait().returncode != 0 and run.killed, "training finished before it could be killed"
    saved = {p.name for p in first.parent.glob("checkpoint-*") if (p / "vidtune_checkpoint_complete").is_file()}
    training["runtime_min"] = 60
    work.write_config(config)
    assert set(executed_jobs(work.snakemake("train_all"))) >= {"train"}
    summary = json.loads(work.path(f"results/runs/{RUN}/train/train_summary.json").read_text())
    assert summary["resumed_from"] is not None, "training started over"
    assert summary["resumed_from"]["checkpoint"] in saved
    assert summary["steps"] == 40 and summary["steps_this_run"] < 40


def test_own_configfile_builds_only_its_own_datasets_and_runs(finished, tmp_path):
    config = with_defaults(finished.config)
    config["datasets"] = {"clips": config["datasets"][DATASET]}
    config["runs"] = {"mine": {**config["runs"][RUN], "datasets": ["clips"]}}
    mine = tmp_path / "my.yaml"
    mine.write_text(yaml.safe_dump(config))
    result = finished.snakemake("train_all", "-n", "--configfile", str(mine))
    planned = result.stdout
    assert "results/runs/mine/" in planned and "results/datasets/clips/" in planned
    assert "results/runs/demo/" not in planned and "results/datasets/demo/" not in planned


def test_moved_project_is_not_stale(finished, tmp_path):
    moved = finished.copy(tmp_path / "elsewhere" / "renamed")
    assert "Nothing to be done" in moved.snakemake("-n", *TARGETS).stdout
