"""profiles/slurm on a small cluster like the held-out one of issue 25 (tests/slurm_cluster.py, `SMALL`): one
node of 2 CPUs and 20 GB with memory enforced by cgroups, partitions cpuq and gpuq (4 h limit, untyped GPUs),
no accounting database.

A new user edits only the profile's site block, as in the issue (partitions, no account line, no GPU type).
The first run stops before anything is submitted, naming the jobs that could never start and the setting to
change; with the changes it names, the reduced demo runs through SLURM to the report.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, SNAKEMAKE, Workflow, quick_config
from slurm_cluster import PROFILE, SMALL, SlurmCluster, small_slurm_cluster  # noqa: F401 - the fixture
from test_slurm import FAST_STATUS
from vidtune import resources

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

SITE_START, SITE_END = re.compile(r"^# =+ SITE SETTINGS", re.M), re.compile(r"^# =+ END OF SITE SETTINGS", re.M)
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/")


def site_block_edit(text: str, old: str, new: str) -> str:
    """Replace one piece of the profile's site block (and only there)."""
    start, end = SITE_START.search(text).start(), SITE_END.search(text).start()
    block = text[start:end]
    assert block.count(old) == 1, old
    return text[:start] + block.replace(old, new) + text[end:]


def new_user_profile(folder: Path) -> Path:
    """profiles/slurm with the site block edited as the issue's user did for the small cluster."""
    text = (PROFILE / "config.yaml").read_text()
    text = site_block_edit(text, "  slurm_account: vidtune\n", "")
    text = site_block_edit(text, "  slurm_partition: cpu\n", "  slurm_partition: cpuq\n")
    text = site_block_edit(text, "    slurm_partition: gpu\n", "    slurm_partition: gpuq\n")
    text = site_block_edit(text, "    gpu_model: a100\n", "")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)
    return folder


def run(workflow: Workflow, cluster: SlurmCluster, profile: Path, *targets: str) -> subprocess.CompletedProcess:
    """`snakemake --profile <profile> <targets>` as a user starts it on a login node (no --cores, which would
    cap every job's threads)."""
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workflow.workdir), "--profile",
               str(profile), *FAST_STATUS, *targets]
    return subprocess.run(command, cwd=workflow.workdir, env=cluster.env, capture_output=True, text=True,
                          timeout=1500)


