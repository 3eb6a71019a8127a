"""Before anything is submitted: can every job of the run ever start on this SLURM cluster?

`snakemake --profile profiles/slurm ...` runs :func:`preflight` from the workflow's `onstart` hook, in the head
process, after the DAG is built (every job, those after a checkpoint included, with its resources as the
profile sets them) and before the first `sbatch`. It compares each job's request (partition, CPUs, memory,
GPUs of a type, nodes, time limit, account) with what `scontrol show partition`, `scontrol show node` and
`scontrol show config` report, and stops with one line per job that can never run: the rule, its wildcards,
the request, the partition's limit and the setting to change. SLURM itself would keep such a job pending
(`PartitionConfig`, `ReqNodeNotAvail`) or refuse it, and the executor plugin would say nothing.

A training job is the exception: it resumes from its last checkpoint, so its time limit (computed from its
steps) is capped at the site block's `runtime_limit`; where the cap is below what its steps need, the preflight
prints a note (:func:`capped_notes`) instead of stopping, and it stops only where the cap itself is above the
partition's MaxTime.

It also reads whether the cluster keeps accounting (`AccountingStorageType`): without it `sacct` cannot tell a
job's state, so the status command becomes `squeue` (and `MinJobAge` must keep finished jobs long enough for
it), and an account in the profile is an error (the plugin checks accounts with `sacctmgr`, which fails).

An `sbatch` refusal during the run (a retry asking for more memory, say) ends, through the `onerror` hook,
with :func:`explain_refusals`: the same kind of lines for the refused jobs.

The parsing and the checks are pure functions of the commands' text (tests/test_slurm_preflight.py runs them
on text captured from a real cluster); only :func:`query_cluster` and the two hooks touch SLURM and Snakemake.
"""

from __future__ import annotations

import getpass
import math
import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

SITE_BLOCK = "the site block of your profile (profiles/slurm/config.yaml)"
# Rules whose jobs resume from their last checkpoint after a time limit: their time limit may be capped at the
# partition's (the site block's `runtime_limit`) below what their work needs.
RESUMING_RULES = {"train"}
# The executor plugin uses `sacct` for a job's state unless squeue can see finished jobs for 3 status
# intervals (its `init_seconds_before_status_checks`, default 40 s): then it falls back to sacct on its own.
STATUS_INTERVAL_FACTOR = 3


class PreflightError(RuntimeError):
    """A job can never run on this cluster, or the cluster cannot be asked; the message says what to change."""


# --- What SLURM reports ---------------------------------------------------------------------------------------

_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/.]*)=")


def parse_oneliner(text: str) -> list[dict[str, str]]:
    """Records of `scontrol --oneliner show partition|node`: one per line, `Key=Value` pairs (values may hold
    spaces, as a node's OS does)."""
    records = []
    for line in text.splitlines():
        keys = list(_KEY.finditer(line))
        if not keys:
            continue
        record = {}
        for index, key in enumerate(keys):
            end = keys[index + 1].start() if index + 1 < len(keys) else len(line)
            record[key.group(1)] = line[key.end():end].strip()
        records.append(record)
    return records


