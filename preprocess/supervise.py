"""Worker processes that may die or hang, watched from outside by the process that started them.

A decoder that crashes (SIGSEGV, SIGABRT), the kernel's OOM killer (SIGKILL) or a decode stuck
inside C code must cost only the work that was in flight, never the whole run. joblib's process
pool cannot give that: a worker killed by a signal raises ``TerminatedWorkerError`` and aborts
every task, and its ``SIGALRM`` time limit acts only when control comes back to Python. So the
features stage and ``train predict`` run their decoding in processes of a :class:`Pool`:

- each worker is a fresh interpreter (``python -c``, started with ``subprocess``: it works
  inside a dask worker, which is a daemonic process that ``multiprocessing`` refuses to let
  have children), one BLAS/OpenMP thread (as joblib's pool and dask's nannies give, unless the
  environment says otherwise), SIGINT ignored (the pool stops it), and SIGKILLed by the kernel
  if the process that started it dies (``PR_SET_PDEATHSIG``), so none outlives the run;
- a job is ``function(*args)`` named by module and function; a job that works through items
  (tracks) announces each one as it starts it (``beat(item)``; ``beat(None)``: between items),
  so the pool knows what every worker is doing;
- the pool kills a worker whose current item has run longer than the time limit (SIGKILL,
  from outside: nothing in the worker needs to cooperate) and reports it as :class:`Died`
  with ``timed_out``; a worker that dies on its own is reported with its signal (or exit
  status) and the item it was on; the pool starts a new worker for the next job;
- :func:`run_isolated` runs one call in a forked child of a worker (an isolated process per
  item, cheap because the worker has imported everything already) and says whether it died.

What a job returns, and what a failed item means, is the caller's business: the pool moves
opaque values (pickled over a private socket pair between this process and the workers it
started, as joblib and dask move theirs). The retry rules live with the callers:
``preprocess.shard_runs`` (features: retry a shard once, then isolate its tracks) and
:func:`ordered_map` (predict: retry a file once).

Test-only fault hook: ``FMA_GENRE_TEST_FAULTS="123:segv,456:kill,789:hang"`` makes the process
that decodes track 123 (or a file whose stem is ``123`` / ``000123``) send itself SIGSEGV, and so
on (:func:`inject_fault`; the modes are in :data:`FAULT_MODES`). The tests use it to send real
signals to real processes; unset (always, outside the tests) it does nothing.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

#: Environment variable of the test-only fault hook (see the module doc and :func:`inject_fault`).
FAULTS_ENV = "FMA_GENRE_TEST_FAULTS"
#: What the hook can make the decoding process do.
FAULT_MODES = {
    "segv": "send itself SIGSEGV (a decoder crash)",
    "abort": "send itself SIGABRT (a failed assertion in C)",
    "kill": "send itself SIGKILL (the OOM killer)",
    "hang": "block SIGALRM and sleep forever (a decode stuck inside C code)",
    "killparent": "SIGKILL the process that started it, then itself (an OOM kill of the whole command "
    "or SLURM task)",
}
# Thread counts a worker gets unless the environment sets them (one BLAS/OpenMP thread per process).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Job:
    """``function(*args)`` in a worker.

    Attributes
    ----------
    key : object
        The caller's name for the job (returned in its event).
    function : str
        ``"module:function"``, importable in a fresh interpreter.
    args : tuple
        Plain, picklable arguments.
    beats : bool
        Pass ``beat=`` to the function: it announces each item it starts.
    item : object, optional
        For a one-item job: announced (and timed) for the whole call.
    fresh : bool
        Run it in a newly started worker, not one that ran other jobs (a retry).
    setup : tuple, optional
        ``("module:function", args)``: called once per worker process (per distinct setup) before
        the job's item is announced, so one-time costs are not timed.
    """

    key: Any
    function: str
    args: tuple = ()
    beats: bool = False
    item: Any = None
    fresh: bool = False
    setup: tuple | None = None


@dataclass(frozen=True)
class Done:
    """A job that returned ``value`` in the worker ``pid``."""

    job: Job
    value: Any
    pid: int


@dataclass(frozen=True)
class Died:
    """A job whose worker died (or was killed for running past the time limit).

    Attributes
    ----------
    item : object or None
        The item in flight (the last one the job announced), None between items.
    signal : str or None
        The signal that ended the worker (``"SIGSEGV"``), None if it exited with a status.
    exit_code : int or None
        The worker's exit status when no signal ended it.
    timed_out : float or None
        The time limit in seconds when the pool killed it for running past it.
    """

    job: Job
    item: Any
    signal: str | None
    exit_code: int | None
    timed_out: float | None
    pid: int

    def how(self) -> str:
        """``timed out after 120 s``, ``SIGSEGV`` or ``exit status 3``."""
        if self.timed_out is not None:
            return f"timed out after {self.timed_out:g} s"
        return self.signal or f"exit status {self.exit_code}"


class WorkerError(RuntimeError):
    """A job raised an exception that could not be sent back as itself; the message holds its traceback."""


# --------------------------------------------------------------------------- the worker side


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent ``parent`` dies (Linux); exit now if it
    already has.

    The setting is per process and cleared by fork, so every worker and isolated child calls it.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _resolve(name: str) -> Callable:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _error_message(exc: BaseException) -> tuple:
    """``("error", exc)`` if ``exc`` survives pickling, else ``("error", WorkerError(traceback))``."""
    try:
        pickle.dumps(exc)
        return ("error", exc, "".join(traceback.format_exception(exc)))
    except Exception:  # an exception that does not pickle: its text
        text = "".join(traceback.format_exception(exc))
        return ("error", WorkerError(f"{type(exc).__name__}: {exc}\n{text}"), text)


def serve(fd: int, parent: int, idle_s: float | None = None) -> None:
    """A worker's loop: run the jobs that arrive on the socket ``fd`` until it closes.

    Messages to the parent (pid ``parent``): ``("beat", item)``, ``("done", value)``,
    ``("error", exc, text)``. With ``idle_s``, the worker exits after that many seconds without a job.
    """
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the pool stops us
    conn = Connection(fd)

    def beat(item) -> None:
        conn.send(("beat", item))

    done_setups: set = set()
    while True:
        if idle_s is not None and not conn.poll(idle_s):
            return
        try:
            function, args, beats, item, setup = conn.recv()
        except (EOFError, OSError):
            return
        try:
            call = _resolve(function)  # imports: before the item is announced, not timed
            if setup is not None and repr(setup) not in done_setups:
                _resolve(setup[0])(*setup[1])
                done_setups.add(repr(setup))
            if item is not None:
                beat(item)
            value = call(*args, **({"beat": beat} if beats else {}))
            if item is not None:
                beat(None)
            message = ("done", value)
        except Exception as exc:  # the job's error goes back to the caller, the worker goes on
            message = _error_message(exc)
        try:
            conn.send(message)
        except (OSError, pickle.PicklingError) as exc:
            conn.send(_error_message(exc))


def run_isolated(function: Callable, *args) -> tuple[str, Any]:
    """``function(*args)`` in a forked child of this process (a process of its own for one item).

    Call it from a worker (single-threaded, everything imported: the fork is cheap). The child
    dies with its parent (:func:`die_with_parent`).

    Returns
    -------
    ("ok", value) or ("died", "SIGSEGV" / "exit status N")
        An exception in ``function`` is raised here.
    """
    reader, writer = socket.socketpair()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, exit without running the parent's cleanup
        code = 0
        try:
            reader.close()
            die_with_parent(parent)
            out = Connection(writer.detach())
            try:
                out.send(("ok", function(*args)))
            except Exception as exc:
                out.send(_error_message(exc))
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    writer.close()
    conn = Connection(reader.detach())
    try:
        message = conn.recv()
    except (EOFError, OSError):
        message = None
    finally:
        conn.close()
    _, status = os.waitpid(pid, 0)
    if message is None:
        if os.WIFSIGNALED(status):
            return "died", signal_name(os.WTERMSIG(status))
        return "died", f"exit status {os.waitstatus_to_exitcode(status)}"
    if message[0] == "error":
        raise message[1]
    return "ok", message[1]


def signal_name(number: int) -> str:
    """``11`` -> ``"SIGSEGV"`` (``"signal 99"`` for a number Python does not name)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --------------------------------------------------------------------------- the test-only fault hook


