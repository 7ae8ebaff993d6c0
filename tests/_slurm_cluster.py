"""A real, private SLURM cluster on 127.0.0.1 for tests: munged, slurmctld and one slurmd.

Debian's packages (``slurmctld slurmd slurm-client munge``) are installed with apt when missing
and the process runs as root (as CI does); otherwise the caller gets a reason to skip.
Everything lives under one temporary folder: the munge key and socket, ``slurm.conf`` with free
ports, state, spool, logs and pid files. Each daemon runs in the foreground as a child of the
test process and is stopped by its pid, also when the test fails (use it as a context manager
or through a fixture with a ``finally``).

The configuration follows docs/cluster.md: ``proctrack/linuxproc`` and ``task/none``
(the cgroup defaults drain the node while jobs still report COMPLETED), ``select/cons_tres`` with
``CR_Core`` (so array tasks run side by side), and a private ``AuthInfo=socket=``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if _which(name) is None]


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which a non-login PATH may lack.
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return shutil.which(name, path=path)


class InstallError(RuntimeError):
    """Running as root with apt-get, the packages could still not be installed."""


def ensure_installed() -> str | None:
    """Install Debian's SLURM and munge packages if any binary is missing.

    Returns
    -------
    str or None
        None when every binary is available (after installing if needed); else the reason the
        packages cannot be installed here (not root, or no apt-get), for ``pytest.skip``.

    Raises
    ------
    InstallError
        Root with apt-get, and ``apt-get update`` / ``install`` failed or left binaries missing:
        a broken environment, which should fail the test rather than skip it.
    """
    if not missing_binaries():
        return None
    if os.geteuid() != 0:
        return (
            f"SLURM binaries {missing_binaries()} are missing and the tests are not running as root, "
            f"so they cannot be installed: run `apt-get install {' '.join(PACKAGES)}` as root"
        )
    if shutil.which("apt-get") is None:
        return f"SLURM binaries {missing_binaries()} are missing and there is no apt-get to install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise InstallError(
                f"`{' '.join(cmd)}` failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )
    if missing_binaries():
        raise InstallError(f"installed {PACKAGES} but {missing_binaries()} are still missing")
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


SLURM_CONF = """\
# Private single-node SLURM cluster written by tests/_slurm_cluster.py.
ClusterName={cluster_name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """munged + slurmctld + slurmd, private to ``root``; ``env`` points clients at it.

    Parameters
    ----------
    root : Path
        An empty folder for keys, sockets, configuration, state and logs.
    cpus : int
        CPUs of the single node ``localhost`` (at most the machine's).
    """

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = max(1, min(cpus, os.cpu_count() or 1))
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.env["PATH"] = self.env.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 30.0) -> None:
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        self._run(["mungekey", "--create", "--keyfile", str(key)])
        os.chmod(key, 0o600)
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(
            SLURM_CONF.format(
                cluster_name=f"t{os.getpid()}",
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                user=getpass.getuser(),
                munge_socket=self.munge_socket,
                root=self.root,
                cpus=self.cpus,
                memory_mb=512,
            )
        )
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                "--socket",
                str(self.munge_socket),
                "--key-file",
                str(key),
                "--pid-file",
                str(self.root / "run" / "munged.pid"),
                "--seed-file",
                str(self.root / "munge" / "munged.seed"),
                "--log-file",
                str(self.root / "log" / "munged.log"),
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged to create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
        self._wait(
            lambda: self._ok(["scontrol", "ping"]) and "UP" in self._out(["scontrol", "ping"]),
            timeout_s,
            "slurmctld to answer `scontrol ping`",
        )
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", "localhost"])
        self._wait(self._node_ready, timeout_s, "node localhost to become idle in `sinfo`")

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged by pid (TERM, then KILL)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(
                ["scancel", "--full", "--user", getpass.getuser()],
                env=self.env,
                capture_output=True,
                timeout=30,
                check=False,
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.job_ids():
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    # -- queries ----------------------------------------------------------------------------
    def job_ids(self) -> list[str]:
        """Ids of every job still in the queue (pending or running), array tasks listed one by one."""
        done = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            return ["<squeue failed>"]
        return done.stdout.split()

    def queue(self) -> list[tuple[str, str, str]]:
        """(job id, state, reason) of every queued job, array tasks one by one."""
        done = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i|%T|%r"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [tuple(line.strip().split("|", 2)) for line in done.stdout.splitlines() if line.strip()]

    def wait_until(self, ready, timeout_s: float, what: str) -> None:
        """Poll ``ready()`` until true; TimeoutError with the daemons' log tails if it never is."""
        self._wait(ready, timeout_s, what)

    def wait_queue_empty(self, timeout_s: float) -> None:
        """Wait until no job is pending or running; raise TimeoutError with the logs' tails if not."""
        self._wait(lambda: not self.job_ids(), timeout_s, "the SLURM queue to drain")

    def log_tail(self, chars: int = 3000) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*.log")):
            out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    # -- helpers ----------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - closed with the child
        try:
            self.procs[name] = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def _node_ready(self) -> bool:
        state = self._out(["sinfo", "--noheader", "--Node", "--format=%T"]).strip().lower()
        return state in ("idle", "mixed", "allocated")

    def _ok(self, cmd: list[str]) -> bool:
        return subprocess.run(cmd, env=self.env, capture_output=True, timeout=30, check=False).returncode == 0

    def _out(self, cmd: list[str]) -> str:
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=30, check=False
        ).stdout

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()}")

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} while waiting for {what}\n"
                        f"{self._stdout_tail(name)}\n{self.log_tail()}"
                    )
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.log_tail()}")

    def _stdout_tail(self, name: str) -> str:
        path = self.root / "log" / f"{name}.stdout"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
