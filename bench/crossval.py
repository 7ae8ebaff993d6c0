"""Grouped, class-stratified K-fold cross-validation of training recipes against the probe.

One validation split and one seed cannot choose between recipes: on real music the seed alone
moves test macro-F1 by up to +-0.06. This runs each named recipe (``train/configs/NAME.yaml``)
and the logistic-regression probe (``bench/probe.py``) on the same K folds, with several seeds
per fold, and reports mean +- sd of test macro-F1, accuracy and balanced accuracy, the per-fold
pairs (recipe against probe) and the CPU time.

The folds (:func:`assign_folds`, a pure function of the clips' classes, groups and a seed):
every recording *group* (a piece and its variants, ``bench/realmusic.py``) lies in one fold,
and each class's groups are spread over the folds (largest first, each into the fold holding
the fewest clips of that class), so every class is in every fold. Fold ``f``'s run tests on
fold ``f``, validates on fold ``f + 1`` (best epoch, and every recipe decision: read the
``validation`` columns) and trains on the other K - 2 folds.

Each fold is a real shard set (the same images, re-split: :func:`write_fold`), so ``python -m
train fit`` / ``test`` and the probe run on it unchanged.

Usage (after ``bench/realmusic.py`` and its features with ``--recipes reference,fine``)::

    python bench/crossval.py --shards /work/realmusic/shards --clips /work/realmusic/fma/realmusic.json \\
        --work /work/crossval --recipes reference,strong,chunks --seeds 2 --jobs 2

Reruns skip the runs whose test report exists. Writes ``WORK/crossval.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPLIT_NAMES = ("train", "validation", "test")
METRICS = ("macro_f1", "accuracy", "balanced_accuracy")


# --------------------------------------------------------------------------- folds (pure)


def assign_folds(labels: np.ndarray, groups: list, k: int = 5, seed: int = 0) -> np.ndarray:
    """The fold of every clip: groups never split, each class spread over all folds.

    Parameters
    ----------
    labels : np.ndarray, shape (N,), int
        Class of each clip.
    groups : list of hashable, length N
        Recording group of each clip (clips of one group share a fold). A group must hold one class.
    k : int
        Number of folds.
    seed : int
        Shuffles the groups of each class before they are placed (largest first; ties by the shuffle).

    Returns
    -------
    np.ndarray, shape (N,), int64, values in [0, k)

    Raises
    ------
    ValueError
        If a group holds clips of two classes, or a class has fewer than ``k`` groups (it could
        not be in every fold).
    """
    labels = np.asarray(labels)
    if k < 2 or len(groups) != len(labels):
        raise ValueError(
            f"need k >= 2 and one group per clip, got k={k}, {len(groups)} groups, {len(labels)} clips"
        )
    members: dict = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict = defaultdict(list)
    for g, idx in members.items():
        classes = set(labels[idx].tolist())
        if len(classes) != 1:
            raise ValueError(f"group {g!r} holds clips of classes {sorted(classes)}")
        by_class[classes.pop()].append(g)
    fold = np.empty(len(labels), dtype=np.int64)
    total = np.zeros(k, dtype=np.int64)
    for c in sorted(by_class):
        names = sorted(by_class[c], key=repr)
        if len(names) < k:
            raise ValueError(f"class {c} has {len(names)} groups: it cannot be in all {k} folds")
        order = np.random.default_rng([seed, int(c)]).permutation(len(names))
        placed = sorted(
            (names[i] for i in order), key=lambda g: -len(members[g])
        )  # stable: shuffle breaks ties
        count = np.zeros(k, dtype=np.int64)
        for g in placed:
            f = min(range(k), key=lambda j: (count[j], total[j], j))
            fold[members[g]] = f
            count[f] += len(members[g])
            total[f] += len(members[g])
    return fold


def fold_splits(fold: np.ndarray, f: int, k: int) -> np.ndarray:
    """Split name of every clip for fold ``f``: test = fold f, validation = fold f+1, train = the rest."""
    return np.where(fold == f, "test", np.where(fold == (f + 1) % k, "validation", "train"))


# --------------------------------------------------------------------------- fold shard sets


def read_base(shards: Path) -> dict:
    """Every clip of a shard set: track ids, labels, images and extras, in track-id order."""
    from shards import read_manifest, read_shard

    manifest = read_manifest(shards)
    rows: dict = defaultdict(list)
    for entry in manifest["shards"]:
        path = shards / entry["name"]
        contents = read_shard(path)
        rows["track_id"].append(contents.track_id)
        rows["label"].append(contents.label)
        with h5py.File(path, "r") as f:
            for name in ("mel", *sorted(contents.extras)):
                rows[name].append(f[name][()])
    data = {name: np.concatenate(parts) for name, parts in rows.items()}
    order = np.argsort(data["track_id"])
    return {"manifest": manifest, **{name: array[order] for name, array in data.items()}}


def write_fold(base: dict, splits: np.ndarray, out: Path, shard_size: int = 256) -> Path:
    """Write ``base``'s clips as a shard set whose splits are ``splits`` (one name per clip).

    A plan.json like the features stage's (same recipe, class names, extras; the fold's split
    assignment), the shards (``shards.write_shard``), then ``finalize`` writes the manifest.
    Returns ``out``; a finished fold (its manifest exists) is left as it is.
    """
    from preprocess.assign import assign_shards
    from preprocess.finalize import finalize_shards
    from shards import atomic_write_text, write_shard

    if (out / "manifest.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = base["manifest"]
    row_of = {int(t): i for i, t in enumerate(base["track_id"].tolist())}
    tracks = {
        s: [
            (int(t), int(base["label"][i])) for i, t in enumerate(base["track_id"].tolist()) if splits[i] == s
        ]
        for s in SPLIT_NAMES
    }
    specs = assign_shards(tracks, shard_size)
    plan = {
        "plan_version": 1,
        "subset": manifest["subset"],
        "recipe": manifest["recipe"],
        "class_names": manifest["class_names"],
        "shard_size": shard_size,
        "selection": {"cross_validation_fold_of": str(manifest.get("subset"))},
        "shards": [s.to_dict() for s in specs],
        "skipped": {},
    }
    if "mel_fine" in manifest.get("extras", {}):
        plan["fine_recipe"] = manifest["extras"]["mel_fine"]["recipe"]
    atomic_write_text(out / "plan.json", json.dumps(plan, indent=1, sort_keys=True) + "\n")
    for spec in specs:
        rows = np.asarray([row_of[t] for t in spec.track_ids], dtype=np.int64)
        write_shard(
            out / spec.name,
            mel=base["mel"][rows],
            label=base["label"][rows],
            track_id=base["track_id"][rows],
            split=spec.split,
            shard_index=spec.shard_index,
            num_shards=spec.num_shards,
            subset=manifest["subset"],
            recipe=manifest["recipe"],
            class_names=manifest["class_names"],
            versions=manifest.get("versions", {}),
            extras={name: (base[name][rows], about) for name, about in manifest.get("extras", {}).items()},
        )
    path, problems = finalize_shards(out)
    if path is None:
        raise RuntimeError(f"{out}: fold shard set incomplete: {problems[:3]}")
    return out


# --------------------------------------------------------------------------- runs


def run_recipe(recipe: str, shards: Path, run: Path, seed: int, threads: int, extra: list[str]) -> dict:
    """``train fit`` then ``train test`` of one recipe on one fold with one seed; its figures.

    Skipped (read back) when ``run/test_report.json`` exists; resumed when only ``last.pt`` does.
    """
    report = run / "test_report.json"
    if not report.exists():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        base = [sys.executable, "-m", "train"]
        config = REPO / "train" / "configs" / f"{recipe}.yaml"
        fit = [*base, "fit", "--config", str(config), "--shards", str(shards), "--run", str(run)]
        fit += ["--seed", str(seed), "--device", "cpu", "-q", *extra]
        resumed = (run / "last.pt").exists()
        if resumed:
            fit.append("--resume")
        fit_wall, fit_cpu = timed(fit, env)
        test = [*base, "test", "--shards", str(shards), "--run", str(run), "--device", "cpu", "-q"]
        _, test_cpu = timed(test, env)
        cost = {"fit_wall_s": fit_wall, "fit_cpu_s": fit_cpu, "test_cpu_s": test_cpu, "resumed": resumed}
        (run / "cost.json").write_text(json.dumps(cost) + "\n")
    test = json.loads(report.read_text())
    history = json.loads((run / "history.json").read_text())
    validated = [e for e in history if np.isfinite(e["val_macro_f1"])]
    best = max(validated, key=lambda e: (e["val_macro_f1"], -e["epoch"]))
    cost = json.loads((run / "cost.json").read_text()) if (run / "cost.json").exists() else {}
    return {
        **{f"test_{m}": test[m] for m in METRICS},
        **{f"validation_{m}": best[f"val_{m}"] for m in METRICS},
        "best_epoch": best["epoch"],
        **cost,
    }


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """Run ``argv`` (stdout to /dev/null; a failure raises); its wall and CPU seconds (its own rusage)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, argv)
    return round(time.perf_counter() - start, 1), round(usage.ru_utime + usage.ru_stime, 1)


