"""The SLURM preflight's parsing and checks (vidtune.slurm_preflight) on text captured from real clusters: the
small cluster of tests/slurm_cluster.py (SMALL) as `scontrol` printed it, and a GPU site's records."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, load_default_config
from vidtune import resources
from vidtune import slurm_preflight as pf

# `scontrol -o show partition` / `show node` of the SMALL test cluster (slurm-wlm 22.05.8), as printed.
SMALL_PARTITIONS = """\
PartitionName=cpuq AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=20000M,node=1,billing=2
PartitionName=gpuq AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=04:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=20000M,node=1,billing=2
"""
SMALL_NODES = """\
NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=2.13 AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:2 NodeAddr=127.0.0.1 NodeHostName=vm Version=22.05.8 OS=Linux 6.18.44-fc-v1272 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=20000 AllocMem=0 FreeMem=8869 Sockets=2 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=cpuq,gpuq  BootTime=2026-12-07T02:02:42 SlurmdStartTime=2026-12-07T02:13:21 LastBusyTime=2026-12-07T02:13:21 CfgTRES=cpu=2,mem=20000M,billing=2 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s
"""
NO_ACCOUNTING = """\
Configuration data as of 2026-12-07T02:13:21
AccountingStorageType   = accounting_storage/none
EnforcePartLimits       = NO
MinJobAge               = 300 sec
"""
# A GPU site: typed GPUs on two nodes of one partition with a node limit and a per-node memory cap.
GPU_PARTITIONS = """\
PartitionName=cpu Default=YES MaxNodes=UNLIMITED MaxTime=2-00:00:00 Nodes=c[1-2] State=UP MaxMemPerNode=UNLIMITED
PartitionName=gpu Default=NO MaxNodes=2 MaxTime=1-00:00:00 Nodes=g[1-2] State=UP MaxMemPerNode=256000
"""
GPU_NODES = """\
NodeName=c1 CPUTot=16 RealMemory=64000 Gres=(null) Partitions=cpu State=IDLE
NodeName=c2 CPUTot=16 RealMemory=64000 Gres=(null) Partitions=cpu State=IDLE
NodeName=g1 CPUTot=32 RealMemory=512000 Gres=gpu:a100:4(S:0-1) Partitions=gpu State=MIXED
NodeName=g2 CPUTot=32 RealMemory=512000 Gres=gpu:a100:4(S:0-1) Partitions=gpu State=IDLE
"""
ACCOUNTING = "AccountingStorageType   = accounting_storage/slurmdbd\nMinJobAge               = 300 sec\n"


@pytest.fixture
def small():
    return pf.parse_cluster(SMALL_PARTITIONS, SMALL_NODES, NO_ACCOUNTING)


@pytest.fixture
def gpu_site():
    return pf.parse_cluster(GPU_PARTITIONS, GPU_NODES, ACCOUNTING, accounts_text="vidtune\nother\n")


def request(rule="ingest", threads=1, wildcards=None, **resources):
    return pf.request_from_resources(rule, wildcards or {"dataset": "demo"}, threads,
                                     {"mem_mb": 4000, "runtime": 60, "slurm_partition": "cpuq", **resources},
                                     overridden=resources.pop("_overridden", ()))


def test_parse_the_small_cluster(small):
    assert set(small.partitions) == {"cpuq", "gpuq"} and small.default_partition == "cpuq"
    gpuq = small.partitions["gpuq"]
    assert gpuq.max_time_min == 240 and gpuq.max_nodes is None and small.partitions["cpuq"].max_time_min is None
    (node,) = gpuq.nodes
    assert (node.name, node.cpus, node.memory_mb, node.gpus) == ("vm", 2, 20000, {None: 2})
    assert not small.accounting and small.min_job_age_s == 300 and small.accounts is None


def test_parse_a_gpu_site(gpu_site):
    gpu = gpu_site.partitions["gpu"]
    assert gpu.max_nodes == 2 and gpu.max_mem_per_node_mb == 256000 and gpu.max_time_min == 24 * 60
    assert [n.gpus for n in gpu.nodes] == [{"a100": 4}] * 2
    assert gpu_site.accounting and gpu_site.accounts == {"vidtune", "other"}
    assert gpu_site.partitions["cpu"].max_time_min == 48 * 60


@pytest.mark.parametrize("text, minutes", [("UNLIMITED", None), ("30", 30), ("4:00:00", 240), ("1:30", 2),
                                           ("1-12:00:00", 2160), ("2-0", 2880), ("00:30:01", 31)])
def test_parse_minutes(text, minutes):
    assert pf.parse_minutes(text) == minutes


def test_parse_gres():
    assert pf.parse_gres("gpu:a100:4(S:0-1),gpu:v100:2") == {"a100": 4, "v100": 2}
    assert pf.parse_gres("gpu:2") == {None: 2} and pf.parse_gres("(null)") == {}
    assert pf.parse_gres("gpu:tesla:1,mps:100") == {"tesla": 1}


def test_a_job_that_fits_has_no_problem(small):
    assert pf.check([request(), request("train", slurm_partition="gpuq", runtime=240)], small) == []


def test_too_many_threads_names_the_rule_and_the_setting(small):
    (line,) = pf.check([request("extract_frames", threads=8, wildcards={"dataset": "demo", "shard": "000"},
                                mem_mb=12000)], small)
    assert line.startswith("extract_frames (dataset=demo, shard=000): asks 8 CPUs")
    assert "partition cpuq have at most 2" in line and "`set-threads: extract_frames: 2`" in line


def test_memory_beyond_every_node(small):
    (line,) = pf.check([request("merge", wildcards={"run": "demo"}, mem_mb=32000)], small)
    assert "merge (run=demo): asks 32000 MB of memory" in line and "at most 20000 MB" in line
    assert "`default-resources: slurm_partition`" in line and "`set-resources: merge: mem_mb`" in line


def test_time_limit_of_the_partition(small):
    """A training above the partition's MaxTime: the site block's runtime_limit caps it (it resumes); a rule that
    cannot resume, or a runtime set by hand, must fit."""
    (line,) = pf.check([request("train", wildcards={"run": "demo"}, slurm_partition="gpuq", runtime=720,
                                _overridden={"slurm_partition"})], small)
    assert "asks 720 min, partition gpuq allows 240 min" in line and "it fits partition cpuq" in line
    assert "`runtime_limit: 240` under `set-resources: train:`" in line and "resumes from its last checkpoint" in line
    # A runtime_limit above MaxTime, whatever the training asks now: once its data exists it may ask that much.
    (line,) = pf.check([request("train", wildcards={"run": "demo"}, slurm_partition="gpuq", runtime=10,
                                runtime_limit=1440)], small)
    assert "may ask up to 1440 min (`runtime_limit`), partition gpuq allows 240 min" in line
    assert "`runtime_limit: 240` under `set-resources: train:`" in line
    assert pf.check([request("train", slurm_partition="gpuq", runtime=240, runtime_limit=240)], small) == []
    (line,) = pf.check([request("train", wildcards={"run": "demo"}, slurm_partition="gpuq", runtime=720,
                                _overridden={"slurm_partition", "runtime"})], small)
    assert "`set-resources: train: runtime: 240`" in line
    (line,) = pf.check([request("predict_base", slurm_partition="gpuq", runtime=300)], small)
    assert "asks 300 min, partition gpuq allows 240 min" in line and "`set-resources: predict_base: runtime: 240`" in line


def test_a_capped_training_is_noted_not_refused(small):
    capped = request("train", wildcards={"run": "demo"}, slurm_partition="gpuq", runtime=240, runtime_needed=900,
                     runtime_limit=240)
    assert pf.check([capped], small) == []
    (note,) = pf.capped_notes([capped, request(runtime=60, runtime_needed=900)])  # only a training resumes
    assert note.startswith("train (run=demo): needs about 900 min") and "asks 240 min (`runtime_limit`" in note
    assert "resumes from its last checkpoint, about 4 jobs in all" in note
    assert pf.capped_notes([request("train", runtime=240, runtime_needed=200)]) == []  # fits: nothing to say


def test_unknown_partition_and_default(small):
    (line,) = pf.check([request(slurm_partition="cpu")], small)
    assert "asks partition cpu, which this cluster does not have (it has cpuq, gpuq)" in line
    assert pf.check([request(slurm_partition=None)], small) == []  # the default partition, cpuq


def test_gpu_type_count_and_nodes(small, gpu_site):
    typed = request("predict_base", wildcards={"model": "tiny", "evaluation": "e", "shard": "000"},
                    slurm_partition="gpuq", gpu=1, gpu_model="a100")
    (line,) = pf.check([typed], small)
    assert "asks 1 GPU(s) of type a100 on a node" in line and "remove the `gpu_model` line of predict_base" in line
    assert pf.check([request("predict_base", slurm_partition="gpuq", gpu=1)], small) == []  # any type
    site = dict(slurm_partition="gpu", mem_mb=100000, runtime=600)
    assert pf.check([request("train", threads=8, gpu=4, gpu_model="a100", **site)], gpu_site) == []
    (line,) = pf.check([request("train", threads=8, gpu=4, gpu_model="h100", **site)], gpu_site)
    assert "of type h100" in line and "to one of a100" in line
    (line,) = pf.check([request("train", threads=8, gpu=8, gpu_model="a100", **site)], gpu_site)
    assert "asks 8 GPU(s) of type a100 on a node, the nodes of partition gpu have at most 4" in line
    multi = dict(site, nodes=3, tasks=3, gres="gpu:4", mpi="srun")
    (line,) = pf.check([request("train", threads=8, **multi)], gpu_site)
    assert "asks 3 nodes, partition gpu allows 2" in line
    assert pf.check([request("train", threads=8, **dict(multi, nodes=2, tasks=2))], gpu_site) == []
    (line,) = pf.check([request("merge", mem_mb=300000, slurm_partition="gpu")], gpu_site)
    assert "at most 256000 MB" in line  # MaxMemPerNode caps the 512 GB nodes


def test_accounts(gpu_site):
    assert pf.check([request(slurm_partition="cpu", slurm_account="vidtune")], gpu_site) == []
    (line,) = pf.check([request(slurm_partition="cpu", slurm_account="nobody")], gpu_site)
    assert "asks account nobody, yours are other, vidtune" in line and "slurm_account" in line


def test_no_accounting_means_squeue_and_no_account(small, gpu_site):
    assert pf.check_accounting(gpu_site, "sacct", True, 40) == ("sacct", [])
    assert pf.check_accounting(small, "sacct", False, 40) == ("squeue", [])
    status, (line,) = pf.check_accounting(small, "sacct", True, 40)
    assert status == "squeue" and "remove the `slurm_account` line" in line
    small.min_job_age_s = 60
    status, (line,) = pf.check_accounting(small, "squeue", False, 40)
    assert "MinJobAge=60 s" in line and "`slurm-init-seconds-before-status-checks: 20`" in line


def test_request_as_the_plugin_submits_it():
    job = pf.request_from_resources("train", {"run": "r"}, 8, {
        "mem_mb": 64000, "runtime": 720, "nodes": 2, "tasks": 2, "gres": "gpu:4", "gpu": 0, "mpi": "srun",
        "slurm_partition": "gpu", "gpu_model": "a100"})
    assert (job.nodes, job.cpus_per_node, job.gpus, job.gpu_model, job.mem_mb) == (2, 8, 4, None, 64000)
    job = pf.request_from_resources("x", {}, 2, {"mem_mb_per_cpu": 1000, "runtime": 120, "cpus_per_task": 4})
    assert (job.cpus_per_node, job.mem_mb, job.runtime_min, job.name) == (4, 4000, 120, "x")
    assert job.runtime_needed_min is None and job.runtime_limit_min is None
    job = pf.request_from_resources("train", {}, 1, {"runtime": 240, "runtime_needed": 900, "runtime_limit": 240})
    assert (job.runtime_min, job.runtime_needed_min, job.runtime_limit_min) == (240, 900, 240)


def test_refusals_from_the_log():
    log = """\