@pytest.fixture(scope="module")
def small_run(small_slurm_cluster, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """The reduced demo on the small cluster: the preflight's first answer, then the run after the changes it
    names. Returns (first output, the run's output, planned jobs, SLURM jobid -> rule, workflow)."""
    cluster = small_slurm_cluster
    root = tmp_path_factory.mktemp("small")
    profile = new_user_profile(root / "profile")
    workflow = Workflow(root / "work", quick_config())
    planned = workflow.planned_jobs("train_all")
    jobs_before = len(cluster.jobs())
    first = run(workflow, cluster, profile, "train_all")
    first_output = first.stdout + first.stderr
    assert first.returncode != 0, first_output[-3000:]
    assert not SUBMITTED.search(first_output) and len(cluster.jobs()) == jobs_before, "a job was submitted"

    # The changes the preflight names, made in the site block.
    text = (profile / "config.yaml").read_text()
    threads = re.search(r"`set-threads: extract_frames: (\d+)`", first_output)
    runtime_limit = re.search(r"`runtime_limit: (\d+)` under `set-resources: train:`", first_output)
    assert threads and runtime_limit, first_output[-3000:]
    text = site_block_edit(text, "  extract_frames: 8\n", f"  extract_frames: {threads.group(1)}\n")
    text = site_block_edit(text, "    runtime_limit: 1440\n", f"    runtime_limit: {runtime_limit.group(1)}\n")
    (profile / "config.yaml").write_text(text)
    started = time.monotonic()
    second = run(workflow, cluster, profile, "train_all")
    print(f"the reduced demo through SLURM on the small cluster: {time.monotonic() - started:.0f} s")
    output = second.stdout + second.stderr
    assert second.returncode == 0, f"{output[-6000:]}\n{cluster.logs()}"
    return first_output, output, planned, dict(SUBMITTED.findall(output)), workflow


def test_preflight_stops_before_submitting_and_names_the_setting(small_run):
    first, _, _, _, _ = small_run
    lines = [line.strip() for line in first.splitlines()]
    frames = [line for line in lines if line.startswith("extract_frames (dataset=demo, shard=")]
    assert len(frames) == 2 and all("asks 8 CPUs, the nodes of partition cpuq have at most 2" in line
                                    for line in frames), first[-3000:]
    # The training's limit follows its steps, capped at the site block's runtime_limit: the cap is checked.
    (train,) = [line for line in lines if line.startswith("train (run=demo)")]
    assert "may ask up to 1440 min (`runtime_limit`), partition gpuq allows 240 min" in train
    # Every other job fits: only these three lines.
    assert "3 problem(s): these jobs can never run on this cluster, nothing was submitted" in first


def test_the_demo_runs_through_slurm_after_the_change(small_run, small_slurm_cluster):  # noqa: F811
    _, output, planned, rules, workflow = small_run
    assert "preflight: this cluster has no accounting" in output and "followed with `squeue`" in output
    assert sorted(rules.values()) == sorted(rule for rule, count in planned.items() for _ in range(count))
    finished = {job["JobId"]: job for job in small_slurm_cluster.jobs()}
    for jobid, rule in sorted(rules.items(), key=lambda item: int(item[0])):
        job = finished[jobid]
        print(f"{jobid:>4} {rule:20} {job['JobState']:10} {job['Partition']:5} limit {job['TimeLimit']:>4} min "
              f"{job['Tres']:40} {job['StartTime'][11:]}-{job['EndTime'][11:]}")
        assert job["JobState"] == "COMPLETED", (rule, job)
        assert job["Partition"] == ("gpuq" if rule in ("train", "predict_base", "predict_finetuned") else "cpuq")
        if rule == "train":  # from its steps: the floor, 3 steps of the tiny model need less (cap: 240)
            assert job["TimeLimit"] == str(resources.RUNTIME_FLOOR_MIN)
        if rule == "extract_frames":
            assert "cpu=2," in job["Tres"]
    assert workflow.path("results/runs/demo/metrics.json").exists()
    assert workflow.path("results/runs/demo/report/metrics.html").exists()
    assert workflow.path("results/report/data_summary.html").exists()


def test_memory_is_enforced(small_slurm_cluster, tmp_path):  # noqa: F811
    """A job past its --mem is killed (cgroup), so the runs above stayed within what they asked for."""
    hog = "python3 -c 'x = bytearray(400 * 2**20); import time; time.sleep(1)'"
    jobid = small_slurm_cluster.command("sbatch", "--parsable", "-p", "cpuq", "--mem", "100", "-o",
                                        str(tmp_path / "hog.log"), "--wrap", hog).strip()
    small_slurm_cluster.command("scontrol", "show", "job", jobid)
    for _ in range(120):
        states = {job["JobId"]: job["JobState"] for job in small_slurm_cluster.jobs()}
        if jobid in states:
            break
        subprocess.run(["sleep", "0.5"])
    assert states.get(jobid) == "OUT_OF_MEMORY", states


def test_an_sbatch_refusal_ends_with_the_limit_it_hit(small_slurm_cluster, tmp_path):  # noqa: F811
    """A retry that asks more memory than any node has is refused by sbatch; the run ends saying which job,
    what it asked and what the partition has (the workflow's hooks, here in a one-rule Snakefile)."""
    profile = new_user_profile(tmp_path / "profile")
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(REPO / "src")!r})
        from vidtune.slurm_preflight import explain_refusals, preflight

        rule grow:
            output: "grown.txt"
            resources: mem_mb=lambda wildcards, attempt: 100 if attempt == 1 else {SMALL.memory_mb * 2}, runtime=5
            shell: "exit 1"

        onstart:
            preflight(workflow)

        onerror:
            explain_refusals(workflow, log)
        """))
    result = subprocess.run([SNAKEMAKE, "--profile", str(profile), *FAST_STATUS, "--workflow-profile", "none"],
                            cwd=tmp_path, env=small_slurm_cluster.env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "sbatch refused grow: sbatch: error: Memory specification can not be satisfied" in output, output[-3000:]
    assert f"grow: asks {SMALL.memory_mb * 2} MB of memory, the nodes of partition cpuq have at most " \
           f"{SMALL.memory_mb} MB" in output