def parse_faults(text: str | None) -> dict[str, str]:
    """``"123:segv,456:hang"`` -> ``{"123": "segv", "456": "hang"}`` (ValueError naming a bad entry)."""
    faults: dict[str, str] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        key, _, mode = entry.strip().rpartition(":")
        if not key or mode not in FAULT_MODES:
            raise ValueError(
                f"{FAULTS_ENV}: bad entry {entry!r}: want KEY:MODE with MODE one of {', '.join(FAULT_MODES)}"
            )
        faults[key] = mode
    return faults


def _matches(key: str, name: str) -> bool:
    return key == name or (key.isdigit() and name.isdigit() and int(key) == int(name))


def inject_fault(name: str | int) -> None:
    """TEST ONLY: act out the fault ``FMA_GENRE_TEST_FAULTS`` names for ``name`` (a track id or a
    file's stem), in this process. Does nothing when the variable is unset, as it always is outside
    the tests."""
    text = os.environ.get(FAULTS_ENV)
    if not text:
        return
    name = str(name)
    mode = next((m for k, m in parse_faults(text).items() if _matches(k, name)), None)
    if mode is None:
        return
    if mode == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # as stuck in C: SIGALRM cannot act
        while True:
            time.sleep(3600)
    if mode == "killparent":
        os.kill(os.getppid(), signal.SIGKILL)
    number = {"segv": signal.SIGSEGV, "abort": signal.SIGABRT}.get(mode, signal.SIGKILL)
    if number != signal.SIGKILL:
        signal.signal(number, signal.SIG_DFL)  # no Python fault handler: die as a C crash does
    os.kill(os.getpid(), number)
    time.sleep(60)  # the signal is delivered before this returns