def parse_config(text: str) -> dict[str, str]:
    """`scontrol show config`: `Key = Value` lines."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config


def parse_minutes(value: str | None) -> int | None:
    """A SLURM time (`UNLIMITED`, `30`, `4:00:00`, `1-12:00:00`, `2-0`) in minutes; None for no limit."""
    if value is None or value.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = value.rpartition("-")
    parts = [int(part) for part in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = 0, parts[0], 0
    return (int(days or 0) * 24 + hours) * 60 + minutes + math.ceil(seconds / 60)


def parse_seconds(value: str | None) -> int | None:
    """A duration of `scontrol show config` (`300 sec`, `1h`, `5 min`) in seconds."""
    match = re.match(r"\s*(\d+)\s*([a-z]*)", (value or "").lower())
    if not match:
        return None
    unit = {"": 1, "s": 1, "sec": 1, "secs": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minutes": 60,
            "h": 3600, "hour": 3600, "hours": 3600}.get(match.group(2))
    return None if unit is None else int(match.group(1)) * unit


def _limit(value: str | None) -> int | None:
    if value is None or not value.strip() or value.upper() in ("UNLIMITED", "INFINITE", "0"):
        return None
    match = re.match(r"(\d+)", value)
    return int(match.group(1)) if match else None


def parse_gres(value: str | None) -> dict[str | None, int]:
    """GPUs of a node's `Gres` (`gpu:a100:4(S:0-1),gpu:v100:2`, `gpu:2`, `(null)`): type (None: untyped) -> count."""
    gpus: dict[str | None, int] = {}
    for item in re.sub(r"\([^)]*\)", "", value or "").split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = int(re.match(r"\d+", parts[-1]).group()) if len(parts) > 1 and parts[-1][:1].isdigit() else 1
        kind = parts[1] if len(parts) == 3 else None
        gpus[kind] = gpus.get(kind, 0) + count
    return gpus


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: dict[str | None, int]  # type -> count; an untyped count under None

    def gpu_count(self, model: str | None) -> int:
        return sum(self.gpus.values()) if model is None else self.gpus.get(model, 0)


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[Node, ...]
    max_time_min: int | None = None
    max_nodes: int | None = None
    max_mem_per_node_mb: int | None = None
    max_cpus_per_node: int | None = None
    state: str = "UP"
    default: bool = False


@dataclass
class Cluster:
    partitions: dict[str, Partition]
    accounting: bool  # False: AccountingStorageType=accounting_storage/none (no slurmdbd; sacct cannot answer)
    min_job_age_s: int | None
    accounts: set[str] | None = None  # the user's accounts (sacctmgr); None where accounting is off

    @property
    def default_partition(self) -> str | None:
        return next((name for name, partition in self.partitions.items() if partition.default), None)


def parse_cluster(partitions_text: str, nodes_text: str, config_text: str,
                  accounts_text: str | None = None) -> Cluster:
    """The cluster from `scontrol -o show partition`, `scontrol -o show node`, `scontrol show config` and
    `sacctmgr -nP show assoc user=<me> format=account` (None where accounting is off)."""
    nodes, members = {}, {}
    for record in parse_oneliner(nodes_text):
        node = Node(record["NodeName"], int(record.get("CPUTot", 0)), int(record.get("RealMemory", 0)),
                    parse_gres(record.get("Gres")))
        nodes[node.name] = node
        for partition in filter(None, record.get("Partitions", "").split(",")):
            members.setdefault(partition, []).append(node)
    partitions = {}
    for record in parse_oneliner(partitions_text):
        name = record["PartitionName"]
        partitions[name] = Partition(
            name, tuple(members.get(name, ())), max_time_min=parse_minutes(record.get("MaxTime")),
            max_nodes=_limit(record.get("MaxNodes")), max_mem_per_node_mb=_limit(record.get("MaxMemPerNode")),
            max_cpus_per_node=_limit(record.get("MaxCPUsPerNode")), state=record.get("State", "UP"),
            default=record.get("Default", "NO") == "YES")
    config = parse_config(config_text)
    accounting = config.get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none"
    accounts = None
    if accounting and accounts_text is not None:
        accounts = {line.strip().lower() for line in accounts_text.splitlines() if line.strip()}
    return Cluster(partitions, accounting, parse_seconds(config.get("MinJobAge")), accounts)


