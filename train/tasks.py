"""What differs between the two training tasks, in one place: the targets, the loss, the scores.

``single``      one of the shard set's top-level genres per track (the reference task): softmax
                over the 16 classes, cross-entropy (class weights, label smoothing), accuracy and
                macro-F1, best checkpoint by macro-F1, a confusion matrix.
``multilabel``  every genre of FMA's taxonomy a track carries (shards made with ``--target
                genres_all``, whose ``genres`` rows are the targets): one sigmoid per genre, binary
                cross-entropy, mean average precision (mAP), best checkpoint by macro mAP, a plot
                of per-genre AP. Genres with fewer than ``min_genre_tracks`` training tracks are
                left out of the outputs (listed in the checkpoint and the report).

The rest of ``train`` asks the :class:`Task` (built by :func:`build_task` for a new run,
:func:`task_from_checkpoint` afterwards) instead of branching on the task. The models are the
same (logits ``(B, K)``); only ``K`` (:attr:`Task.num_outputs`) differs. Batches are
``(x, y)`` as :meth:`train.dataset.ShardDataset.gather` gives them: ``y`` (B,) int64 class
labels, or (B, G) uint8 multi-hot rows over the whole genre table for multilabel
(:attr:`Task.dataset_target` says which); :meth:`Task.targets` makes what the loss takes, and
mixup (:mod:`train.augment`) mixes those label vectors.

Importing this module does not import torch (ONNX prediction runs without it): the methods that
work on tensors import it themselves.
"""

from __future__ import annotations

import numpy as np

from train import metrics
from train.config import SELECT_METRICS, TASKS, ConfigError

PLOT_NAMES = {"single": "confusion.png", "multilabel": "genre_ap.png"}
#: What ``train.dataset.ShardDataset`` hands out as ``y`` for each task.
DATASET_TARGETS = {"single": "label", "multilabel": "genres"}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, float32."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function of (N, K) logits, float32."""
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)


def class_weight_tensor(counts, mode: str):
    """Cross-entropy weights: None, or N / (K * count) per class ("balanced"; 0 if absent), a torch tensor."""
    import torch

    if mode == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


class Task:
    """The interface (see the module doc). Subclasses: :class:`SingleLabel`, :class:`MultiLabel`.

    Attributes
    ----------
    name : str
        ``single`` or ``multilabel`` (``train.config.TASKS``).
    class_names : list of str
        The shard set's class names (the top-level genres), whatever the task.
    dataset_target : str
        What :class:`train.dataset.ShardDataset` hands out as ``y``: ``label`` or ``genres``.
    train_metric : str
        The per-batch training figure (``train_<name>`` in the history).
    """

    name: str
    dataset_target: str
    train_metric: str
    class_names: list[str]

    @property
    def output_names(self) -> list[str]:
        """One name per logit, in order."""
        raise NotImplementedError

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)

    def describe_outputs(self) -> str:
        """The outputs in a few words, for the log: ``16 classes``, ``44 genres (multilabel)``."""
        return (
            f"{self.num_outputs} classes"
            if self.name == "single"
            else f"{self.num_outputs} genres (multilabel)"
        )

    @property
    def plot_name(self) -> str:
        return PLOT_NAMES[self.name]

    def select_metric(self, requested: str) -> str:
        """The validation metric that picks best.pt (``auto``: the task's first)."""
        return SELECT_METRICS[self.name][0] if requested == "auto" else requested


# --------------------------------------------------------------------------- single label