# --------------------------------------------------------------------------- the pool


def worker_env(base: dict | None = None) -> dict:
    """The environment of a worker: ``base`` (default ``os.environ``), one BLAS/OpenMP thread unless
    set, and this project importable (its root first on PYTHONPATH)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONSAFEPATH"] = "1"  # as -P: no current folder first on sys.path (Python 3.11+)
    for var in THREAD_VARS:
        env.setdefault(var, "1")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    jobs_run: int = 0
    job: Job | None = None
    item: Any = None
    item_since: float | None = None  # monotonic time the current item started (None: not timed)

    def start_job(self, job: Job) -> None:
        self.conn.send((job.function, job.args, job.beats, job.item, job.setup))
        self.job, self.item, self.item_since = job, None, None
        self.jobs_run += 1


@dataclass
class Pool:
    """Up to ``processes`` worker processes running :class:`Job` s; see the module doc.

    Use as a context manager (or call :meth:`close`): every worker is killed and reaped at the end,
    also on an exception or Ctrl-C.

    Parameters
    ----------
    processes : int
        Workers at most (started as jobs need them).
    timeout_s : float or None
        Seconds one item may run before its worker is killed (None: no limit).
    idle_s : float or None
        Workers exit on their own after this long without a job (None: they wait for the pool).
    """

    processes: int
    timeout_s: float | None = None
    idle_s: float | None = None
    _workers: list[_Worker] = field(default_factory=list)
    _queue: collections.deque = field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {self.timeout_s}")

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Jobs submitted whose event has not been returned yet."""
        return len(self._queue) + sum(w.job is not None for w in self._workers)

    @property
    def pids(self) -> list[int]:
        """Pids of the live workers."""
        return [w.proc.pid for w in self._workers if w.proc.poll() is None]

    def submit(self, job: Job) -> None:
        """Queue ``job``; it starts as soon as a worker is free."""
        self._queue.append(job)

    def next_event(self) -> Done | Died:
        """Wait for a job to end (or to be killed for its time limit) and return its event.

        Raises
        ------
        Exception
            What the job raised in its worker (the worker goes on with the next job).
        RuntimeError
            No job is pending.
        """
        while True:
            if not self.pending:
                raise RuntimeError("next_event: no job is pending")
            self._dispatch()
            busy = [w for w in self._workers if w.job is not None]
            for conn in wait([w.conn for w in busy], self._seconds_to_next_deadline(busy)):
                worker = next(w for w in busy if w.conn is conn)
                event = self._read(worker)
                if event is not None:
                    return event
            now = time.monotonic()
            for worker in busy:
                if worker.job is not None and self._overdue(worker, now):
                    return self._end(worker, timed_out=True)

    def close(self) -> None:
        """Kill every worker and reap it (idempotent)."""
        for worker in self._workers:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
        for worker in self._workers:
            worker.proc.wait()
            worker.conn.close()
        self._workers.clear()
        self._queue.clear()

    # ------------------------------------------------------------------ internals

    def _start_worker(self) -> _Worker:
        ours, theirs = socket.socketpair()
        # SIGINT ignored first thing (Ctrl-C reaches the whole process group; the pool stops us).
        code = (
            "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "from preprocess.supervise import serve; serve({}, {}, {!r})"
        ).format(theirs.fileno(), os.getpid(), self.idle_s)
        # -P (PYTHONSAFEPATH): the current folder is not put first on sys.path, so a stray file there
        # (a "grp.py" in /tmp) cannot shadow a module the worker imports.
        safe = ["-P"] if sys.version_info >= (3, 11) else []
        proc = subprocess.Popen(
            [sys.executable, *safe, "-c", code],
            pass_fds=(theirs.fileno(),),
            env=worker_env(),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        worker = _Worker(proc, Connection(ours.detach()))
        self._workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.conn.close()  # it exits at EOF
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()
        worker.proc.wait()
        self._workers.remove(worker)

    def _dispatch(self) -> None:
        """Give queued jobs to idle workers, starting workers (or replacing idle ones for a fresh job)."""
        while self._queue:
            job = self._queue[0]
            idle = [w for w in self._workers if w.job is None and (not job.fresh or w.jobs_run == 0)]
            alive_idle = [w for w in idle if w.proc.poll() is None]
            for gone in (w for w in idle if w.proc.poll() is not None):  # e.g. idle_s ran out
                self._retire(gone)
            if alive_idle:
                worker = alive_idle[0]
            elif len(self._workers) < self.processes:
                worker = self._start_worker()
            elif job.fresh and any(w.job is None for w in self._workers):
                self._retire(next(w for w in self._workers if w.job is None))
                worker = self._start_worker()
            else:
                return
            self._queue.popleft()
            try:
                worker.start_job(job)
            except OSError:  # died while idle: start the job on a new worker
                self._retire(worker)
                self._queue.appendleft(job)

    def _read(self, worker: _Worker) -> Done | Died | None:
        """Handle everything ``worker`` has sent; the job's event if it ended."""
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                return self._end(worker, timed_out=False)
            if message[0] == "beat":
                worker.item = message[1]
                worker.item_since = time.monotonic() if message[1] is not None else None
            else:
                job, worker.job, worker.item, worker.item_since = worker.job, None, None, None
                if message[0] == "error":
                    error = message[1]
                    error.add_note(f"raised in worker process {worker.proc.pid}:\n{message[2]}")
                    raise error
                return Done(job, message[1], worker.proc.pid)
            if not worker.conn.poll(0):
                return None

    def _overdue(self, worker: _Worker, now: float) -> bool:
        return (
            self.timeout_s is not None
            and worker.item_since is not None
            and now >= worker.item_since + self.timeout_s
        )

    def _seconds_to_next_deadline(self, busy: list[_Worker]) -> float | None:
        if self.timeout_s is None:
            return None
        deadlines = [w.item_since + self.timeout_s for w in busy if w.item_since is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _end(self, worker: _Worker, timed_out: bool) -> Died:
        """The worker is dead (or is killed now, past its time limit): its job's :class:`Died`."""
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
        code = worker.proc.wait()
        worker.conn.close()
        self._workers.remove(worker)
        return Died(
            job=worker.job,
            item=worker.item,
            signal=signal_name(-code) if code < 0 else None,
            exit_code=code if code >= 0 else None,
            timed_out=self.timeout_s if timed_out else None,
            pid=worker.proc.pid,
        )


# --------------------------------------------------------------------------- predict's map


@dataclass(frozen=True)
class Failed:
    """An item whose worker died twice (``decoder crashed: SIGSEGV``) or ran past the limit."""

    reason: str


def ordered_map(
    function: str,
    items: Iterable,
    args: tuple,
    processes: int,
    timeout_s: float | None = None,
    setup: tuple | None = None,
) -> Iterator[Any]:
    """``function(item, *args)`` for each item in worker processes, yielded in input order.

    ``setup`` (``("module:function", args)``) runs once in each worker before its first item (not
    timed).

    An item whose worker dies is tried once more in a fresh worker; if that dies too, it yields
    ``Failed("decoder crashed: SIGSEGV")``; an item past ``timeout_s`` yields
    ``Failed("timed out after N s")``. At most ``2 * processes`` items are in flight or waiting
    to be yielded, so memory stays bounded. Exceptions of ``function`` propagate.
    """
    items = iter(items)
    results: dict[int, Any] = {}
    deaths: collections.Counter = collections.Counter()
    submitted = emitted = 0
    exhausted = False
    with Pool(processes, timeout_s) as pool:
        while True:
            while not exhausted and submitted - emitted < 2 * processes:
                item = next(items, _END)
                if item is _END:
                    exhausted = True
                    break
                pool.submit(Job(submitted, function, (item, *args), item=str(item), setup=setup))
                submitted += 1
            while emitted in results:
                yield results.pop(emitted)
                emitted += 1
            if exhausted and emitted == submitted:
                return
            if not pool.pending:  # everything submitted was yielded: submit more first
                continue
            event = pool.next_event()
            index = event.job.key
            if isinstance(event, Done):
                results[index] = event.value
            elif event.timed_out is not None:
                results[index] = Failed(event.how())
            elif deaths[index] == 0:
                deaths[index] += 1
                pool.submit(
                    Job(index, function, event.job.args, item=event.job.item, fresh=True, setup=setup)
                )
            else:
                results[index] = Failed(f"decoder crashed: {event.how()}")


_END = object()