# --- What a job asks for --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One job's request as the executor plugin turns it into sbatch options (--partition, --cpus-per-task,
    --mem, -t, --gpus=<model>:<n> or --gres=gpu:<n> per node, --nodes, -A)."""

    rule: str
    wildcards: Mapping[str, str]
    partition: str | None
    cpus_per_node: int
    mem_mb: int | None  # per node
    runtime_min: int | None
    gpus: int  # on one node (--gpus), or per node (--gres=gpu:N) for a job of several nodes
    gpu_model: str | None
    nodes: int
    account: str | None
    overridden: frozenset[str] = field(default_factory=frozenset)  # resources set in the profile's set-resources
    runtime_needed_min: int | None = None  # what the work needs by its steps, before a cap (train)
    runtime_limit_min: int | None = None  # the cap of a job that resumes (the site block's runtime_limit)

    @property
    def name(self) -> str:
        wildcards = ", ".join(f"{key}={value}" for key, value in self.wildcards.items())
        return f"{self.rule} ({wildcards})" if wildcards else self.rule


def request_from_resources(rule: str, wildcards: Mapping[str, str], threads: int, resources: Mapping,
                           overridden: Iterable[str] = ()) -> Request:
    """The request of a job with these threads and resources (as Snakemake evaluated them for attempt 1)."""
    nodes = int(resources.get("nodes") or 1)
    tasks = int(resources.get("tasks") or 1)
    cpus = int(resources.get("cpus_per_task") or threads or 1)
    gres_gpus = parse_gres(str(resources.get("gres") or "")).get(None, 0)
    gpu = int(resources.get("gpu") or 0)
    mem = resources.get("mem_mb")
    if resources.get("mem_mb_per_cpu"):
        mem = int(resources["mem_mb_per_cpu"]) * cpus
    runtime = resources.get("runtime")
    account = resources.get("slurm_account")
    return Request(rule=rule, wildcards=dict(wildcards), partition=resources.get("slurm_partition") or None,
                   cpus_per_node=cpus * math.ceil(tasks / nodes), mem_mb=None if mem is None else int(mem),
                   runtime_min=None if runtime is None else int(runtime),  # Snakemake gives minutes
                   gpus=gpu or gres_gpus, gpu_model=(resources.get("gpu_model") or None) if gpu else None,
                   nodes=nodes, account=str(account) if account else None, overridden=frozenset(overridden),
                   runtime_needed_min=None if resources.get("runtime_needed") is None
                   else int(resources["runtime_needed"]),
                   runtime_limit_min=parse_minutes(str(resources.get("runtime_limit") or "")))


# --- The check ------------------------------------------------------------------------------------------------

def _setting(request: Request, resource: str) -> str:
    if resource in request.overridden:
        return f"`set-resources: {request.rule}: {resource}` in {SITE_BLOCK}"
    return f"`default-resources: {resource}` in {SITE_BLOCK}"


def _mb(value: int) -> str:
    return f"{value} MB"


def _where_it_fits(request: Request, cluster: Cluster) -> str:
    others = [name for name, partition in cluster.partitions.items()
              if name != request.partition and not _job_problems(request, partition)]
    return f" (it fits partition {', '.join(others)})" if others else ""


def _job_problems(request: Request, partition: Partition) -> list[str]:
    """What of the request no node set of the partition can ever give (empty: the job can run there)."""
    problems = []
    name = partition.name
    if partition.state.upper() in ("DOWN", "INACTIVE"):
        problems.append(f"partition {name} is {partition.state}; change {_setting(request, 'slurm_partition')}")
    cpus_limit = min(filter(None, [max((n.cpus for n in partition.nodes), default=0), partition.max_cpus_per_node]))
    if request.cpus_per_node > cpus_limit:
        problems.append(
            f"asks {request.cpus_per_node} CPUs, the nodes of partition {name} have at most {cpus_limit}; "
            f"set `set-threads: {request.rule}: {cpus_limit}` in {SITE_BLOCK}"
            + (" (its memory follows: 1500 MB a thread)" if request.rule == "extract_frames" else ""))
    if request.mem_mb is not None:
        memory_limit = max((n.memory_mb for n in partition.nodes), default=0)
        if partition.max_mem_per_node_mb:
            memory_limit = min(memory_limit, partition.max_mem_per_node_mb)
        if request.mem_mb > memory_limit:
            if request.rule == "extract_frames":
                fix = f"lower `set-threads: extract_frames:` in {SITE_BLOCK} (1500 MB a thread)"
            else:
                fix = (f"use a partition with larger nodes ({_setting(request, 'slurm_partition')}) or, if the job "
                       f"needs less, `set-resources: {request.rule}: mem_mb` in {SITE_BLOCK}")
            problems.append(f"asks {_mb(request.mem_mb)} of memory, the nodes of partition {name} have at most "
                            f"{_mb(memory_limit)}; {fix}")
    if request.gpus:
        have = max((n.gpu_count(request.gpu_model) for n in partition.nodes), default=0)
        if have < request.gpus:
            kinds = sorted({kind for n in partition.nodes for kind in n.gpus if kind})
            if request.gpu_model and not have and any(n.gpus for n in partition.nodes):
                fix = (f"set `gpu_model` of {request.rule} in {SITE_BLOCK} to one of {', '.join(kinds)}"
                       if kinds else f"remove the `gpu_model` line of {request.rule} from {SITE_BLOCK}"
                       " (the nodes' GPUs have no type)")
            else:
                fix = (f"point {_setting(request, 'slurm_partition')} at a partition with GPUs, or ask for fewer "
                       "(runs.<run>.training.gpus / evaluation.gpus in your config)")
            what = f"{request.gpus} GPU(s)" + (f" of type {request.gpu_model}" if request.gpu_model else "")
            problems.append(f"asks {what} on a node, the nodes of partition {name} have at most {have}; {fix}")
    node_limit = min(filter(None, [len(partition.nodes), partition.max_nodes])) if partition.nodes else 0
    if request.nodes > node_limit:
        problems.append(f"asks {request.nodes} nodes, partition {name} allows {node_limit}; lower "
                        "runs.<run>.training.nodes in your config or use a partition of more nodes")
    elif request.nodes > 1:
        fitting = [n for n in partition.nodes if n.cpus >= request.cpus_per_node
                   and (request.mem_mb is None or n.memory_mb >= request.mem_mb)
                   and n.gpu_count(request.gpu_model) >= request.gpus]
        if len(fitting) < request.nodes and not problems:
            problems.append(f"asks {request.nodes} nodes of {request.cpus_per_node} CPUs, "
                            f"{_mb(request.mem_mb or 0)} and {request.gpus} GPU(s), partition {name} has "
                            f"{len(fitting)} such nodes; lower runs.<run>.training.nodes in your config")
    limit = partition.max_time_min
    capped = request.rule in RESUMING_RULES and "runtime" not in request.overridden
    cap_fix = (f"set `runtime_limit: {limit}` under `set-resources: {request.rule}:` in {SITE_BLOCK}: a longer "
               "training stops at the limit and resumes from its last checkpoint")
    if capped and limit and request.runtime_limit_min and request.runtime_limit_min > limit:
        # Checked whatever it asks now: once its data exists it may ask up to the cap.
        problems.append(f"may ask up to {request.runtime_limit_min} min (`runtime_limit`), partition {name} allows "
                        f"{limit} min (MaxTime); {cap_fix}")
    elif request.runtime_min and limit and request.runtime_min > limit:
        if capped:
            fix = cap_fix
        else:
            fix = f"set `set-resources: {request.rule}: runtime: {limit}` in {SITE_BLOCK}"
            if request.rule in RESUMING_RULES:
                fix += " (training resumes from its checkpoints)"
        problems.append(f"asks {request.runtime_min} min, partition {name} allows {limit} min (MaxTime); {fix}")
    return problems


def capped_notes(requests: Iterable[Request]) -> list[str]:
    """One line per job that resumes (train) and asks less time than its work needs: it stops at its limit
    and resumes from its last checkpoint, as often as it takes."""
    lines = []
    for request in requests:
        needed, asked = request.runtime_needed_min, request.runtime_min
        if request.rule in RESUMING_RULES and needed and asked and needed > asked:
            limit = (f"`set-resources: {request.rule}: runtime` in {SITE_BLOCK}" if "runtime" in request.overridden
                     else f"`runtime_limit` in {SITE_BLOCK}, or a number in runs.<run>.training.runtime_min")
            lines.append(f"{request.name}: needs about {needed} min (estimated from its steps; docs/training.md, "
                         f"\"Job time limits\"), asks {asked} min ({limit}): it stops at "
                         f"the limit and resumes from its last checkpoint, about {math.ceil(needed / asked)} jobs "
                         "in all (Snakemake retries it once per run: run the same command again until it finishes)")
    return lines


def check(requests: Iterable[Request], cluster: Cluster) -> list[str]:
    """One line per problem of a job that can never run here; nothing when every job can."""
    lines = []
    for request in requests:
        partition_name = request.partition or cluster.default_partition
        partition = cluster.partitions.get(partition_name or "")
        if partition is None:
            known = ", ".join(sorted(cluster.partitions))
            problem = (f"asks partition {partition_name}, which this cluster does not have (it has {known}); "
                       f"set {_setting(request, 'slurm_partition')}" if partition_name else
                       f"names no partition and the cluster has no default one (it has {known}); set "
                       f"{_setting(request, 'slurm_partition')}")
            lines.append(f"{request.name}: {problem}")
            continue
        problems = _job_problems(request, partition)
        where = _where_it_fits(request, cluster) if problems else ""
        lines.extend(f"{request.name}: {problem}{where}" for problem in problems)
        if request.account and cluster.accounts is not None and request.account.lower() not in cluster.accounts:
            lines.append(f"{request.name}: asks account {request.account}, yours are "
                         f"{', '.join(sorted(cluster.accounts)) or 'none'}; set {_setting(request, 'slurm_account')}")
    return lines


def check_accounting(cluster: Cluster, status_command: str | None, accounts_named: bool,
                     status_interval_s: int) -> tuple[str | None, list[str]]:
    """(the status command to use, problems) for the cluster's accounting. Without accounting `sacct` cannot
    tell a job's state: the status command is `squeue`, which needs finished jobs kept for three status
    intervals (MinJobAge) or the plugin falls back to sacct; and an account cannot be checked (the plugin asks
    sacctmgr and stops)."""
    if cluster.accounting:
        return status_command, []
    problems = []
    if accounts_named:
        problems.append("this cluster has no accounting (AccountingStorageType=accounting_storage/none): remove "
                        f"the `slurm_account` line from {SITE_BLOCK}; the executor plugin checks an account with "
                        "sacctmgr, which fails here")
    needed = STATUS_INTERVAL_FACTOR * status_interval_s
    if cluster.min_job_age_s is not None and cluster.min_job_age_s < needed:
        problems.append(f"this cluster has no accounting and forgets a finished job after MinJobAge="
                        f"{cluster.min_job_age_s} s, sooner than the {needed} s `squeue` needs; set "
                        f"`slurm-init-seconds-before-status-checks: {max(1, cluster.min_job_age_s // 3)}` in "
                        f"{SITE_BLOCK}")
    return "squeue", problems


# --- SLURM and Snakemake --------------------------------------------------------------------------------------

Runner = Callable[[list[str]], str]


def run_command(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise PreflightError(f"`{command[0]}` is not installed here: SLURM's client commands (sbatch, squeue, "
                             "scontrol, sinfo) must be on the PATH of the machine that runs Snakemake") from None
    except subprocess.TimeoutExpired:
        raise PreflightError(f"`{' '.join(command)}` did not answer in 60 s: is the controller up "
                             "(`scontrol ping`)?") from None
    if result.returncode != 0:
        raise PreflightError(f"`{' '.join(command)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def query_cluster(run: Runner = run_command) -> Cluster:
    config = run(["scontrol", "show", "config"])
    accounts = None
    if parse_cluster("", "", config).accounting:
        accounts = run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={getpass.getuser()}", "format=account"])
    return parse_cluster(run(["scontrol", "-o", "show", "partition"]), run(["scontrol", "-o", "show", "node"]),
                         config, accounts)


def workflow_requests(workflow, jobs) -> list[Request]:
    """The requests of Snakemake jobs, with which resources the profile's set-resources sets for each rule."""
    overrides = workflow.resource_settings.overwrite_resources or {}
    requests = []
    for job in jobs:
        if job.is_group():
            members = list(job.jobs)
        else:
            members = [job]
        for member in members:
            if member.is_local:
                continue
            requests.append(request_from_resources(
                member.rule.name, dict(member.wildcards_dict), member.threads, dict(member.resources.items()),
                overridden=overrides.get(member.rule.name, {}).keys()))
    return requests


