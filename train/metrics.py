"""Classification metrics in numpy (pure functions; no scikit-learn at runtime).

Conventions follow scikit-learn's (the tests compare against it): a class's
precision, recall or F1 is 0 when undefined; balanced accuracy is the mean
recall over classes present in ``y_true``; macro-F1 averages over classes that
occur in ``y_true`` or ``y_pred``.
"""

from __future__ import annotations

import numpy as np


def _check(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes})")
    return y_true, y_pred


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts: entry [i, j] = samples of true class i predicted as j.

    Returns
    -------
    np.ndarray, shape (num_classes, num_classes), int64
    """
    y_true, y_pred = _check(y_true, y_pred, num_classes)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    Returns
    -------
    dict of np.ndarray, each shape (K,): precision, recall, f1 (float64), support (int64)
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support.astype(np.float64))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def top_k_accuracy(y_true, scores: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    Parameters
    ----------
    y_true : array-like, shape (N,)
    scores : np.ndarray, shape (N, K)
    """
    scores = np.asarray(scores)
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != y_true.shape[0]:
        raise ValueError(f"scores must be (N, K) with N={y_true.shape[0]}, got {scores.shape}")
    if y_true.size == 0:
        return float("nan")
    top = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def summary(y_true, y_pred, num_classes: int, scores: np.ndarray | None = None) -> dict:
    """All headline metrics.

    Returns
    -------
    dict with accuracy, balanced_accuracy, macro_f1 (floats), top3_accuracy
    (if ``scores`` (N, K) given), confusion (K, K) and per-class arrays.
    """
    y_true, y_pred = _check(y_true, y_pred, num_classes)
    confusion = confusion_matrix(y_true, y_pred, num_classes)
    scores_by_class = per_class_scores(confusion)
    present_true = scores_by_class["support"] > 0
    present_any = present_true | (confusion.sum(axis=0) > 0)
    n = len(y_true)
    result = {
        "num_samples": int(n),
        "accuracy": float(np.trace(confusion) / n) if n else float("nan"),
        "balanced_accuracy": float(scores_by_class["recall"][present_true].mean()) if n else float("nan"),
        "macro_f1": float(scores_by_class["f1"][present_any].mean()) if n else float("nan"),
        "confusion": confusion,
        **scores_by_class,
    }
    if scores is not None:
        result["top3_accuracy"] = top_k_accuracy(y_true, scores, min(3, num_classes))
    return result


# --------------------------------------------------------------------------- multi-label (ranking) metrics


def _ranked_counts(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives above each distinct score, highest score first (ties grouped)."""
    order = np.argsort(-scores, kind="mergesort")
    scores, y_true = scores[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(y_true)[last_of_tie]
    fps = last_of_tie + 1 - tps
    return tps.astype(np.float64), fps.astype(np.float64)


def _binary(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} differ in length")
    if y_true.size and not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold 0 or 1")
    return y_true.astype(np.int64), scores


def average_precision(y_true, scores) -> float:
    """Average precision of a ranking: sum over thresholds of (R_n - R_{n-1}) P_n, as scikit-learn's
    ``average_precision_score`` (no interpolation; tied scores are one threshold).

    Parameters
    ----------
    y_true : array-like, shape (N,), 0/1
    scores : array-like, shape (N,)

    Returns
    -------
    float, NaN when ``y_true`` has no positive
    """
    y_true, scores = _binary(y_true, scores)
    if y_true.sum() == 0:
        return float("nan")
    tps, fps = _ranked_counts(y_true, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve (trapezoids; ties count half), as scikit-learn's ``roc_auc_score``.

    Returns NaN when ``y_true`` holds only one class (the area is undefined).
    """
    y_true, scores = _binary(y_true, scores)
    positives = int(y_true.sum())
    if positives == 0 or positives == len(y_true):
        return float("nan")
    tps, fps = _ranked_counts(y_true, scores)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def multilabel_summary(y_true, scores) -> dict:
    """Ranking metrics of multi-label scores, one column per label (genre).

    Parameters
    ----------
    y_true : array-like, shape (N, K), 0/1
    scores : array-like, shape (N, K), higher = more likely

    Returns
    -------
    dict
        ``num_samples``; ``ap``, ``auc`` (K,) float64 per label (NaN where undefined: no positive,
        or for AUC no negative); ``support`` (K,) int64 positives per label; ``macro_map`` the mean
        AP over labels with a positive; ``micro_map`` the AP of all (sample, label) pairs ranked
        together (scikit-learn's ``average="micro"``); ``macro_auc`` the mean AUC over labels with
        both classes; ``labels_scored`` how many labels have a positive. NaN where nothing counts.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} must both be (N, K)")
    k = y_true.shape[1]
    ap = np.array([average_precision(y_true[:, j], scores[:, j]) for j in range(k)], dtype=np.float64)
    auc = np.array([roc_auc(y_true[:, j], scores[:, j]) for j in range(k)], dtype=np.float64)
    scored, both = np.isfinite(ap), np.isfinite(auc)
    return {
        "num_samples": int(y_true.shape[0]),
        "ap": ap,
        "auc": auc,
        "support": y_true.sum(axis=0).astype(np.int64),
        "labels_scored": int(scored.sum()),
        "macro_map": float(ap[scored].mean()) if scored.any() else float("nan"),
        "micro_map": average_precision(y_true.ravel(), scores.ravel()) if y_true.size else float("nan"),
        "macro_auc": float(auc[both].mean()) if both.any() else float("nan"),
    }
