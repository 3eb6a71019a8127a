"""profiles/slurm against a real one-node SLURM (tests/slurm_cluster.py): the reduced demo's `train_all` goes
through sbatch, SLURM's accounting shows every job and the GPUs the GPU steps asked for, and the results have
the shape of a local run's.

The run uses the profile as a user would (`--profile profiles/slurm`, the workflow profile picked up as usual);
the only test-specific setting is the first status check after 1 s instead of 40 s, which makes each level of
the DAG cost seconds instead of most of a minute.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, SNAKEMAKE, Workflow, quick_config
from slurm_cluster import PROFILE, SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "1")
GPU_RULES = {"train", "predict_base", "predict_finetuned"}


def submit(workflow: Workflow, cluster: SlurmCluster, *targets: str):
    return workflow.snakemake("--profile", str(PROFILE), *FAST_STATUS, *targets, env=cluster.env, timeout=1500)


def jobs_of(cluster: SlurmCluster, workdir: Path) -> list[dict[str, str]]:
    """SLURM's records of the jobs submitted from one working directory, with the rule from the comment."""
    jobs = [job for job in cluster.jobs() if Path(job["WorkDir"]).resolve() == workdir.resolve()]
    for job in jobs:
        job["rule"] = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
    return jobs


def key_shape(value):
    """The nested keys of a JSON document, without its values."""
    if isinstance(value, dict):
        return {key: key_shape(item) for key, item in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [key_shape(value[0])]
    return type(value).__name__


def result_files(workflow: Workflow) -> set[str]:
    """Paths of the results a later step or a user reads (not training checkpoints or TensorBoard events,
    whose names carry steps, hosts and times). Base predictions are named for their settings, which here
    differ in the device (a GPU job's answers are stored apart from a CPU job's): that part is left out."""
    root = workflow.path("results")
    return {re.sub(r"(predict(?:ions)?/base/[^/]+/)[^/.]+", r"\1<settings>", str(path.relative_to(root)))
            for path in root.rglob("*")
            if path.is_file() and "checkpoints" not in path.parts and "events.out.tfevents" not in path.name}


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """The reduced demo, with one GPU for training and prediction, run to `train_all` through SLURM."""
    config = quick_config()
    config["runs"]["demo"]["training"]["gpus"] = 1
    config["runs"]["demo"]["evaluation"]["gpus"] = 1
    workflow = Workflow(tmp_path_factory.mktemp("slurm") / "work", config)
    planned = workflow.planned_jobs("train_all")
    try:
        submit(workflow, slurm_cluster, "train_all")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{slurm_cluster.logs()}") from None
    return workflow, planned, jobs_of(slurm_cluster, workflow.workdir)


def test_every_job_ran_through_slurm(slurm_run):
    workflow, planned, jobs = slurm_run
    assert planned and Counter(job["rule"] for job in jobs) == Counter(planned)
    assert {job["State"] for job in jobs} == {"COMPLETED"}, jobs
    assert not workflow.planned_jobs("train_all"), "a second run would still have work to do"


def test_gpu_steps_asked_slurm_for_a_gpu(slurm_run, slurm_cluster):  # noqa: F811
    site = slurm_cluster.site
    _, _, jobs = slurm_run
    for job in jobs:
        assert job["Account"] == site.account, job
        if job["rule"] in GPU_RULES:
            assert job["Partition"] == site.gpu_partition, job
            assert "gres/gpu=1" in job["ReqTRES"].split(","), job
            if site.gpu_model:
                assert f"gres/gpu:{site.gpu_model}=1" in job["AllocTRES"].split(","), job
        else:
            assert job["Partition"] == site.cpu_partition, job
            assert "gres/gpu" not in job["ReqTRES"], job


def test_results_match_a_local_run(slurm_run, quick_run):
    workflow, _, _ = slurm_run
    assert result_files(workflow) == result_files(quick_run)
    metrics = "results/runs/demo/metrics.json"
    assert key_shape(json.loads(workflow.path(metrics).read_text())) == \
        key_shape(json.loads(quick_run.path(metrics).read_text()))


def test_multi_gpu_request_reaches_sbatch(slurm_cluster, tmp_path):  # noqa: F811
    """A step that declares gpu=2 is submitted for two GPUs, with this repository's workflow profile in place
    (a global `resources: gpu:` limit there would cap the request and the job's srun would then fail)."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "default").symlink_to(REPO / "profiles" / "default")
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""\
        rule two_gpus:
            output: "gpus.txt"
            resources: gpu=2, mem_mb=100, runtime=5
            shell: "echo $CUDA_VISIBLE_DEVICES > {output}"
        """))
    # A command-line --set-resources replaces the profile's set-resources: the partition is named again here.
    result = subprocess.run(
        [SNAKEMAKE, "--profile", str(PROFILE), *FAST_STATUS, "--retries", "0",
         "--set-resources", f"two_gpus:slurm_partition={slurm_cluster.site.gpu_partition}"],
        cwd=tmp_path, env=slurm_cluster.env, capture_output=True, text=True, timeout=300)
    jobs = jobs_of(slurm_cluster, tmp_path)
    assert [job["ReqTRES"].split(",").count("gres/gpu=2") for job in jobs] == [1], (jobs, result.stderr[-3000:])
    assert (tmp_path / "gpus.txt").read_text().strip() == "0,1"
