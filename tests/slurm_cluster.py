"""A real one-node SLURM cluster on localhost for the cluster tests: munge, MariaDB, slurmdbd, slurmctld, slurmd.

Everything lives in one temporary folder (configs, keys, state, logs, the database); the daemons run in the
foreground as children of the test process and are stopped by PID, also when starting one of them fails.
Accounting (slurmdbd with MariaDB) is on, so `sacct` works: the executor plugin's default status command, and
the record the tests read to see what each job asked for. The node has two fake GPUs (/dev/null, /dev/zero) of
the GPU model the profile asks for, so `--gpus=<model>:N` jobs are scheduled and get CUDA_VISIBLE_DEVICES.

Needs root and the packages of `bash envs/install_system_packages.sh --slurm` (which `make test` runs); the
fixture skips the test otherwise.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "srun", "sacct",
           "sacctmgr", "squeue", "scancel", "scontrol", "sinfo")
PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "slurm"
CLUSTER = "vidtune-test"
DB_USER, DB_PASSWORD, DB_NAME = "slurm", "vidtune-test", "slurm_acct_db"
NODE_CPUS = 8  # more than this machine has (SlurmdParameters=config_overrides): small jobs run side by side
NODE_MEMORY_MB = 128_000  # declared, not enforced: the merge step asks for 32 GB
NODE_GPUS = ("/dev/null", "/dev/zero")  # stand-ins for two GPU devices: a multi-GPU request can be scheduled
START_TIMEOUT_S = 90


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
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

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
        """Every job of this cluster as slurmdbd recorded it (allocations only, no steps)."""
        fields = "JobID,JobName,State,ExitCode,Partition,Account,ReqTRES,AllocTRES,Comment,WorkDir"
        output = self.command("sacct", "-X", "--allusers", "--parsable2", f"--format={fields}",
                              "--starttime", "now-1days", "--endtime", "now")
        return list(csv.DictReader(output.splitlines(), delimiter="|"))

    # --- Starting ------------------------------------------------------------------------------------------

    def start(self) -> None:
        for folder in ("etc", "munge", "mysql", "state/ctld", "state/d", "logs", "run"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # munge and mysql must reach their own folders below
        self._write_srun()
        ports = free_ports(4)
        self.mysql_port, self.dbd_port, self.ctld_port, self.slurmd_port = ports
        self._start_munge()
        self._start_mariadb()
        self._write_configs()
        self._start("slurmdbd", ["slurmdbd", "-D"], ready=lambda: port_open(self.dbd_port))
        self.command("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self.command("sacctmgr", "-i", "add", "account", self.site.account, f"Cluster={CLUSTER}")
        self.command("sacctmgr", "-i", "add", "user", "root", f"Account={self.site.account}",
                     f"Cluster={CLUSTER}")
        self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)],
                    ready=lambda: self.command("scontrol", "ping", check=False).count("UP") > 0)
        self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node],
                    ready=lambda: self.node_state() == "idle")

    def node_state(self) -> str:
        return self.command("sinfo", "-h", "-N", "-o", "%t", check=False).strip().split("\n")[0]

    def _write_srun(self) -> None:
        """Inside a job the plugin starts the rule with `srun` but removes SLURM_CONF from srun's environment
        (a real cluster has its config at the default path), so srun finds this cluster through a wrapper
        that comes first on the PATH the jobs inherit."""
        srun = self.root / "bin" / "srun"
        srun.parent.mkdir(exist_ok=True)
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which('srun')} \"$@\"\n")
        srun.chmod(0o755)

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
        self._start("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=mysql",
                                 f"--socket={folder / 'mysqld.sock'}", f"--pid-file={folder / 'mysqld.pid'}",
                                 f"--port={self.mysql_port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                                 f"--log-error={log}", f"--init-file={init}", "--skip-log-bin",
                                 "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
                                 "--innodb-doublewrite=0", "--sync-binlog=0"],
                    log=log, ready=lambda: port_open(self.mysql_port))

    def _write_configs(self) -> None:
        etc, state, logs, run = (self.root / name for name in ("etc", "state", "logs", "run"))
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        site = self.site
        self.conf.write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
{auth}CredType=cred/munge
StateSaveLocation={state / 'ctld'}
SlurmdSpoolDir={state / 'd'}
SlurmctldPidFile={run / 'slurmctld.pid'}
SlurmdPidFile={run / 'slurmd.pid'}
SlurmctldLogFile={logs / 'slurmctld.log'}
SlurmdLogFile={logs / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
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
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.dbd_port}
# Connections to slurmdbd take their munge socket from here, not from AuthInfo.
AccountingStoragePass={self.munge_socket}
AccountingStorageTRES=gres/gpu{f',gres/{site.gres}' if site.gpu_model else ''}
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} \
Gres={site.gres}:{len(NODE_GPUS)} State=UNKNOWN
PartitionName={site.cpu_partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""" + (f"PartitionName={site.gpu_partition} Nodes={self.node} MaxTime=INFINITE State=UP\n"
       if site.gpu_partition != site.cpu_partition else ""))
        # A count-only gres.conf line (no File) leaves the node INVAL; harmless devices stand in for GPUs.
        gpu_type = f" Type={site.gpu_model}" if site.gpu_model else ""
        (etc / "gres.conf").write_text(f"NodeName={self.node} Name=gpu{gpu_type} File={','.join(NODE_GPUS)}\n")
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
        return "\n".join(self.log_tail(name) for name in ("slurmctld", "slurmd", "slurmdbd"))

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


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (its daemons run as root, munge and mysql)"
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run `bash envs/install_system_packages.sh --slurm`"
    return None


def start_cluster(site: Site) -> Iterator[SlurmCluster]:
    """A running cluster, stopped and removed afterwards (also when starting it failed)."""
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="vidtune-slurm-")), site)
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
