"""Helpers for the fault-injection tests: killing process groups, watching a shard folder, snapshots."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import h5py
import numpy as np

import shards

SHARD_GLOB = "*-of-*.h5"


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts: SIGINT back to its default disposition.

    A test run started in the background (``cmd &`` in a non-interactive shell, as CI runners
    may do) inherits SIGINT *ignored*, and Python leaves an ignored SIGINT ignored, so the
    child would never see the Ctrl-C the test sends. With the default disposition, the
    child's Python turns SIGINT into KeyboardInterrupt as it does in a terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd: list[str], env: dict, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session, so that it and its workers can be killed together.

    SIGINT has its default disposition in the child (:func:`default_sigint`).
    """
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=default_sigint, **kwargs)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (the driver and its worker processes), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def group_gone(pgid: int, within_s: float) -> bool:
    """True once no process of the process group ``pgid`` is left (waiting up to ``within_s``)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder`` (hidden temporary files included), by name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def shard_data(path: Path) -> dict:
    """Everything a shard holds, as plain values and arrays, for exact comparison."""
    contents = shards.read_shard(path, verify=True)
    with h5py.File(path, "r") as f:
        mel = f["mel"][()]
    return {
        "mel": mel,
        "label": contents.label,
        "track_id": contents.track_id,
        "failed": contents.failed,
        "checksum": contents.checksum,
        "recipe": contents.recipe,
        "class_names": contents.class_names,
        "split": contents.split,
        "subset": contents.subset,
        "versions": contents.versions,
    }


def assert_same_shard(a: Path, b: Path) -> None:
    """Same data, labels, ids, failures and attributes in two shard files."""
    x, y = shard_data(a), shard_data(b)
    assert x.keys() == y.keys()
    for key in x:
        if isinstance(x[key], np.ndarray):
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{a.name}: {key}")
            assert x[key].dtype == y[key].dtype
        else:
            assert x[key] == y[key], (a.name, key)


class ShardWatcher(threading.Thread):
    """Polls ``root`` (recursively, ``pattern``) and fully reads every file with a final shard name.

    A file is (re)checked whenever it is new or its inode, size or mtime changed, with
    ``shards.read_shard(verify=True)`` (every image read, checksum recomputed) and the
    memory-map layout check the Dataset uses. Anything a reader could not use is recorded
    in ``problems``. ``polls_with_shards`` counts polls that saw at least one shard and
    ``checks`` the files fully read.
    """

    def __init__(self, root: Path, pattern: str = f"*/{SHARD_GLOB}", interval: float = 0.01):
        super().__init__(daemon=True)
        self.root, self.pattern, self.interval = root, pattern, interval
        self.problems: list[str] = []
        self.polls = self.polls_with_shards = self.checks = 0
        self._seen: dict[Path, tuple] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            time.sleep(self.interval)
        self.poll()

    def poll(self) -> None:
        self.polls += 1
        found = sorted(self.root.glob(self.pattern))
        if found:
            self.polls_with_shards += 1
        for path in found:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._seen.get(path) == key:
                continue
            try:
                contents = shards.read_shard(path, verify=True)
                if contents.num_tracks:
                    shards.data_layout(path, "mel")
            except shards.ShardError as exc:
                if path.exists():
                    self.problems.append(str(exc))
                continue
            self.checks += 1
            self._seen[path] = key

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)


# --------------------------------------------------------------------------- jobs for preprocess.supervise
# Run by worker processes of tests/test_supervise.py (importable by name: the workers get the repository
# root on PYTHONPATH).


def job_value(x: int) -> dict:
    """A job that returns where it ran."""
    return {"square": x * x, "pid": os.getpid(), "ppid": os.getppid()}


def job_items(items: list, die_at=None, how: str = "segv", beat=None) -> list:
    """Announce each item; at ``die_at``, act out the fault ``how`` (preprocess.supervise's modes)."""
    from preprocess.supervise import FAULTS_ENV, inject_fault

    if die_at is not None:
        os.environ[FAULTS_ENV] = f"{die_at}:{how}"
    for item in items:
        beat(item)
        inject_fault(item)
    beat(None)
    return items


def job_raise(message: str) -> None:
    from preprocess.errors import FeaturesError

    raise FeaturesError(message)


def job_file(path: str, stem_faults: str) -> str:
    """A one-item job keyed by a file's stem (as predict's)."""
    from preprocess.supervise import FAULTS_ENV, inject_fault

    os.environ[FAULTS_ENV] = stem_faults
    inject_fault(Path(path).stem)
    return Path(path).stem.upper()


def isolated_fault(how: str) -> int:
    """In a worker: :func:`preprocess.supervise.run_isolated` of a call that acts out ``how``."""
    from preprocess.supervise import run_isolated

    def work() -> int:
        job_items([1], die_at=1 if how != "none" else None, how=how, beat=lambda item: None)
        return os.getpid()

    return run_isolated(work)


# --------------------------------------------------------------------------- culprit tracks in a shard set


def pick_culprits(folder: Path, modes: list[str]) -> dict[int, tuple[str, str]]:
    """One written track per mode, each in another shard of ``folder`` (the second track of the
    shard, so that the shard has work before and after it): ``{track id: (mode, shard name)}``."""
    names = sorted(p.name for p in folder.glob(SHARD_GLOB))
    picked: dict[int, tuple[str, str]] = {}
    for mode, name in zip(modes, names, strict=False):
        ids = shards.read_shard(folder / name).track_id.tolist()
        picked[int(ids[1])] = (mode, name)
    assert len(picked) == len(modes), f"need {len(modes)} shards in {folder}"
    return picked


def faults_value(culprits: dict[int, tuple[str, str]]) -> str:
    """``FMA_GENRE_TEST_FAULTS``'s value for :func:`pick_culprits`'s tracks."""
    return ",".join(f"{tid}:{mode}" for tid, (mode, _) in culprits.items())


def assert_same_but_culprits(expected: Path, actual: Path, reasons: dict[int, str]) -> None:
    """``actual``'s shards are ``expected``'s byte for byte, except that each track of ``reasons`` is
    failed with that reason instead of written; the rest of its shard is the same data."""
    names = sorted(p.name for p in expected.glob(SHARD_GLOB))
    assert names == sorted(p.name for p in actual.glob(SHARD_GLOB))
    for name in names:
        a, b = shard_data(expected / name), shard_data(actual / name)
        here = {t: r for t, r in reasons.items() if t in a["track_id"].tolist()}
        if not here:
            assert file_digests_of(expected / name) == file_digests_of(actual / name), name
            continue
        keep = ~np.isin(a["track_id"], list(here))
        np.testing.assert_array_equal(b["track_id"], a["track_id"][keep], err_msg=name)
        np.testing.assert_array_equal(b["label"], a["label"][keep], err_msg=name)
        np.testing.assert_array_equal(b["mel"], a["mel"][keep], err_msg=name)
        extras = shards.read_shard(expected / name).extras
        assert shards.read_shard(actual / name).extras == extras, name
        for extra in extras:  # e.g. mel_fine: the same rows but the culprit's
            want = shards.read_extra(expected / name, extra)[keep]
            np.testing.assert_array_equal(shards.read_extra(actual / name, extra), want, err_msg=name)
        assert dict(b["failed"]) == {**dict(a["failed"]), **here}, name
        for key in ("recipe", "class_names", "split", "subset", "versions"):
            assert a[key] == b[key], (name, key)
    manifest = shards.read_manifest(actual)
    failed = {f["track_id"]: f["reason"] for f in manifest["failed"]}
    assert {t: failed.get(t) for t in reasons} == reasons


def file_digests_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' once it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found
