"""The baseline every training figure is compared with: a logistic-regression probe.

Features: each image's per-mel-band mean and standard deviation over time (128 + 128 = 256
numbers per clip, from the raw log-mel images of the shard set), standardised with the training
split's statistics. Model: multinomial logistic regression (scikit-learn, lbfgs), trained on the
``train`` split; its inverse regularisation ``C`` is chosen on the ``validation`` split's macro-F1
(the test split is never looked at until the chosen model is scored on it). Same shards, same
splits as ``python -m train fit``, so a CNN's test figures compare directly.

``--task multilabel`` (a shard set made with ``--target genres_all``): one-vs-rest logistic
regression, one per genre with at least ``--min-genre-tracks`` training tracks (the genres a
``--task multilabel`` CNN outputs, chosen by the same rule), ``C`` chosen on the validation split's
macro mean average precision; beside it the label-frequency baseline (every genre scored by its
training frequency, the same for every track). Both are scored on the test split exactly as
``python -m train test`` scores a multi-label CNN (``train.tasks.MultiLabel.report``).

Prints (stdout) the validation score of every C tried and the test figures with the number of
test clips; ``--json FILE`` also writes them.

Usage: python bench/probe.py --shards SHARDS [--task multilabel] [--json probe.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train import metrics  # noqa: E402
from train.dataset import ShardDataset  # noqa: E402
from train.tasks import DATASET_TARGETS, build_task  # noqa: E402

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
BLOCK = 1024  # images read at once: memory stays ~64 MiB whatever the split's size


def band_features(images: np.ndarray) -> np.ndarray:
    """Per-mel-band mean and standard deviation over time.

    Parameters
    ----------
    images : np.ndarray, shape (N, 128, 128) or (N, 1, 128, 128); mel bands on the second-to-last
        axis, time frames on the last

    Returns
    -------
    np.ndarray, shape (N, 256), float64: the 128 band means, then the 128 band standard deviations
    """
    x = np.asarray(images, dtype=np.float64).reshape(len(images), 128, -1)
    return np.concatenate([x.mean(axis=2), x.std(axis=2)], axis=1)


def split_features(
    shards: str, split: str, target: str = "label"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features (N, 256), targets, class names) of one split, read block by block.

    ``target``: ``label`` gives the classes (N,) int64; ``genres`` the multi-hot rows (N, G) uint8.
    """
    dataset = ShardDataset(shards, split, target=target)
    feats = [np.zeros((0, 256))]
    for start in range(0, len(dataset), BLOCK):
        x, _ = dataset.gather(np.arange(start, min(start + BLOCK, len(dataset))))
        feats.append(band_features(x.numpy()))
    return np.concatenate(feats), dataset.targets, list(dataset.class_names)


def fit_probe(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    c_grid=C_GRID,
    seed: int = 0,
):
    """Standardise, fit one logistic regression per C, keep the best on validation macro-F1.

    Returns
    -------
    model : sklearn Pipeline (StandardScaler + LogisticRegression) of the chosen C
    chosen : float, the chosen C
    scores : dict, C -> validation macro-F1
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (x_tr, y_tr), (x_va, y_va) = train, validation
    if len(y_va) == 0:
        raise ValueError("the validation split is empty: the probe chooses C on it")
    scores, models = {}, {}
    for c in c_grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
        model.fit(x_tr, y_tr)
        scores[c] = metrics.summary(y_va, model.predict(x_va), num_classes)["macro_f1"]
        models[c] = model
    chosen = max(c_grid, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    return models[chosen], chosen, scores


def fit_multilabel_probe(train, validation, c_grid=C_GRID, seed: int = 0):
    """One-vs-rest logistic regression on standardised features, the best C on validation macro mAP.

    Parameters
    ----------
    train, validation : (features (N, F), 0/1 targets (N, K))

    Returns
    -------
    model : sklearn Pipeline (StandardScaler + OneVsRestClassifier(LogisticRegression)) of the chosen C
    chosen : float
    scores : dict, C -> validation macro mAP (over genres with a positive validation track)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (x_tr, y_tr), (x_va, y_va) = train, validation
    if len(y_va) == 0:
        raise ValueError("the validation split is empty: the probe chooses C on it")
    scores, models = {}, {}
    for c in c_grid:
        model = make_pipeline(
            StandardScaler(),
            OneVsRestClassifier(LogisticRegression(C=c, max_iter=5000, random_state=seed)),
        )
        model.fit(x_tr, y_tr)
        scores[c] = metrics.multilabel_summary(y_va, model.predict_proba(x_va))["macro_map"]
        models[c] = model
    chosen = max(c_grid, key=lambda c: (np.nan_to_num(scores[c], nan=-1.0), -c))
    return models[chosen], chosen, scores