def run_probe(shards: Path, out: Path) -> dict:
    """The probe on one fold (deterministic: one run serves every seed); cached in ``out``."""
    if not out.exists():
        from bench import probe

        result = probe.run(str(shards))
        out.write_text(json.dumps(result, indent=1) + "\n")
    result = json.loads(out.read_text())
    return {f"test_{m}": result[f"test_{m}"] for m in METRICS}


# --------------------------------------------------------------------------- summary


def summarize(results: dict, probe: dict, k: int) -> dict:
    """Per recipe: mean and sd over folds x seeds, per-fold means, the ratio to the probe."""
    probe_f1 = np.array([probe[f]["test_macro_f1"] for f in range(k)])
    out = {"probe": {m: _mean_sd([probe[f][f"test_{m}"] for f in range(k)]) for m in METRICS}}
    out["probe"]["per_fold_macro_f1"] = probe_f1.round(4).tolist()
    for recipe, runs in results.items():
        row = {}
        for split in ("test", "validation"):
            for m in METRICS:
                row[f"{split}_{m}"] = _mean_sd([r[f"{split}_{m}"] for r in runs.values()])
        per_fold = np.array(
            [np.mean([r["test_macro_f1"] for (f, _), r in runs.items() if f == fold]) for fold in range(k)]
        )
        row["per_fold_macro_f1"] = per_fold.round(4).tolist()
        row["folds_above_probe"] = int((per_fold > probe_f1).sum())
        row["ratio_to_probe"] = round(float(row["test_macro_f1"][0] / out["probe"]["macro_f1"][0]), 3)
        whole = [r["fit_cpu_s"] for r in runs.values() if "fit_cpu_s" in r and not r.get("resumed")]
        row["cpu_s_per_run"] = round(float(np.mean(whole)), 1) if whole else float("nan")
        row["runs"] = len(runs)
        out[recipe] = row
    return out


