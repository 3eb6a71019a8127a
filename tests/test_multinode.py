"""Training across two SLURM nodes (tests/slurm_cluster.py, `slurm_nodes`): `training.nodes: 2` through
`--profile profiles/slurm`, as a user would run it.

The data and base model are prepared once, locally (they are the same with or without SLURM;
tests/test_slurm.py covers those steps on the cluster), and copied for each training; only `train` goes
through sbatch. Each node has one fake GPU's worth of
training process (`gpus: 1`: CPU, gloo), so the world size is 2, and the reference is the same training on
one node with `gpus: 2`. DeepSpeed ZeRO-2 in both.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SNAKEMAKE, REPO, Workflow, quick_config, with_defaults
from slurm_cluster import PROFILE, SlurmCluster, slurm_nodes  # noqa: F401 - the fixture
from test_slurm import FAST_STATUS, jobs_of, submit
from vidtune.training.checkpoints import COMPLETE_MARKER

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

SUMMARY = "results/runs/demo/train/train_summary.json"
CHECKPOINTS = "results/runs/demo/train/checkpoints"
TRAIN_LOG = "results/logs/train/demo.log"
TWO_NODES = {"nodes": 2, "gpus": 1, "deepspeed": "zero2", "batch_size": 2, "gradient_accumulation_steps": 1}


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory) -> Workflow:
    """The reduced demo up to the train step's inputs (meta.json, the base model), run once, locally."""
    workflow = Workflow(tmp_path_factory.mktemp("inputs") / "work", quick_config())
    workflow.snakemake("results/runs/demo/meta.json", f"results/models/{workflow.config['runs']['demo']['model']}")
    return workflow


def with_training(inputs: Workflow, folder: Path, **training) -> Workflow:
    """A copy of the prepared demo whose run trains with these settings (nothing before `train` changes)."""
    workflow = inputs.copy(folder)
    config = copy.deepcopy(workflow.config)
    config["runs"]["demo"]["training"].update(training)
    workflow.write_config(config)
    return workflow


def submit_command(workflow: Workflow, *args: str) -> list[str]:
    """`snakemake --profile profiles/slurm` of the train step, for a run that the test interrupts."""
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workflow.workdir), "--profile",
            str(PROFILE), *FAST_STATUS, *args, SUMMARY]


def train_steps(cluster: SlurmCluster, workdir: Path) -> tuple[dict, list[dict]]:
    """The train job's allocation and its job steps, as slurmdbd recorded them."""
    [job] = [job for job in jobs_of(cluster, workdir) if job["rule"] == "train"]
    output = cluster.command("sacct", "-j", job["JobID"], "--parsable2",
                             "--format=JobID,JobName,NodeList,NNodes,NTasks,State,ExitCode")
    steps = list(csv.DictReader(output.splitlines(), delimiter="|"))
    return job, steps


@pytest.fixture(scope="module")
def two_nodes(slurm_nodes, demo_inputs, tmp_path_factory):  # noqa: F811 - the fixture imported above
    workflow = with_training(demo_inputs, tmp_path_factory.mktemp("two-nodes") / "work", **TWO_NODES)
    started = time.monotonic()
    submit(workflow, slurm_nodes, SUMMARY)
    return workflow, time.monotonic() - started


@pytest.fixture(scope="module")
def one_node(demo_inputs, tmp_path_factory):
    """The same training on one node with the same world size: two processes under torchrun, locally."""
    workflow = with_training(demo_inputs, tmp_path_factory.mktemp("one-node") / "work",
                             **{**TWO_NODES, "nodes": 1, "gpus": 2})
    workflow.snakemake(SUMMARY)
    return workflow


