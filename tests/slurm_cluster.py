"""A real SLURM cluster on this machine for the cluster tests: munge, MariaDB, slurmdbd, slurmctld, slurmd.

Everything lives in one temporary folder (configs, keys, state, logs, the database); the daemons run in the
foreground as children of the test process and are stopped by PID, also when starting one of them fails.
Accounting (slurmdbd with MariaDB) is on, so `sacct` works: the executor plugin's default status command, and
the record the tests read to see what each job asked for. Each node has two fake GPUs (/dev/null, /dev/zero)
of the GPU model the profile asks for, so `--gpus=<model>:N` jobs are scheduled and get CUDA_VISIBLE_DEVICES.

Two shapes, one code path:

- one node (`slurm_cluster`): every daemon on the host's loopback, the node named after this machine;
- several nodes (`slurm_nodes`, `SlurmCluster(..., node_count=2)`): a private network of Linux network
  namespaces. The controller namespace holds MariaDB, slurmdbd, slurmctld and a bridge (10.217.0.1); each
  compute node is a namespace of its own (vt-node1 at 10.217.0.11, vt-node2 at .12, ...) joined to the bridge
  by a veth pair, with its own host name (a UTS namespace) and an /etc/hosts that names every node
  (/etc/netns/<namespace>/hosts, which `ip netns exec` mounts). One slurmd per node namespace. The host's own
  network gets no address: SLURM's commands (sbatch, sacct, ...) are wrappers in <root>/bin that enter the
  controller namespace when called from outside the cluster, so a Snakemake run on the host submits as
  usual. The file system is shared (it is one machine's disk), as on a cluster.

A third shape, `small_slurm_cluster` (`SMALL`), is like the small held-out cluster of issue 25: one node of
2 CPUs and 20 GB whose jobs are held to their --mem by cgroups (task/cgroup, ConstrainRAMSpace), partitions
cpuq and gpuq (4 h limit, untyped GPUs), and no accounting (no MariaDB or slurmdbd; finished jobs are read
from slurmctld's job completion file instead of sacct).

To try a profile change by hand, from the repository root (as root, with the venv active):

    python tests/slurm_cluster.py 2    # nodes (or `small`); prints the PATH to export; Ctrl-C removes it all

Needs root and the packages of `bash envs/install_system_packages.sh --slurm` (which `make test` runs); the
fixtures skip the tests otherwise.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

CLIENTS = ("sbatch", "srun", "sacct", "sacctmgr", "squeue", "scancel", "scontrol", "sinfo")
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", *CLIENTS)
NAMESPACE_TOOLS = ("ip", "nsenter", "unshare")
PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "slurm"
CLUSTER = "vidtune-test"
DB_USER, DB_PASSWORD, DB_NAME = "slurm", "vidtune-test", "slurm_acct_db"
NODE_GPUS = ("/dev/null", "/dev/zero")  # stand-ins for two GPU devices: a multi-GPU request can be scheduled
START_TIMEOUT_S = 90
SUBNET = "10.217.0"  # inside the test's own network namespaces only: never routed to or from the host


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    netns: str | None  # the node's network namespace; None: the host's own network (the one-node cluster)


@dataclass(frozen=True)
class Shape:
    """What the cluster's nodes and partitions are like, and whether it keeps accounting."""

    cpus: int = 8  # more than this machine has (SlurmdParameters=config_overrides): small jobs run side by side
    memory_mb: int = 128_000  # declared, not enforced
    gpu_types: bool = True  # the nodes' gres name the profile's GPU model; False: untyped `gpu:2`
    accounting: bool = True  # MariaDB + slurmdbd, so `sacct` answers; False: AccountingStorageType=none
    enforce_memory: bool = False  # task/cgroup with ConstrainRAMSpace: a job past its --mem is killed
    max_time: dict = field(default_factory=dict)  # partition -> MaxTime; INFINITE where not named


# Like the small held-out cluster of issue 25: nodes of 2 CPUs and 20 GB with memory enforced, two partitions
# (cpuq, gpuq with a 4 h limit and untyped GPUs), no accounting database.
SMALL_SITE_PARTITIONS = ("cpuq", "gpuq")
SMALL = Shape(cpus=2, memory_mb=20_000, gpu_types=False, accounting=False, enforce_memory=True,
              max_time={"gpuq": "4:00:00"})