def _mean_sd(values) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    return [round(float(values.mean()), 4), round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4)]


def table(summary: dict, k: int) -> str:
    """The markdown table of :func:`summarize`'s result."""
    lines = [
        "| recipe | test macro-F1 | accuracy | balanced acc. | x probe | folds above probe | "
        "validation macro-F1 | CPU s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    p = summary["probe"]
    lines.append(
        f"| probe | {_fmt(p['macro_f1'])} | {_fmt(p['accuracy'])} | {_fmt(p['balanced_accuracy'])} "
        "| 1.00 | | | |"
    )
    for name, row in summary.items():
        if name == "probe":
            continue
        lines.append(
            f"| {name} | {_fmt(row['test_macro_f1'])} | {_fmt(row['test_accuracy'])} | "
            f"{_fmt(row['test_balanced_accuracy'])} | {row['ratio_to_probe']:.2f} | "
            f"{row['folds_above_probe']}/{k} | {_fmt(row['validation_macro_f1'])} | "
            f"{row['cpu_s_per_run']:.0f} |"
        )
    lines.append("")
    lines.append("| fold | probe | " + " | ".join(n for n in summary if n != "probe") + " |")
    lines.append("|---" * (len(summary) + 1) + "|")
    for f in range(k):
        cells = [f"{summary[n]['per_fold_macro_f1'][f]:.3f}" for n in summary]
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(mean_sd) -> str:
    return f"{mean_sd[0]:.3f} ± {mean_sd[1]:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=Path, required=True, help="the real-music shard set (all clips)")
    parser.add_argument("--clips", type=Path, required=True, help="realmusic.json (each clip's group)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the fold shard sets and runs")
    parser.add_argument("--recipes", default="reference,strong", help="comma-separated train/configs names")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per fold (0..N-1)")
    parser.add_argument("--fold-seed", type=int, default=0, help="seeds the fold assignment")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each on --threads threads)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--only-folds", default="", help="comma-separated folds to run (default: all)")
    parser.add_argument("--fit-args", default="", help="extra `train fit` flags for every run (quoted)")
    parser.add_argument("--tag", default="", help="suffix of the run folders (a variant of a recipe)")
    args = parser.parse_args(argv)

    base = read_base(args.shards)
    clips = json.loads(args.clips.read_text())["clips"]
    groups = [(clips[str(t)]["source"], clips[str(t)]["group"]) for t in base["track_id"].tolist()]
    fold = assign_folds(base["label"], groups, args.folds, args.fold_seed)
    folds = [int(f) for f in args.only_folds.split(",") if f] or list(range(args.folds))
    fold_dirs = {f: write_fold(base, fold_splits(fold, f, args.folds), args.work / f"fold{f}") for f in folds}
    probe = {f: run_probe(fold_dirs[f], fold_dirs[f] / "probe.json") for f in folds}
    extra = args.fit_args.split()
    jobs = []
    for recipe in args.recipes.split(","):
        name = recipe + (f"-{args.tag}" if args.tag else "")
        for f in folds:
            for s in range(args.seeds):
                run = args.work / "runs" / name / f"fold{f}-seed{s}"
                jobs.append((name, f, s, (recipe, fold_dirs[f], run, s, args.threads, extra)))
    results: dict = defaultdict(dict)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_recipe, *job[3]): job for job in jobs}
        for future, (name, f, s, _) in futures.items():
            results[name][(f, s)] = future.result()
            print(f"{name} fold {f} seed {s}: {results[name][(f, s)]}", flush=True)
    if len(folds) == args.folds:
        summary = summarize(results, probe, args.folds)
        out = args.work / "crossval.json"
        record = {
            "folds": args.folds,
            "seeds": args.seeds,
            "fold_seed": args.fold_seed,
            "summary": summary,
            "runs": {n: {f"{f}/{s}": r for (f, s), r in runs.items()} for n, runs in results.items()},
        }
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(table(summary, args.folds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