class SingleLabel(Task):
    """One top-level genre per track: softmax, cross-entropy, accuracy / macro-F1."""

    name = "single"
    dataset_target = "label"
    train_metric = "accuracy"
    plot_what = "confusion plot"
    implies_top_genre = False  # the outputs are the top-level genres themselves

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)

    @property
    def output_names(self) -> list[str]:
        return self.class_names

    def to_dict(self) -> dict:
        return {"name": self.name}

    def describe_outputs(self) -> str:
        """The outputs in a few words, for the log."""
        return f"{self.num_outputs} classes"

    def check_dataset(self, dataset) -> None:
        """ConfigError if the split holds tracks without a top-level genre (a genres_all shard set)."""
        missing = int((dataset.labels < 0).sum())
        if missing:
            raise ConfigError(
                f"{dataset.folder}: {missing} tracks of the {dataset.split} split have no top-level genre "
                f"(a shard set made with --target genres_all): train it with --task multilabel, or "
                f"make a genre_top shard set (make features without TARGET)"
            )

    def targets(self, y):
        """What the loss takes: the class labels (B,) int64 as they are."""
        return y

    def criterion(self, config, train_set, device):
        """Cross-entropy, with ``config.class_weights`` and ``config.label_smoothing``."""
        from torch import nn

        weights = class_weight_tensor(train_set.class_counts(), config.class_weights)
        return nn.CrossEntropyLoss(
            weight=None if weights is None else weights.to(device), label_smoothing=config.label_smoothing
        )

    def probabilities(self, logits):
        """Softmax probabilities (B, K) float32 of logits (B, K) (torch)."""
        import torch

        return torch.softmax(logits.float(), dim=1)

    def probabilities_np(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits)

    def correct(self, logits, y):
        """Samples whose highest logit is their class (a 0-d tensor)."""
        return (logits.argmax(dim=1) == y).sum()

    def balance_groups(self, dataset) -> np.ndarray:
        """What ``--sampling balanced`` balances: the classes."""
        return dataset.labels

    def init_head(self, model) -> None:
        """A new model's output layer as built (the reference's initialisation)."""

    def validation_metrics(self, criterion, scores: np.ndarray, y: np.ndarray, top_labels, device) -> dict:
        """Validation loss (with the training loss's class weights), accuracy, macro-F1, balanced accuracy.

        Parameters
        ----------
        scores : np.ndarray, shape (N, K), softmax probabilities
        y : np.ndarray, shape (N,), int64
        """
        import torch
        from torch import nn

        if len(y) == 0:
            nan = float("nan")
            return {"val_loss": nan, "val_accuracy": nan, "val_macro_f1": nan, "val_balanced_accuracy": nan}
        log_probs = torch.log(torch.from_numpy(scores).clamp_min(1e-12)).to(device)
        loss = nn.functional.nll_loss(
            log_probs, torch.from_numpy(y).to(device), weight=criterion.weight
        ).item()
        result = metrics.summary(y, scores.argmax(axis=1), len(self.class_names), scores)
        return {
            "val_loss": loss,
            "val_accuracy": result["accuracy"],
            "val_macro_f1": result["macro_f1"],
            "val_balanced_accuracy": result["balanced_accuracy"],
        }

    def epoch_summary(self, entry: dict) -> str:
        return (
            f"train loss {entry['train_loss']:.4f} acc {entry['train_accuracy']:.3f} | val loss "
            f"{entry['val_loss']:.4f} acc {entry['val_accuracy']:.3f} macro-F1 {entry['val_macro_f1']:.3f}"
        )

    def log_tensorboard(self, writer, entry: dict, scores: np.ndarray, y: np.ndarray, step: int) -> None:
        from train.plots import confusion_image

        writer.add_scalar("accuracy/train", entry["train_accuracy"], step)
        if len(y):  # a validated epoch
            writer.add_scalar("accuracy/validation", entry["val_accuracy"], step)
            writer.add_scalar("macro_f1/validation", entry["val_macro_f1"], step)
            confusion = metrics.confusion_matrix(y, scores.argmax(axis=1), len(self.class_names))
            image = confusion_image(confusion, self.class_names, f"validation, epoch {step}")
            writer.add_image("confusion/validation", image, step, dataformats="HWC")

    def report(self, y: np.ndarray, scores: np.ndarray, top_labels: np.ndarray) -> dict:
        """The test report as plain JSON-able data.

        Parameters
        ----------
        y : np.ndarray, shape (N,), int64 true classes
        scores : np.ndarray, shape (N, K), class probabilities
        """
        result = metrics.summary(y, scores.argmax(axis=1), len(self.class_names), scores)
        per_class = {
            name: {
                "precision": float(result["precision"][i]),
                "recall": float(result["recall"][i]),
                "f1": float(result["f1"][i]),
                "support": int(result["support"][i]),
            }
            for i, name in enumerate(self.class_names)
        }
        return {
            "num_samples": result["num_samples"],
            "accuracy": result["accuracy"],
            "balanced_accuracy": result["balanced_accuracy"],
            "macro_f1": result["macro_f1"],
            "top3_accuracy": result["top3_accuracy"],
            "class_names": list(self.class_names),
            "per_class": per_class,
            "confusion_matrix": result["confusion"].tolist(),
        }

    def format_table(self, report: dict) -> str:
        """A plain-text table of per-class scores and the headline metrics."""
        names = report["class_names"]
        width = max(len("balanced_accuracy"), *(len(n) for n in names))
        lines = [f"{'genre':<{width}}  precision  recall     f1  support"]
        for name in names:
            row = report["per_class"][name]
            lines.append(
                f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  "
                f"{row['support']:7d}"
            )
        lines.append("")
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "top3_accuracy"):
            lines.append(f"{key:<{width}}  {report[key]:.4f}")
        lines.append(f"{'samples':<{width}}  {report['num_samples']}")
        return "\n".join(lines)

    def save_plot(self, path, report: dict, model_name: str, split: str) -> None:
        from train.plots import save_confusion_png

        title = (
            f"{model_name} on {split} ({report['num_samples']} tracks): "
            f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}"
        )
        save_confusion_png(path, np.asarray(report["confusion_matrix"]), self.class_names, title)

    def implied_top_genre(self, probabilities: np.ndarray) -> str | None:
        """Single-label outputs are the top-level genres themselves: nothing more to say (None)."""
        return None