Error in rule merge:
    message: SLURM sbatch failed. The error message was 'sbatch: error: Memory specification can not be satisfied
sbatch: error: Batch job submission failed: Requested node configuration is not available'.
    sbatch call:
        sbatch --parsable --mem 64000 ...
    jobid: 12
    output: results/runs/demo/merged
    wildcards: run=demo
Error in rule score:
    jobid: 13
    log: results/logs/score/demo.log (check log file(s) for error details)
"""
    (refusal,) = pf.refusals(log)
    assert refusal[0] == "merge" and refusal[1] == "run=demo"
    assert "Requested node configuration is not available" in refusal[2]


def parsed_workflow(workdir, config: dict, profile: dict):
    """The workflow as Snakemake parses it with a profile's resources and threads (a dry run of train_all: the
    whole DAG, every job's resources evaluated as for a submission)."""
    from snakemake.api import SnakemakeApi
    from snakemake.resources import Resources
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, ResourceSettings,
                                          StorageSettings)

    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    settings = ResourceSettings(
        cores=2, default_resources=Resources.from_mapping(profile["default-resources"]),
        overwrite_resources={rule: Resources.from_mapping(values) for rule, values in profile["set-resources"].items()},
        overwrite_threads=profile["set-threads"])
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(resource_settings=settings, storage_settings=StorageSettings(),
                                    config_settings=ConfigSettings(configfiles=[workdir / "config.yaml"]),
                                    workdir=workdir, snakefile=REPO / "Snakefile")
        workflow_api.dag(DAGSettings(targets={"train_all"})).execute_workflow(executor="dryrun")
        return workflow_api._workflow