def test_both_nodes_trained(two_nodes, slurm_nodes):  # noqa: F811
    workflow, seconds = two_nodes
    job, steps = train_steps(slurm_nodes, workflow.workdir)
    assert job["State"] == "COMPLETED", job
    # One job step of two tasks, one per node: the two torchruns.
    [launch] = [step for step in steps if re.fullmatch(r"\d+\.\d+", step["JobID"])]
    assert launch["NNodes"] == "2" and launch["NTasks"] == "2" and launch["State"] == "COMPLETED", steps
    nodes = {node.name for node in slurm_nodes.nodes}
    assert launch["NodeList"] == "vt-node[1-2]" and nodes == {"vt-node1", "vt-node2"}
    # The per-node request: gres of one GPU on each of the two nodes.
    assert "gres/gpu=2" in job["ReqTRES"].split(","), job
    log = workflow.path(TRAIN_LOG).read_text()
    assert "launching 2 training processes (1 per node on 2 nodes)" in log
    assert "--nnodes=2" in log and "--rdzv_endpoint=vt-node1:" in log
    # srun --label: each task (one per node) says which training process it runs; rank 0 reports progress.
    ranks = set()
    for task in (0, 1):
        found = re.findall(rf"\| {task}: training process (\d) of 2 on vt-node{task + 1}\b", log)
        assert len(found) == 1, log[-3000:]
        ranks |= set(found)
    assert ranks == {"0", "1"}
    assert re.search(r"\| \d: training: step \d+/\d+ \(100%\), loss ", log), log[-3000:]
    print(f"two-node train job: {seconds:.0f} s")


def test_global_batch_is_nodes_x_gpus_x_batch(two_nodes):
    workflow, _ = two_nodes
    summary = json.loads(workflow.path(SUMMARY).read_text())
    training = workflow.config["runs"]["demo"]["training"]
    world = training["nodes"] * training["gpus"]
    global_batch = training["batch_size"] * training["gradient_accumulation_steps"] * world
    assert summary["steps"] == training["max_steps"] and summary["deepspeed"] == "zero2"
    assert summary["samples_per_s"] * summary["train_seconds"] == pytest.approx(
        summary["steps"] * global_batch, rel=0.01)


def test_two_nodes_equal_one_node_of_the_same_world_size(two_nodes, one_node):
    workflow, _ = two_nodes
    losses = [json.loads(run.path("results/runs/demo/train/loss.json").read_text()) for run in (workflow, one_node)]
    assert [entry["step"] for entry in losses[0]] == [entry["step"] for entry in losses[1]]
    assert [entry["loss"] for entry in losses[0]] == pytest.approx([entry["loss"] for entry in losses[1]], rel=1e-4)
    adapters = [load_file(run.path("results/runs/demo/train/final/adapter_model.safetensors"))
                for run in (workflow, one_node)]
    assert adapters[0].keys() == adapters[1].keys()
    for name, tensor in adapters[0].items():
        torch.testing.assert_close(tensor, adapters[1][name], rtol=1e-4, atol=1e-6, msg=name)


def training_processes(cluster: SlurmCluster, node_index: int) -> list[int]:
    """PIDs of the training processes (torchrun and its workers) running on one node."""
    node = cluster.nodes[node_index]
    pids = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "torch.distributed.run" in command or "vidtune.train" in command:
            found.append(int(pid))
    return found


def complete_checkpoints(workflow: Workflow) -> list[int]:
    return sorted(int(folder.name.split("-")[1]) for folder in workflow.path(CHECKPOINTS).glob("checkpoint-*")
                  if (folder / COMPLETE_MARKER).is_file())