# --------------------------------------------------------------------------- multi-label


class MultiLabel(Task):
    """Every genre of the taxonomy: one sigmoid per kept genre, binary cross-entropy, mAP.

    Parameters
    ----------
    class_names : list of str
        The shard set's top-level genres (class index of ``label``).
    genre_table : list of dict
        The shard set's whole genre table (``{id, title, parent, top_level}``, column order of
        the ``genres`` rows).
    columns : list of int
        The table's columns the model outputs (the genres with enough training tracks), ascending.
    train_counts : list of int
        Training tracks per genre of the whole table.
    train_tracks : int
        Tracks in the training split (the label-frequency baseline's denominator).
    min_genre_tracks : int
        The threshold ``columns`` was chosen with.
    """

    name = "multilabel"
    dataset_target = "genres"
    train_metric = "hit_at_1"  # the highest-scoring genre is one of the track's
    plot_what = "per-genre AP plot"
    implies_top_genre = True  # predict names the top-level genre the genre scores imply

    def __init__(
        self,
        class_names: list[str],
        genre_table: list[dict],
        columns: list[int],
        train_counts: list[int],
        train_tracks: int,
        min_genre_tracks: int,
    ):
        if not columns:
            raise ConfigError(
                f"task multilabel: no genre has {min_genre_tracks} or more training tracks; "
                f"lower --min-genre-tracks"
            )
        self.class_names = list(class_names)
        self.genre_table = [dict(row) for row in genre_table]
        self.columns = [int(c) for c in columns]
        self.train_counts = [int(c) for c in train_counts]
        self.train_tracks = int(train_tracks)
        self.min_genre_tracks = int(min_genre_tracks)
        title_of = {row["id"]: row["title"] for row in self.genre_table}
        kept = [self.genre_table[c] for c in self.columns]
        self.top_level_titles = [title_of[row["top_level"]] for row in kept]
        # Outputs that are top-level genres, and their class index (implied top-level genre).
        self._top_outputs = [
            k for k, row in enumerate(kept) if row["parent"] == 0 and row["title"] in class_names
        ]
        self._top_classes = [self.class_names.index(kept[k]["title"]) for k in self._top_outputs]

    @property
    def output_names(self) -> list[str]:
        return [self.genre_table[c]["title"] for c in self.columns]

    @property
    def dropped(self) -> list[dict]:
        """The genres left out of the outputs: ``{id, title, train_tracks}``, by id."""
        kept = set(self.columns)
        return [
            {"id": row["id"], "title": row["title"], "train_tracks": self.train_counts[j]}
            for j, row in enumerate(self.genre_table)
            if j not in kept
        ]

    def describe_outputs(self) -> str:
        """The outputs in a few words, for the log."""
        return f"{self.num_outputs} genres (multilabel)"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "class_names": self.class_names,
            "genre_table": self.genre_table,
            "columns": self.columns,
            "train_counts": self.train_counts,
            "train_tracks": self.train_tracks,
            "min_genre_tracks": self.min_genre_tracks,
        }

    def check_dataset(self, dataset) -> None:
        """ConfigError if the split's genre table is not the one the task was made with."""
        if dataset.genre_table != self.genre_table:
            raise ConfigError(
                f"{dataset.folder}: its genre table differs from the run's ({len(dataset.genre_table)} "
                f"genres against {len(self.genre_table)}); use the shard set the model was trained on"
            )

    def targets(self, y):
        """The kept genres' 0/1 targets (B, K) float32 of multi-hot rows (B, G) uint8 (torch)."""
        import torch

        return y.index_select(1, torch.as_tensor(self.columns, device=y.device)).float()

    def criterion(self, config, train_set, device):
        """Binary cross-entropy over the kept genres; label smoothing ``e`` makes the targets
        ``y (1 - e) + e / 2``."""
        import torch

        smoothing = float(config.label_smoothing)

        def loss(logits, targets):
            if smoothing:
                targets = targets * (1.0 - smoothing) + 0.5 * smoothing
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)

        return loss

    def probabilities(self, logits):
        """Sigmoid probabilities (B, K) float32 of logits (B, K) (torch): one per genre, independent."""
        import torch

        return torch.sigmoid(logits.float())

    def probabilities_np(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def correct(self, logits, y):
        """Samples whose highest-scoring genre is one of theirs (a 0-d tensor)."""
        targets = self.targets(y)
        return targets.gather(1, logits.argmax(dim=1, keepdim=True)).sum().long()

    def balance_groups(self, dataset) -> np.ndarray:
        """What ``--sampling balanced`` balances: the top-level genres, the tracks without one
        (label -1) as one more group."""
        return dataset.labels + 1

    def init_head(self, model) -> None:
        """Start a new model at the label-frequency baseline: the output layer's bias set to the log-odds
        of each genre's training frequency (with a bias of 0 every genre starts at p = 0.5, and a
        short run spends its steps unlearning that instead of learning the genres)."""
        import torch

        from train.models import output_layers

        freq = np.clip(self.frequency_scores(1)[0], 1e-4, 1 - 1e-4)
        with torch.no_grad():
            for last in output_layers(model):  # every member's, for an ensemble
                last.bias.copy_(torch.as_tensor(np.log(freq / (1 - freq)), dtype=last.bias.dtype))

    def implied_top_classes(self, scores: np.ndarray) -> np.ndarray:
        """The top-level genre the scores imply: the class of the highest-scoring top-level genre.

        Returns np.ndarray (N,) int64 of class indices (-1 when no top-level genre is an output).
        """
        if not self._top_outputs:
            return np.full(len(scores), -1, dtype=np.int64)
        best = np.asarray(scores)[:, self._top_outputs].argmax(axis=1)
        return np.asarray(self._top_classes, dtype=np.int64)[best]

    def implied_top_genre(self, probabilities: np.ndarray) -> str | None:
        """The top-level genre one track's probabilities (K,) imply (None if none is an output)."""
        cls = int(self.implied_top_classes(np.asarray(probabilities)[None])[0])
        return None if cls < 0 else self.class_names[cls]

    def _scores(self, y: np.ndarray, scores: np.ndarray, top_labels: np.ndarray) -> dict:
        """The ranking metrics of the kept genres and the implied top-genre accuracy."""
        y = np.asarray(y)[:, self.columns]
        result = metrics.multilabel_summary(y, scores)
        labelled = np.asarray(top_labels) >= 0
        implied = self.implied_top_classes(scores)
        result["top_genre_tracks"] = int(labelled.sum())
        result["top_genre_accuracy"] = (
            float((implied[labelled] == np.asarray(top_labels)[labelled]).mean())
            if labelled.any()
            else float("nan")
        )
        return result

    def frequency_scores(self, n: int) -> np.ndarray:
        """The label-frequency baseline: every track gets each kept genre's training frequency, (n, K)."""
        freq = np.asarray(self.train_counts, dtype=np.float64)[self.columns] / max(self.train_tracks, 1)
        return np.tile(freq, (n, 1))

    def validation_metrics(self, criterion, scores: np.ndarray, y: np.ndarray, top_labels, device) -> dict:
        """Validation binary cross-entropy, macro and micro mAP, macro ROC-AUC, implied top-genre accuracy.

        Parameters
        ----------
        scores : np.ndarray, shape (N, K), sigmoid probabilities of the kept genres
        y : np.ndarray, shape (N, G), uint8 multi-hot rows over the whole table
        top_labels : np.ndarray, shape (N,), the tracks' top-level classes (-1: none)
        """
        keys = ("val_loss", "val_macro_map", "val_micro_map", "val_macro_auc", "val_top_genre_accuracy")
        if len(y) == 0:
            return {k: float("nan") for k in keys}
        targets = np.asarray(y)[:, self.columns].astype(np.float64)
        p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
        loss = float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())
        result = self._scores(y, scores, top_labels)
        return dict(
            zip(
                keys,
                (
                    loss,
                    result["macro_map"],
                    result["micro_map"],
                    result["macro_auc"],
                    result["top_genre_accuracy"],
                ),
                strict=True,
            )
        )

    def epoch_summary(self, entry: dict) -> str:
        return (
            f"train loss {entry['train_loss']:.4f} hit@1 {entry['train_hit_at_1']:.3f} | val loss "
            f"{entry['val_loss']:.4f} mAP {entry['val_macro_map']:.3f} (micro {entry['val_micro_map']:.3f}) "
            f"top-genre acc {entry['val_top_genre_accuracy']:.3f}"
        )

    def log_tensorboard(self, writer, entry: dict, scores: np.ndarray, y: np.ndarray, step: int) -> None:
        writer.add_scalar("hit_at_1/train", entry["train_hit_at_1"], step)
        if len(y):  # a validated epoch
            writer.add_scalar("map/validation", entry["val_macro_map"], step)
            writer.add_scalar("micro_map/validation", entry["val_micro_map"], step)
            writer.add_scalar("auc/validation", entry["val_macro_auc"], step)
            writer.add_scalar("top_genre_accuracy/validation", entry["val_top_genre_accuracy"], step)

    def report(self, y: np.ndarray, scores: np.ndarray, top_labels: np.ndarray) -> dict:
        """The test report: mAP (macro over genres with a positive test track, and micro), macro
        ROC-AUC, per-genre AP / AUC / support, the implied top-genre accuracy, the label-frequency
        baseline on the same tracks, and the genres left out.

        Parameters
        ----------
        y : np.ndarray, shape (N, G), uint8 multi-hot rows over the whole genre table
        scores : np.ndarray, shape (N, K), sigmoid probabilities of the kept genres
        top_labels : np.ndarray, shape (N,), the tracks' top-level classes (-1: none)
        """
        result = self._scores(y, scores, top_labels)
        baseline = metrics.multilabel_summary(np.asarray(y)[:, self.columns], self.frequency_scores(len(y)))
        kept = [self.genre_table[c] for c in self.columns]

        def number(x):
            return None if not np.isfinite(x) else float(x)

        per_genre = {
            row["title"]: {
                "id": row["id"],
                "top_level": self.top_level_titles[k],
                "ap": number(result["ap"][k]),
                "auc": number(result["auc"][k]),
                "support": int(result["support"][k]),
                "train_tracks": self.train_counts[self.columns[k]],
            }
            for k, row in enumerate(kept)
        }
        return {
            "task": self.name,
            "num_samples": result["num_samples"],
            "macro_map": result["macro_map"],
            "micro_map": result["micro_map"],
            "macro_auc": result["macro_auc"],
            "genres_scored": result["labels_scored"],
            "top_genre_accuracy": result["top_genre_accuracy"],
            "top_genre_tracks": result["top_genre_tracks"],
            "frequency_baseline": {
                "macro_map": baseline["macro_map"],
                "micro_map": baseline["micro_map"],
                "macro_auc": baseline["macro_auc"],
            },
            "genres": self.output_names,
            "per_genre": per_genre,
            "min_genre_tracks": self.min_genre_tracks,
            "dropped_genres": self.dropped,
        }

    def format_table(self, report: dict) -> str:
        """Per-genre AP, AUC and support (best AP first), then the headline figures and the baseline."""
        rows = report["per_genre"]
        width = max(len("frequency baseline mAP"), *(len(n) for n in rows))
        order = sorted(rows, key=lambda n: -1.0 if rows[n]["ap"] is None else -rows[n]["ap"])
        lines = [f"{'genre':<{width}}     AP    AUC  support  top-level genre"]
        for name in order:
            row = rows[name]
            ap = "    -" if row["ap"] is None else f"{row['ap']:5.3f}"
            auc = "    -" if row["auc"] is None else f"{row['auc']:5.3f}"
            lines.append(f"{name:<{width}}  {ap}  {auc}  {row['support']:7d}  {row['top_level']}")
        base = report["frequency_baseline"]
        lines += [
            "",
            f"{'macro mAP':<{width}}  {report['macro_map']:.4f}  ({report['genres_scored']} genres with a "
            f"positive track)",
            f"{'micro mAP':<{width}}  {report['micro_map']:.4f}",
            f"{'macro ROC-AUC':<{width}}  {report['macro_auc']:.4f}",
            f"{'top-genre accuracy':<{width}}  {report['top_genre_accuracy']:.4f}  (implied by the scores, "
            f"{report['top_genre_tracks']} tracks with a top-level genre)",
            f"{'frequency baseline mAP':<{width}}  {base['macro_map']:.4f}  (micro {base['micro_map']:.4f}: "
            f"every genre scored by its training frequency)",
            f"{'samples':<{width}}  {report['num_samples']}",
        ]
        if report["dropped_genres"]:
            lines.append(
                f"left out (< {report['min_genre_tracks']} training tracks): "
                + ", ".join(f"{d['title']} ({d['train_tracks']})" for d in report["dropped_genres"])
            )
        return "\n".join(lines)

    def save_plot(self, path, report: dict, model_name: str, split: str) -> None:
        from train.plots import save_genre_ap_png

        rows = [report["per_genre"][n] for n in report["genres"]]
        title = (
            f"{model_name} on {split} ({report['num_samples']} tracks): macro mAP {report['macro_map']:.3f} "
            f"(label-frequency baseline {report['frequency_baseline']['macro_map']:.3f})"
        )
        save_genre_ap_png(
            path,
            np.array([np.nan if r["ap"] is None else r["ap"] for r in rows]),
            report["genres"],
            [r["top_level"] for r in rows],
            np.array([r["support"] for r in rows]),
            title,
        )


