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