class ClusterError(RuntimeError):
    """A daemon did not come up; the message carries the tail of its log."""


@dataclass
class Site:
    """The site-specific names a profile uses; the test cluster is built to match them."""

    account: str
    cpu_partition: str
    gpu_partition: str
    gpu_model: str | None  # None: the profile takes any GPU type

    @classmethod
    def from_profile(cls, profile: Path) -> "Site":
        """The site block of profiles/slurm: default account and partition, the train step's GPU settings."""
        settings = yaml.safe_load((profile / "config.yaml").read_text())
        defaults, gpu_step = settings["default-resources"], settings["set-resources"]["train"]
        return cls(account=str(defaults["slurm_account"]), cpu_partition=str(defaults["slurm_partition"]),
                   gpu_partition=str(gpu_step.get("slurm_partition", defaults["slurm_partition"])),
                   gpu_model=gpu_step.get("gpu_model"))

    @property
    def gres(self) -> str:
        return f"gpu:{self.gpu_model}" if self.gpu_model else "gpu"


@dataclass
class SlurmCluster:
    root: Path
    site: Site
    node_count: int = 1
    shape: Shape = field(default_factory=Shape)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        host = socket.gethostname().split(".")[0]
        if self.node_count == 1:
            self.controller = Node(host, "127.0.0.1", None)
            self.nodes = [self.controller]
        else:
            prefix = f"vidtune-{os.getpid()}"  # unique per test process; removed by stop()
            self.controller = Node(host, f"{SUBNET}.1", f"{prefix}-ctl")
            self.nodes = [Node(f"vt-node{index}", f"{SUBNET}.{10 + index}", f"{prefix}-node{index}")
                          for index in range(1, self.node_count + 1)]

    @property
    def node(self) -> str:
        """The first compute node."""
        return self.nodes[0].name

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment in which SLURM's commands (sbatch, sacct, ...) talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf),
                "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    # --- Records -------------------------------------------------------------------------------------------

    def jobs(self) -> list[dict[str, str]]:
        """Every job of this cluster as slurmdbd recorded it (allocations only, no steps); without accounting,
        as slurmctld's job completion log has them (JobId, JobState, Partition, NodeList, ...)."""
        if not self.shape.accounting:
            completions = self.root / "logs" / "jobcomp.log"
            lines = completions.read_text().splitlines() if completions.exists() else []
            return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines]
        fields = "JobID,JobName,State,ExitCode,Partition,Account,ReqTRES,AllocTRES,Comment,WorkDir,NodeList"
        output = self.command("sacct", "-X", "--allusers", "--parsable2", f"--format={fields}",
                              "--starttime", "now-1days", "--endtime", "now")
        return list(csv.DictReader(output.splitlines(), delimiter="|"))

    # --- Starting ------------------------------------------------------------------------------------------

    def start(self) -> None:
        for folder in ("etc", "munge", "mysql", "state/ctld", "logs", "run",
                       *(f"state/d/{node.name}" for node in self.nodes)):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # munge and mysql must reach their own folders below
        self._write_clients()
        if self.controller.netns:
            self._create_network()
        ports = free_ports(4)
        self.mysql_port, self.dbd_port, self.ctld_port, self.slurmd_port = ports
        self._start_munge()
        if self.shape.accounting:
            self._start_mariadb()
        self._write_configs()
        if self.shape.accounting:
            self._start("slurmdbd", [*self.on_controller, "slurmdbd", "-D"],
                        ready=lambda: self.port_open(self.dbd_port))
            self.command("sacctmgr", "-i", "add", "cluster", CLUSTER)
            self.command("sacctmgr", "-i", "add", "account", self.site.account, f"Cluster={CLUSTER}")
            self.command("sacctmgr", "-i", "add", "user", "root", f"Account={self.site.account}",
                         f"Cluster={CLUSTER}")
        self._start("slurmctld", [*self.on_controller, "slurmctld", "-D", "-f", str(self.conf)],
                    ready=lambda: self.command("scontrol", "ping", check=False).count("UP") > 0)
        for node in self.nodes:
            slurmd = ["slurmd", "-D", "-f", str(self.conf), "-N", node.name]
            if node.netns:
                # The node's own network, host name (its jobs see `hostname` = the node) and /etc/hosts. Not
                # `ip netns exec`, which would also mount a /sys without the cgroup file system slurmd needs.
                slurmd = ["nsenter", f"--net=/run/netns/{node.netns}", "unshare", "--uts", "--mount", "sh", "-c",
                          f'mount --bind /etc/netns/{node.netns}/hosts /etc/hosts && hostname {node.name} && '
                          'exec "$@"', "slurmd", *slurmd]
            self._start(f"slurmd-{node.name}", slurmd, ready=lambda node=node: self.node_state(node.name) == "idle")

    @property
    def on_controller(self) -> list[str]:
        """The prefix that runs a command in the controller's network."""
        return ["ip", "netns", "exec", self.controller.netns] if self.controller.netns else []

    def port_open(self, port: int) -> bool:
        if not self.controller.netns:
            return port_open(port)
        probe = [*self.on_controller, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0

    def node_state(self, node: str | None = None) -> str:
        return self.command("sinfo", "-h", "-n", node or self.node, "-N", "-o", "%t",
                            check=False).strip().split("\n")[0]

    def _write_clients(self) -> None:
        """SLURM's commands as wrappers that come first on the PATH (also the PATH the jobs inherit).

        Inside a job the plugin starts the rule with `srun` but removes SLURM_CONF from srun's environment
        (a real cluster has its config at the default path), so the wrappers name this cluster's config. On a
        several-node cluster, a command started outside the cluster's namespaces (the test, the Snakemake head
        process) enters the controller's namespace; inside a node (a job's own srun) it runs where it is."""
        folder = self.root / "bin"
        folder.mkdir(exist_ok=True)
        for name in CLIENTS:
            real = shutil.which(name)
            enter = (f'[ -z "$(ip netns identify 2>/dev/null)" ] && exec ip netns exec {self.controller.netns} '
                     f'{real} "$@"\n' if self.controller.netns else "")
            (folder / name).write_text(f"#!/bin/sh\nexport SLURM_CONF={self.conf}\n{enter}exec {real} \"$@\"\n")
            (folder / name).chmod(0o755)

    def _create_network(self) -> None:
        """The controller's namespace with a bridge, and one namespace per node joined to it by a veth pair."""
        control = self.controller.netns

        def ip(*args: str) -> None:
            subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

        self.namespaces = [control]
        ip("netns", "add", control)
        ip("-n", control, "link", "set", "lo", "up")
        ip("-n", control, "link", "add", "br0", "type", "bridge")
        ip("-n", control, "addr", "add", f"{self.controller.address}/24", "dev", "br0")
        ip("-n", control, "link", "set", "br0", "up")
        for index, node in enumerate(self.nodes, 1):
            self.namespaces.append(node.netns)
            ip("netns", "add", node.netns)
            ip("-n", node.netns, "link", "set", "lo", "up")
            ip("-n", control, "link", "add", f"veth{index}", "type", "veth", "peer", "name", "eth0",
               "netns", node.netns)
            ip("-n", control, "link", "set", f"veth{index}", "master", "br0", "up")
            ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            ip("-n", node.netns, "link", "set", "eth0", "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{node.address} {node.name}\n"
                                                  for node in [self.controller, *self.nodes])
        for namespace in self.namespaces:
            folder = Path("/etc/netns") / namespace
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(hosts)

    def _start_munge(self) -> None:
        folder = self.root / "munge"
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(folder, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        folder.chmod(0o755)  # clients reach the socket here; the key itself is readable by munge only
        self.munge_socket = folder / "munge.socket"
        self._start("munged", ["munged", "--foreground", f"--key-file={key}", f"--socket={self.munge_socket}",
                               f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
                               f"--seed-file={folder / 'munged.seed'}"],
                    user="munge", log=folder / "munged.log", ready=self.munge_socket.exists)

    def _start_mariadb(self) -> None:
        folder = self.root / "mysql"
        data = folder / "data"
        shutil.chown(folder, "mysql", "mysql")
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        init = folder / "init.sql"
        init.write_text(f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';\n"
                        f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';\n")
        shutil.chown(init, "mysql", "mysql")
        log = folder / "mariadb.log"
        # Durability is worth nothing for a database that lives for one test session.
        self._start("mariadbd", [*self.on_controller, "mariadbd", "--no-defaults", f"--datadir={data}", "--user=mysql",
                                 f"--socket={folder / 'mysqld.sock'}", f"--pid-file={folder / 'mysqld.pid'}",
                                 f"--port={self.mysql_port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                                 f"--log-error={log}", f"--init-file={init}", "--skip-log-bin",
                                 "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
                                 "--innodb-doublewrite=0", "--sync-binlog=0"],
                    log=log, ready=lambda: self.port_open(self.mysql_port))

    def _write_configs(self) -> None:
        etc, state, logs, run = (self.root / name for name in ("etc", "state", "logs", "run"))
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        site, shape = self.site, self.shape
        gres = site.gres if shape.gpu_types else "gpu"
        names = ",".join(node.name for node in self.nodes)
        node_lines = "".join(f"NodeName={node.name} NodeAddr={node.address} CPUs={shape.cpus} "
                             f"RealMemory={shape.memory_mb} Gres={gres}:{len(NODE_GPUS)} State=UNKNOWN\n"
                             for node in self.nodes)
        if shape.accounting:
            accounting = f"""\
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.dbd_port}
# Connections to slurmdbd take their munge socket from here, not from AuthInfo.
AccountingStoragePass={self.munge_socket}
AccountingStorageTRES=gres/gpu{f',gres/{site.gres}' if site.gpu_model and shape.gpu_types else ''}
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
"""
        else:  # no slurmdbd: sacct cannot answer; finished jobs are written to a text file instead
            accounting = f"AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/filetxt\n" \
                         f"JobCompLoc={logs / 'jobcomp.log'}\n"
        if shape.enforce_memory:  # the job's cgroup (v1 memory controller) holds it to its --mem
            tasks = "ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup\n"
            (etc / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n"
                                             "ConstrainRAMSpace=yes\nConstrainSwapSpace=yes\n"
                                             "AllowedSwapSpace=0\nConstrainCores=no\nConstrainDevices=no\n")
        else:
            tasks = "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"

        def partition(name: str, default: bool) -> str:
            return (f"PartitionName={name} Nodes={names}{' Default=YES' if default else ''} "
                    f"MaxTime={shape.max_time.get(name, 'INFINITE')} State=UP\n")

        self.conf.write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost={self.controller.name}({self.controller.address})
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
{auth}CredType=cred/munge
StateSaveLocation={state / 'ctld'}
SlurmdSpoolDir={state / 'd' / '%n'}
SlurmctldPidFile={run / 'slurmctld.pid'}
SlurmdPidFile={run / 'slurmd-%n.pid'}
SlurmctldLogFile={logs / 'slurmctld.log'}
SlurmdLogFile={logs / 'slurmd-%n.log'}
{tasks}MpiDefault=none
ReturnToService=2
MailProg=/bin/true
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default every job is given the whole node's memory and the jobs run one at a time.
DefMemPerCPU=1000
# squeue keeps finished jobs this long; the plugin's squeue status command needs >= 120 s.
MinJobAge=300
SlurmdParameters=config_overrides
GresTypes=gpu
{accounting}JobAcctGatherType=jobacct_gather/none
{node_lines}{partition(site.cpu_partition, True)}""" + (partition(site.gpu_partition, False)
                                                        if site.gpu_partition != site.cpu_partition else ""))
        # A count-only gres.conf line (no File) leaves the node INVAL; harmless devices stand in for GPUs.
        gpu_type = f" Type={site.gpu_model}" if site.gpu_model and shape.gpu_types else ""
        (etc / "gres.conf").write_text(f"NodeName={names} Name=gpu{gpu_type} File={','.join(NODE_GPUS)}\n")
        dbd = etc / "slurmdbd.conf"
        dbd.write_text(f"""\
{auth}DbdHost=localhost
DbdPort={self.dbd_port}
SlurmUser=root
PidFile={run / 'slurmdbd.pid'}
LogFile={logs / 'slurmdbd.log'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.mysql_port}
StorageUser={DB_USER}
StoragePass={DB_PASSWORD}
StorageLoc={DB_NAME}
""")
        dbd.chmod(0o600)  # slurmdbd refuses a config that others can read (it holds the password)

    def _start(self, name: str, command: list[str], *, ready, user: str | None = None,
               log: Path | None = None) -> None:
        log = log or self.root / "logs" / f"{name}.log"
        output = open(self.root / "logs" / f"{name}.out", "ab")
        process = subprocess.Popen(command, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, user=user, start_new_session=True)
        output.close()
        self.processes[name] = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"{name} exited with {process.returncode} while starting:\n"
                                   f"{self.log_tail(name, log)}")
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)
        raise ClusterError(f"{name} not ready after {START_TIMEOUT_S} s:\n{self.log_tail(name, log)}")

    def log_tail(self, name: str, log: Path | None = None, lines: int = 30) -> str:
        texts = []
        for path in {log or self.root / "logs" / f"{name}.log", self.root / "logs" / f"{name}.out"}:
            if path.exists():
                texts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def logs(self) -> str:
        """The tails of every daemon's log, for a failing test's message."""
        return "\n".join(self.log_tail(name) for name in
                         ("slurmctld", *(f"slurmd-{node.name}" for node in self.nodes), "slurmdbd"))

    # --- Stopping ------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel what is left of the jobs, then stop the daemons in reverse order, by PID."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.command("scancel", "--user=root", check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.command("squeue", "-h", check=False).strip():
                time.sleep(0.5)
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self.processes.clear()
        for namespace in getattr(self, "namespaces", []):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
        self.namespaces = []


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def missing_requirements(node_count: int = 1) -> str | None:
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (its daemons run as root, munge and mysql)"
    missing = [name for name in (*DAEMONS, *(NAMESPACE_TOOLS if node_count > 1 else ()))
               if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run `bash envs/install_system_packages.sh --slurm`"
    return None


def start_cluster(site: Site, node_count: int = 1, shape: Shape = Shape()) -> Iterator[SlurmCluster]:
    """A running cluster, stopped and removed afterwards (also when starting it failed)."""
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="vidtune-slurm-")), site, node_count, shape)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One cluster for the session, with the partitions, account and GPU model that profiles/slurm names."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    yield from start_cluster(Site.from_profile(PROFILE))


@pytest.fixture(scope="session")
def slurm_nodes() -> Iterator[SlurmCluster]:
    """One two-node cluster (network namespaces) for the session, built like `slurm_cluster`."""
    reason = missing_requirements(2)
    if reason:
        pytest.skip(reason)
    yield from start_cluster(Site.from_profile(PROFILE), node_count=2)


@pytest.fixture(scope="session")
def small_slurm_cluster() -> Iterator[SlurmCluster]:
    """One cluster like the small held-out one (SMALL: 2 CPUs, 20 GB enforced, cpuq/gpuq, no accounting)."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    yield from start_cluster(Site("none", *SMALL_SITE_PARTITIONS, gpu_model=None), shape=SMALL)


def main() -> None:
    """Start a cluster of argv[1] nodes (default 1), or `small` (SMALL), for trying a profile by hand; Ctrl-C
    stops it."""
    small = sys.argv[1:2] == ["small"]
    node_count = 1 if small or len(sys.argv) < 2 else int(sys.argv[1])
    reason = missing_requirements(node_count)
    if reason:
        raise SystemExit(reason)
    site = Site("none", *SMALL_SITE_PARTITIONS, gpu_model=None) if small else Site.from_profile(PROFILE)
    for cluster in start_cluster(site, node_count, SMALL if small else Shape()):
        print(f"cluster in {cluster.root}; in another shell:\n"
              f"  export PATH={cluster.root / 'bin'}:$PATH SLURM_CONF={cluster.conf}\n"
              f"  snakemake --profile profiles/slurm ...\nCtrl-C stops it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