def run_until(workflow: Workflow, cluster: SlurmCluster, ready, action) -> str:
    """Submit the train step (no retry) and, once ``ready()``, do ``action()``; the run must then fail.
    Returns the train log."""
    head = subprocess.Popen(submit_command(workflow, "--retries", "0"), cwd=workflow.workdir, env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not ready():
            assert head.poll() is None and time.monotonic() < deadline, head.communicate()[0][-3000:]
            time.sleep(0.2)
        action()
        output = head.communicate(timeout=600)[0]
    finally:
        if head.poll() is None:
            head.kill()
            head.wait()
    assert head.returncode != 0, output[-3000:]
    assert not workflow.path(SUMMARY).exists()
    return workflow.path(TRAIN_LOG).read_text()


def test_stop_signal_and_lost_node_resume_from_the_last_complete_checkpoint(slurm_nodes, demo_inputs,  # noqa: F811
                                                                            tmp_path):
    """SLURM's warning signal (USR1 to the job's steps, as `--signal=USR1@300` sends it) stops both nodes after
    the same step with a checkpoint; the next run resumes from it. Then vt-node2's part of the step is killed
    (as when the node dies): the next run resumes from the last complete checkpoint and finishes."""
    steps = 40
    workflow = with_training(demo_inputs, tmp_path / "work", **{**TWO_NODES, "max_steps": steps, "save_steps": 4})
    log = workflow.path(TRAIN_LOG)

    def training_on_both_nodes() -> bool:
        text = log.read_text() if log.exists() else ""
        # Both processes started, and the first step (all-reduced over both) is done.
        return all(f"| {task}: training process" in text for task in (0, 1)) and \
            re.search(r'\| \d: .*step \d+/\d+: \{"loss"', text) is not None

    def signal_steps() -> None:
        [job] = [job for job in jobs_of(slurm_nodes, workflow.workdir) if job["State"] == "RUNNING"]
        slurm_nodes.command("scancel", "--signal=USR1", job["JobID"])

    text = run_until(workflow, slurm_nodes, training_on_both_nodes, signal_steps)
    assert "| 0: " in text and "| 1: " in text
    stops = re.findall(r"\| (\d): .*stopped by SIGUSR1 after a checkpoint at step (\d+)", text)
    assert sorted(task for task, _ in stops) == ["0", "1"] and stops[0][1] == stops[1][1], stops
    stopped_at = int(stops[0][1])
    assert 0 < stopped_at < steps and complete_checkpoints(workflow)[-1] == stopped_at

    def checkpoint_after_resume() -> bool:
        text = log.read_text() if log.exists() else ""
        return f"resuming from {CHECKPOINTS}/checkpoint-{stopped_at}" in text and \
            complete_checkpoints(workflow)[-1] > stopped_at

    def kill_node2() -> None:
        killed = training_processes(slurm_nodes, 1)
        assert killed, "no training process on vt-node2"
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

    run_until(workflow, slurm_nodes, checkpoint_after_resume, kill_node2)
    complete = complete_checkpoints(workflow)
    assert stopped_at < complete[-1] < steps
    jobs = jobs_of(slurm_nodes, workflow.workdir)
    # (the data check before training ran as jobs of their own, once)
    assert [(job["rule"], job["State"]) for job in jobs if job["rule"] == "train"] == [("train", "FAILED")] * 2, jobs
    assert {job["rule"] for job in jobs} <= {"check_training_data", "training_meta", "train"}, jobs

    submit(workflow, slurm_nodes, SUMMARY)
    summary = json.loads(workflow.path(SUMMARY).read_text())
    assert summary["resumed_from"]["checkpoint"] == f"checkpoint-{complete[-1]}", summary["resumed_from"]
    assert summary["resumed_from"]["optimizer_step"] == complete[-1]
    assert summary["steps"] == steps and summary["steps_this_run"] == steps - complete[-1]


def test_prediction_shards_spread_over_both_nodes(slurm_nodes, demo_inputs, tmp_path_factory):  # noqa: F811
    """Base predictions cut into 4 shards, each a SLURM job asking for one GPU: the jobs fill both nodes
    (two GPUs each), and the joined file equals the one-shard prediction made locally."""
    def with_evaluation(folder: str, shards: int) -> Workflow:
        workflow = demo_inputs.copy(tmp_path_factory.mktemp(folder) / "work")
        config = copy.deepcopy(workflow.config)
        config["runs"]["demo"]["evaluation"].update({"shards": shards, "gpus": 1})
        workflow.write_config(config)
        return workflow

    local = with_evaluation("one-shard", 1)
    local.snakemake(base_predictions(local))
    spread = with_evaluation("four-shards", 4)  # its base predictions are named for its own settings
    submit(spread, slurm_nodes, base_predictions(spread))
    jobs = [job for job in jobs_of(slurm_nodes, spread.workdir) if job["rule"] == "predict_base"]
    assert len(jobs) == 4 and all(job["State"] == "COMPLETED" for job in jobs), jobs
    assert {job["NodeList"] for job in jobs} == {"vt-node1", "vt-node2"}, jobs
    assert spread.path(base_predictions(spread)).read_bytes() == local.path(base_predictions(local)).read_bytes()


def base_predictions(workflow: Workflow) -> str:
    """The joined base predictions the run's evaluation settings name (shared by runs with the same ones)."""
    from vidtune.prediction_shards import evaluation_key

    run = with_defaults(workflow.config)["runs"]["demo"]
    return f"results/predictions/base/{run['model']}/{evaluation_key(run['datasets'], run['evaluation'])}.jsonl"
