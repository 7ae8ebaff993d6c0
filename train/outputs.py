"""Result files of ``predict`` (CSV or JSON Lines) and ``embed`` (HDF5), all written atomically.

Prediction rows (one per file, in input order)
-----------------------------------------------
CSV columns: ``path``, ``windows`` (windows whose scores were averaged),
``genre_1``, ``probability_1``, ... ``genre_k``, ``probability_k`` (the top k),
for a multi-label model ``top_level_genre`` (the top-level genre its scores imply),
then ``p_<genre>`` for every output, then ``error`` (empty when the file was
scored). With per-window output, each file's row is followed by one row per
window with ``window_start_s`` filled in (empty on the file's own row). A
multi-label model's probabilities are one per genre (sigmoid), not summing to 1.

JSON Lines: one object per file::

    {"path": ..., "windows": 6, "top": [{"genre": "Rock", "probability": 0.71}, ...],
     "probabilities": {"Rock": 0.71, ...}, "error": null,
     "top_level_genre": "Rock",                                       # multi-label models only
     "per_window": [{"start_s": 0.0, "probabilities": {...}}, ...]}   # --per-window only

A file that could not be scored has ``windows`` 0, no genres and its ``error``.

Embeddings file (HDF5)
----------------------
``embedding`` float32 (N, D), the penultimate-layer vectors; for shard tracks
``track_id`` int64 (N,) and ``label`` int64 (N,); for audio files ``path`` (str,
N), ``windows`` int64 (N,) (the embedding is their mean) and, for files that
failed, ``failed_path`` / ``failed_reason`` (str, M). Attributes: ``class_names``,
``recipe``, ``model``, ``source`` (JSON strings), ``embedding_dim``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards import atomic_path, atomic_write_text
from shards.errors import FmaGenreError

RESULT_FORMATS = (".csv", ".jsonl")


class OutputError(FmaGenreError, ValueError):
    """An output path that cannot be written in the asked format."""


@dataclass
class TrackPrediction:
    """The scores of one file.

    Attributes
    ----------
    path : str
    probabilities : np.ndarray, shape (K,), or None
        Mean over the used windows of the softmax probabilities; None if the file failed.
    window_starts_s : np.ndarray, shape (W,), float64
        Start of each used window in seconds.
    window_probabilities : np.ndarray, shape (W, K), float32
    embedding : np.ndarray, shape (D,), or None
        Mean over the used windows of the penultimate-layer vectors.
    error : str or None
    top_level_genre : str or None
        A multi-label model's: the top-level genre the (averaged) genre scores imply.
    """

    path: str
    probabilities: np.ndarray | None = None
    window_starts_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    window_probabilities: np.ndarray | None = None
    embedding: np.ndarray | None = None
    error: str | None = None
    top_level_genre: str | None = None

    @property
    def windows(self) -> int:
        return 0 if self.probabilities is None else len(self.window_starts_s)


def check_result_path(path: str | os.PathLike) -> Path:
    """``path`` if its extension is a known result format and its folder exists."""
    path = Path(path)
    if path.suffix.lower() not in RESULT_FORMATS:
        raise OutputError(f"--output {path}: unknown format {path.suffix!r}; use a .csv or .jsonl file name")
    if not path.parent.is_dir():
        raise OutputError(f"--output {path}: the folder {path.parent} does not exist; create it first")
    return path


def _top(probabilities: np.ndarray, class_names: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]


def format_line(result: TrackPrediction, class_names: list[str], k: int, per_window: bool = False) -> str:
    """Text for the terminal: ``path: Rock 0.712, Pop 0.103, ... (6 windows)`` or ``path: error: ...``;
    with ``per_window``, one more line per window: ``  at 14.75 s: Rock 0.802, ...``."""
    if result.probabilities is None:
        return f"{result.path}: error: {result.error}"

    def ranked(probabilities):
        return ", ".join(f"{g} {p:.3f}" for g, p in _top(probabilities, class_names, k))

    implied = f"; top-level genre {result.top_level_genre}" if result.top_level_genre else ""
    lines = [
        f"{result.path}: {ranked(result.probabilities)}{implied} "
        f"({result.windows} window{'s' if result.windows != 1 else ''})"
    ]
    if per_window:
        lines += [
            f"  at {start:.2f} s: {ranked(p)}"
            for start, p in zip(result.window_starts_s, result.window_probabilities, strict=True)
        ]
    return "\n".join(lines)


def results_csv(
    results: list[TrackPrediction], class_names: list[str], k: int, per_window: bool, top_level: bool = False
) -> str:
    """The CSV text of :func:`write_results` (see the module doc for the columns)."""
    k = min(k, len(class_names))
    header = ["path", "windows"] + [c for i in range(1, k + 1) for c in (f"genre_{i}", f"probability_{i}")]
    header += ["top_level_genre"] if top_level else []
    header += [f"p_{name}" for name in class_names] + (["window_start_s"] if per_window else []) + ["error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)

    def row(path, windows, probabilities, start, error, implied=None):
        top = [] if probabilities is None else _top(probabilities, class_names, k)
        cells = [path, windows] + [c for g, p in top for c in (g, f"{p:.6f}")] + [""] * (2 * (k - len(top)))
        cells += [implied or ""] if top_level else []
        cells += [""] * len(class_names) if probabilities is None else [f"{p:.6f}" for p in probabilities]
        return cells + ([start] if per_window else []) + [error or ""]

    for r in results:
        writer.writerow(row(r.path, r.windows, r.probabilities, "", r.error, r.top_level_genre))
        if per_window and r.probabilities is not None:
            for start, probabilities in zip(r.window_starts_s, r.window_probabilities, strict=True):
                writer.writerow(row(r.path, 1, probabilities, f"{start:.3f}", None))
    return buffer.getvalue()


def result_record(
    r: TrackPrediction, class_names: list[str], k: int, per_window: bool, top_level: bool = False
) -> dict:
    """One JSON Lines object (see the module doc)."""
    record = {"path": r.path, "windows": r.windows, "top": [], "probabilities": None, "error": r.error}
    if top_level:
        record["top_level_genre"] = r.top_level_genre
    if r.probabilities is not None:
        record["top"] = [{"genre": g, "probability": p} for g, p in _top(r.probabilities, class_names, k)]
        record["probabilities"] = {n: float(p) for n, p in zip(class_names, r.probabilities, strict=True)}
        if per_window:
            record["per_window"] = [
                {
                    "start_s": round(float(s), 6),
                    "probabilities": {n: float(p) for n, p in zip(class_names, probabilities, strict=True)},
                }
                for s, probabilities in zip(r.window_starts_s, r.window_probabilities, strict=True)
            ]
    return record


def write_results(
    path: str | os.PathLike,
    results: list[TrackPrediction],
    class_names: list[str],
    k: int = 3,
    per_window: bool = False,
    top_level: bool = False,
) -> Path:
    """Write prediction rows as CSV or JSON Lines (by ``path``'s extension), atomically.

    ``top_level``: add each file's implied top-level genre (a multi-label model's results).
    """
    path = check_result_path(path)
    for r in results:
        if r.probabilities is not None and len(r.probabilities) != len(class_names):
            raise ValueError(f"{r.path}: {len(r.probabilities)} probabilities for {len(class_names)} classes")
    if path.suffix.lower() == ".csv":
        text = results_csv(results, class_names, k, per_window, top_level)
    else:
        text = "".join(
            json.dumps(result_record(r, class_names, k, per_window, top_level)) + "\n" for r in results
        )
    atomic_write_text(path, text)
    return path


def write_embeddings(
    path: str | os.PathLike,
    embedding: np.ndarray,
    *,
    attrs: dict,
    track_id: np.ndarray | None = None,
    label: np.ndarray | None = None,
    paths: list[str] | None = None,
    windows: np.ndarray | None = None,
    failed: list[tuple[str, str]] = (),
) -> Path:
    """Write an embeddings file (see the module doc), atomically.

    Parameters
    ----------
    embedding : np.ndarray, shape (N, D)
    attrs : dict
        Plain data stored as attributes (dicts and lists as JSON strings).
    track_id, label : np.ndarray, shape (N,), optional
        For shard tracks.
    paths : list of str (N), windows : np.ndarray (N,), optional
        For audio files.
    failed : list of (path, reason)
    """
    import h5py

    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"--out {path}: the folder {path.parent} does not exist; create it first")
    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding.ndim != 2:
        raise ValueError(f"embedding must have shape (N, D), got {embedding.shape}")
    strings = h5py.string_dtype()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("embedding", data=embedding)
            for name, values in (("track_id", track_id), ("label", label), ("windows", windows)):
                if values is not None:
                    h5.create_dataset(name, data=np.asarray(values, dtype=np.int64))
            if paths is not None:
                h5.create_dataset("path", data=list(paths), dtype=strings)
                h5.create_dataset("failed_path", data=[p for p, _ in failed], dtype=strings)
                h5.create_dataset("failed_reason", data=[r for _, r in failed], dtype=strings)
            h5.attrs["embedding_dim"] = embedding.shape[1]
            for key, value in attrs.items():
                h5.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    return path