def _slurm_executor(workflow) -> bool:
    plugin = getattr(workflow, "executor_plugin", None)
    return getattr(plugin, "name", None) == "slurm"


def preflight(workflow, log: Callable[[str], None] = print) -> None:
    """The onstart check: raise PreflightError (listing every job that can never run) before any submission."""
    if not _slurm_executor(workflow):
        return
    cluster = query_cluster()
    settings = workflow.executor_settings
    requests = workflow_requests(workflow, workflow.dag.needrun_jobs())
    status, accounting_problems = check_accounting(
        cluster, settings.status_command, any(request.account for request in requests),
        settings.init_seconds_before_status_checks or 40)
    problems = accounting_problems + check(requests, cluster)
    for note in capped_notes(requests):
        log(f"preflight note: {note}")
    if problems:
        raise PreflightError(f"{len(problems)} problem(s): these jobs can never run on this cluster, nothing was "
                             "submitted:\n" + "\n".join(f"  {line}" for line in problems))
    if status != settings.status_command:
        log(f"preflight: this cluster has no accounting (AccountingStorageType=accounting_storage/none), so jobs "
            f"are followed with `{status}` instead of `{settings.status_command}` (`slurm-status-command` in "
            f"{SITE_BLOCK})")
        settings.status_command = status
    log(f"preflight: the {len(requests)} jobs to submit fit this cluster's partitions "
        f"({', '.join(sorted({r.partition or cluster.default_partition or '?' for r in requests}))})")