def test_a_parse_caps_the_training_at_the_site_limit_and_notes_it(small, tmp_path):
    """The demo parsed with profiles/slurm's site block as a user of the small cluster sets it (partitions cpuq
    and gpuq, gpuq's 240-min MaxTime as runtime_limit, no account, any GPU type, 2 frame threads). Before its
    data exists the training needs the default 720 min: it asks 240, and the preflight notes it, not refuses it."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    del profile["default-resources"]["slurm_account"]
    profile["default-resources"]["slurm_partition"] = "cpuq"
    gpu_step = {**profile["set-resources"]["train"], "slurm_partition": "gpuq", "runtime_limit": 240}
    del gpu_step["gpu_model"]
    profile["set-resources"] = {rule: gpu_step for rule in profile["set-resources"]}
    profile["set-threads"] = {"extract_frames": 2}
    workflow = parsed_workflow(tmp_path, load_default_config(), profile)

    # Each job's request as pf.workflow_requests makes it (which skips a dry run's jobs: they run locally).
    overrides = workflow.resource_settings.overwrite_resources
    requests = [pf.request_from_resources(job.rule.name, dict(job.wildcards_dict), job.threads,
                                          dict(job.resources.items()), overrides.get(job.rule.name, {}).keys())
                for job in workflow.dag.jobs if not job.rule.norun]
    (train,) = [request for request in requests if request.rule == "train"]
    assert (train.partition, train.runtime_min) == ("gpuq", 240)
    assert train.runtime_needed_min == resources.UNKNOWN_DATA_RUNTIME_MIN
    assert pf.check(requests, small) == []  # every job fits: nothing is refused
    (note,) = pf.capped_notes(requests)
    assert note.startswith("train (run=demo): needs about 720 min") and "asks 240 min" in note
