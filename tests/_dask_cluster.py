"""A real dask cluster for tests: one ``dask scheduler`` and N ``dask worker`` processes on 127.0.0.1.

The scheduler listens on a free port (``--port 0``) and writes its address to a scheduler file;
the workers join through that file with one thread each. As in a default deployment each
``dask worker`` is a nanny that starts the worker process proper (with one BLAS/OpenMP thread,
dask's default ``distributed.nanny.pre-spawn-environ``); :attr:`DaskCluster.worker_pids` are the
pids of those worker processes, as they report them, so a test can compare them with the pids
that ran tasks. Workers get ``PYTHONPATH`` pointing at the repository so they can import the
project's task functions by module name. Every process is stopped by its pid (TERM to the
scheduler and the nannies, then KILL to anything left, worker processes included), also when
the test fails (use it as a context manager or from a fixture with ``finally``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _dask_command(python: str) -> list[str]:
    """The ``dask`` CLI next to ``python`` (a venv's), else ``python -m dask``."""
    cli = Path(python).parent / "dask"
    return [str(cli)] if cli.exists() else [python, "-m", "dask"]


class DaskCluster:
    """``dask scheduler`` + ``n_workers`` ``dask worker`` processes, private to ``root``.

    Parameters
    ----------
    root : Path
        An empty folder for the scheduler file, worker directories and logs.
    repo : Path
        Put on the workers' ``PYTHONPATH`` so they import the project.
    n_workers : int
        Worker processes, one thread each.
    python : str
        The interpreter whose ``dask`` CLI is used (the test's own by default).
    env : dict, optional
        More environment for the scheduler and the workers (e.g. dask configuration variables).
    """

    def __init__(
        self,
        root: Path,
        repo: Path,
        n_workers: int = 2,
        python: str = sys.executable,
        env: dict | None = None,
    ):
        self.root = Path(root)
        self.n_workers = n_workers
        self.scheduler_file = self.root / "scheduler.json"
        self.cmd = _dask_command(python)
        self.env = dict(os.environ)
        path = [str(repo), self.env.get("PYTHONPATH", "")]
        self.env["PYTHONPATH"] = os.pathsep.join(path).rstrip(os.pathsep)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.update(env or {})
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []  # the nannies
        self.worker_pids: set[int] = set()  # the worker processes the nannies started

    @property
    def address(self) -> str:
        """The scheduler's ``tcp://127.0.0.1:PORT``."""
        return json.loads(self.scheduler_file.read_text())["address"]

    def __enter__(self) -> DaskCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> None:
        (self.root / "log").mkdir(parents=True, exist_ok=True)
        self.scheduler = self._spawn(
            "scheduler",
            [
                *self.cmd,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(self.scheduler_file),
            ],
        )
        self._wait(self._scheduler_file_ready, timeout_s, "the scheduler file")
        for i in range(self.n_workers):
            self.workers.append(
                self._spawn(
                    f"worker-{i}",
                    [
                        *self.cmd,
                        "worker",
                        "--scheduler-file",
                        str(self.scheduler_file),
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        f"worker-{i}",
                        "--local-directory",
                        str(self.root / f"worker-{i}"),
                    ],
                )
            )
        self._wait(
            lambda: self.connected_workers() >= self.n_workers,
            timeout_s,
            f"{self.n_workers} workers to connect",
        )
        self.worker_pids = set(self.worker_pids_by_address().values())

    def connected_workers(self) -> int:
        """Workers the scheduler knows, asked through a short-lived client."""
        from distributed import Client

        with Client(self.address, timeout=10) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])

    def worker_pids_by_address(self) -> dict[str, int]:
        """``{worker address: pid}`` as the workers report it themselves."""
        from distributed import Client

        with Client(self.address, timeout=10) as client:
            return client.run(os.getpid)

    def stop(self) -> None:
        """Stop the nannies, then the scheduler, by pid (TERM, then KILL after 15 s), then any worker left.

        Workers first: with the scheduler gone they spend seconds trying to reconnect.
        """
        for group in (self.workers, [self.scheduler]):
            for proc in group:
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                if proc is None:
                    continue
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        for pid in self.worker_pids:  # normally gone with their nanny
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.workers, self.scheduler, self.worker_pids = [], None, set()

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
            for p in sorted((self.root / "log").glob("*.log"))
        )

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(self.root / "log" / f"{name}.log", "wb") as log:
            return subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
            )

    def _scheduler_file_ready(self) -> bool:
        try:
            return bool(json.loads(self.scheduler_file.read_text()).get("address"))
        except (OSError, ValueError):
            return False

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in [self.scheduler, *self.workers]:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"a dask process exited with {proc.returncode} while waiting for "
                        f"{what}: {proc.args}\n{self.log_tail()}"
                    )
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.log_tail()}")


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