_SBATCH_FAILED = re.compile(r"SLURM sbatch failed\. The error message was '([^']*)'")


def refusals(log_text: str) -> list[tuple[str, str, str]]:
    """(rule, wildcards, sbatch's message) of each job sbatch refused, from Snakemake's log."""
    found = []
    for block in re.split(r"\n(?=Error in rule )", log_text):
        rule = re.match(r"Error in rule (\w+):", block)
        message = _SBATCH_FAILED.search(block)
        if rule and message:
            wildcards = re.search(r"^\s*wildcards: (.*)$", block, re.MULTILINE)
            found.append((rule.group(1), wildcards.group(1).strip() if wildcards else "",
                          "; ".join(message.group(1).split("\n")).strip()))
    return found


def explain_refusals(workflow, log_files, log: Callable[[str], None] = print) -> None:
    """The onerror hook: for each job sbatch refused, its request against the cluster, as the preflight says it.
    ``log_files``: Snakemake's log file (or a list of them) of this run."""
    if not _slurm_executor(workflow) or not log_files:
        return
    texts = []
    for path in [log_files] if isinstance(log_files, str) else log_files:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                texts.append(handle.read())
        except OSError:
            continue
    refused = refusals("\n".join(texts))
    if not refused:
        return
    lines = [f"sbatch refused {rule}" + (f" ({wildcards})" if wildcards else "") + f": {message}"
             for rule, wildcards, message in refused]
    try:
        cluster = query_cluster()
        rules = {rule for rule, _, _ in refused}
        jobs = [job for job in workflow.dag.jobs if not job.is_group() and job.rule.name in rules]
        requests = workflow_requests(workflow, jobs)
        lines += check(requests, cluster)
    except PreflightError as error:
        lines.append(str(error))
    log("\n".join(lines))