def run_multilabel(shards: str, min_genre_tracks: int = 5) -> dict:
    """The multi-label probe and the label-frequency baseline on ``shards``, scored on the test split."""
    start = time.perf_counter()
    target = DATASET_TARGETS["multilabel"]
    train_set = ShardDataset(shards, "train", target=target)
    task = build_task("multilabel", train_set.class_names, train_set, min_genre_tracks)
    x_tr, g_tr, _ = split_features(shards, "train", target)
    x_va, g_va, _ = split_features(shards, "validation", target)
    x_te, g_te, _ = split_features(shards, "test", target)
    if len(g_te) == 0:
        raise ValueError(f"{shards}: the test split is empty")
    model, chosen, val_scores = fit_multilabel_probe(
        (x_tr, g_tr[:, task.columns]), (x_va, g_va[:, task.columns])
    )
    top_labels = ShardDataset(shards, "test", verify=False).labels
    probe = task.report(g_te, model.predict_proba(x_te), top_labels)
    return {
        "shards": str(shards),
        "task": "multilabel",
        "features": "per-band mean and std (256)",
        "C": chosen,
        "validation_macro_map_by_C": {str(c): round(float(v), 4) for c, v in val_scores.items()},
        "genres": task.num_outputs,
        "min_genre_tracks": min_genre_tracks,
        "n_train": int(len(g_tr)),
        "n_validation": int(len(g_va)),
        "n_test": int(len(g_te)),
        "genres_scored": probe["genres_scored"],
        "probe": {k: probe[k] for k in ("macro_map", "micro_map", "macro_auc", "top_genre_accuracy")},
        "frequency_baseline": probe["frequency_baseline"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def run(shards: str) -> dict:
    """Fit the probe on ``shards`` and score it on the test split; the figures as a dict."""
    start = time.perf_counter()
    x_tr, y_tr, names = split_features(shards, "train")
    x_va, y_va, _ = split_features(shards, "validation")
    x_te, y_te, _ = split_features(shards, "test")
    if len(y_te) == 0:
        raise ValueError(f"{shards}: the test split is empty")
    model, chosen, val_scores = fit_probe((x_tr, y_tr), (x_va, y_va), len(names))
    result = metrics.summary(y_te, model.predict(x_te), len(names))
    return {
        "shards": str(shards),
        "features": "per-band mean and std (256)",
        "C": chosen,
        "validation_macro_f1_by_C": {str(c): round(s, 4) for c, s in val_scores.items()},
        "n_train": int(len(y_tr)),
        "n_validation": int(len(y_va)),
        "n_test": int(len(y_te)),
        "test_accuracy": result["accuracy"],
        "test_macro_f1": result["macro_f1"],
        "test_balanced_accuracy": result["balanced_accuracy"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", required=True, help="shard set folder (holds manifest.json)")
    parser.add_argument(
        "--task",
        default="single",
        choices=("single", "multilabel"),
        help="single: the top-level genres (default); multilabel: every genre (a --target genres_all set)",
    )
    parser.add_argument(
        "--min-genre-tracks",
        type=int,
        default=5,
        help="multilabel: genres with fewer training tracks are left out, as train fit does (default 5)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    report = run(args.shards) if args.task == "single" else run_multilabel(args.shards, args.min_genre_tracks)
    if args.task == "multilabel":
        _print_multilabel(report)
    else:
        _print_single(report)
    if args.json:
        from shards import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 0


def _print_multilabel(report: dict) -> None:
    by_c = report["validation_macro_map_by_C"]
    print("validation macro mAP by C: " + ", ".join(f"{c}: {v:.3f}" for c, v in by_c.items()))
    print(
        f"{report['n_test']} test clips ({report['n_train']} train, {report['n_validation']} validation), "
        f"{report['genres_scored']} of {report['genres']} genres with a positive test clip:"
    )
    rows = (
        (f"probe (one-vs-rest logistic regression, C={report['C']})", report["probe"]),
        ("label-frequency baseline", report["frequency_baseline"]),
    )
    for name, r in rows:
        print(
            f"  {name}: macro mAP {r['macro_map']:.3f}, micro mAP {r['micro_map']:.3f}, "
            f"macro ROC-AUC {r['macro_auc']:.3f}"
        )
    print(f"({report['seconds']} s)")


def _print_single(report: dict) -> None:
    print(
        "validation macro-F1 by C: "
        + ", ".join(f"{c}: {s:.3f}" for c, s in report["validation_macro_f1_by_C"].items())
    )
    print(
        f"probe (logistic regression, C={report['C']}) on {report['n_test']} test clips "
        f"({report['n_train']} train, {report['n_validation']} validation): "
        f"accuracy {report['test_accuracy']:.3f}, macro-F1 {report['test_macro_f1']:.3f}, "
        f"balanced accuracy {report['test_balanced_accuracy']:.3f} ({report['seconds']} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