# --------------------------------------------------------------------------- building a task


def build_task(name: str, class_names: list[str], train_set, min_genre_tracks: int = 1) -> Task:
    """The task of a new run, from its training split (a :class:`train.dataset.ShardDataset`
    opened with the task's ``dataset_target``)."""
    if name not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {name!r}")
    if name == "single":
        return SingleLabel(class_names)
    counts = np.asarray(train_set.genres.sum(axis=0), dtype=np.int64)
    columns = np.flatnonzero(counts >= max(1, int(min_genre_tracks))).tolist()
    return MultiLabel(
        class_names, train_set.genre_table, columns, counts.tolist(), len(train_set), min_genre_tracks
    )


def task_from_dict(data: dict | None, class_names: list[str]) -> Task:
    """The inverse of ``Task.to_dict()`` (None, from a checkpoint made before tasks: single)."""
    data = data or {"name": "single"}
    if data.get("name") == "single":
        return SingleLabel(class_names)
    if data.get("name") == "multilabel":
        return MultiLabel(
            data.get("class_names", class_names),
            data["genre_table"],
            data["columns"],
            data["train_counts"],
            data["train_tracks"],
            data["min_genre_tracks"],
        )
    raise ConfigError(
        f"unknown task {data.get('name')!r} (known: {', '.join(TASKS)}); a newer version wrote it?"
    )


def task_from_checkpoint(checkpoint: dict) -> Task:
    """The task a checkpoint was trained for (its ``task`` entry; single if it has none)."""
    return task_from_dict(checkpoint.get("task"), checkpoint["class_names"])
