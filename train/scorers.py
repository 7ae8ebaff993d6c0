"""A model as ``predict`` and ``embed`` use it: raw log-mel images in, probabilities and embeddings out.

Two kinds, the same interface (:class:`Scorer`):

``TorchScorer``  a run's checkpoint, run by PyTorch (``--run RUN``) through
                 :mod:`train.inference`, standardised with the checkpoint's statistics;
``OnnxScorer``   a model written by ``python -m train export`` (``--onnx FILE``), run by
                 onnxruntime; the normalisation is inside the graph. This module imports
                 torch only for ``TorchScorer``, so ONNX prediction works where
                 torch is not installed.

Both know the task (``train.tasks``: single-label softmax or multi-label sigmoid), the names of
the outputs and the feature recipe the model was trained with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from shards.errors import FmaGenreError
from train.tasks import Task, task_from_checkpoint, task_from_dict

ONNX_METADATA_PREFIX = "fma_genre."
ONNX_INPUT = "mel"
#: The outputs of an exported model: a chunk model has the first two only (its logits are per chunk);
#: files exported before chunk models have logits and embedding only.
ONNX_OUTPUTS = ("probabilities", "embedding", "logits")


class OnnxError(FmaGenreError, ValueError):
    """The ONNX packages are missing, or a file is not a model written by ``train export``."""


def require_onnx(what: str = "onnx"):
    """Import and return the module ``what`` (onnx, onnxscript, onnxruntime), or say how to install it."""
    import importlib

    try:
        return importlib.import_module(what)
    except ImportError:
        raise OnnxError(
            f"{what} is not installed: `pip install -e '.[onnx]'` (or `pip install onnx "
            f"onnxscript onnxruntime`) to export and run ONNX models"
        ) from None


class Scorer(Protocol):
    """What the prediction driver needs from a model.

    ``class_names`` names the outputs (the top-level genres, or the genres of a multi-label model);
    ``task.class_names`` are the top-level genres of the shard set it was trained on.
    ``recipe`` is the recipe of the image the model reads (the fine recipe for a model of the
    fine image), ``image`` the shard dataset holding it (``mel`` or ``mel_fine``), and
    ``chunk_frames`` the chunk length it scores an image by (the image's width: one chunk).
    """

    class_names: list[str]
    recipe: dict
    image: str
    chunk_frames: int
    description: str
    task: Task

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw images (N, n_mels, n_frames) float32 -> probabilities (N, K), embeddings (N, D), float32."""


class TorchScorer:
    """A checkpoint's model on ``device_name`` (auto | cuda | cpu).

    ``threads``: torch's CPU threads for this process (``torch.set_num_threads``), or None to
    leave them. One is the right number for these small CNNs next to a decoding pool: with more,
    OpenMP threads wait on each other and a busy machine makes one image take 15x longer
    (bench/predict.py).
    """

    def __init__(
        self,
        checkpoint: dict,
        device_name: str = "cpu",
        source: str = "checkpoint",
        threads: int | None = None,
    ):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)

        from train.inference import chunk_frames_of, load_model, resolve_device
        from train.normalization import to_device

        self._torch = torch
        self.device = resolve_device(device_name)
        self.model = load_model(checkpoint, self.device)
        self.normalization = to_device(checkpoint.get("normalization"), self.device)
        self.task = task_from_checkpoint(checkpoint)
        self.class_names = self.task.output_names
        self.recipe = dict(checkpoint["recipe"])
        self.chunk_frames = chunk_frames_of(checkpoint)
        self.image = str(checkpoint["config"].get("image") or "mel")
        self.description = f"{source} ({checkpoint['model']['name']} model on {self.device})"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from train.inference import embed_batch
        from train.normalization import standardize

        step = len(images) if self.device.type == "cuda" else images_per_call(self)
        probabilities, embeddings = [], []
        for start in range(0, len(images), max(step, 1)):
            part = np.ascontiguousarray(images[start : start + step], dtype=np.float32)
            x = self._torch.from_numpy(part[:, None]).to(self.device)
            p, e = embed_batch(
                self.model,
                standardize(x, self.normalization),
                self.device,
                self.chunk_frames,
                probabilities=self.task.probabilities,
            )
            probabilities.append(p.cpu().numpy())
            embeddings.append(e.cpu().numpy())
        return joined(probabilities, embeddings, len(self.class_names))


#: On the CPU, at most this many chunks (or whole images) go through a model in one call: more
#: overflow the cache with the short-chunk CNN's activations (one thread: 3.3 ms per 128-frame
#: chunk 10 at a time, 4.6 ms 70 at a time, 5.0 ms 160 at a time).
CPU_CHUNKS_PER_CALL = 10


def images_per_call(scorer: Scorer) -> int:
    """Images per model call on the CPU: as many as keep the chunks within :data:`CPU_CHUNKS_PER_CALL`."""
    width = int(scorer.recipe.get("n_frames", 128))
    chunks = -(-width // scorer.chunk_frames)  # train.chunks.chunk_starts plans ceil(width / chunk) chunks
    return max(1, CPU_CHUNKS_PER_CALL // chunks)


def joined(probabilities: list, embeddings: list, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The parts of :meth:`Scorer.__call__`'s outputs concatenated ((0, K), (0, 0) when there are none)."""
    if not probabilities:
        return np.zeros((0, classes), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probabilities), np.concatenate(embeddings)


def is_chunked(scorer: Scorer) -> bool:
    """True when the model scores an image as the mean of shorter chunks (a chunk model)."""
    return scorer.chunk_frames < int(scorer.recipe.get("n_frames", 128))


def read_onnx_metadata(session, path: str | os.PathLike) -> dict:
    """Output names, task, recipe, image, chunk length and model description stored by ``train export``,
    from an onnxruntime session (files exported before tasks: single-label; before chunk models:
    image ``mel``, one chunk per image).

    Raises
    ------
    OnnxError
        If the file was not written by ``train export``.
    """
    props = session.get_modelmeta().custom_metadata_map
    missing = [k for k in ("class_names", "recipe") if ONNX_METADATA_PREFIX + k not in props]
    if missing:
        raise OnnxError(
            f"{path}: the ONNX model lacks the metadata {missing}; export it with "
            f"`python -m train export --run RUN --onnx FILE`"
        )
    recipe = json.loads(props[ONNX_METADATA_PREFIX + "recipe"])
    crop_frames = json.loads(props.get(ONNX_METADATA_PREFIX + "crop_frames", "null"))
    return {
        "class_names": json.loads(props[ONNX_METADATA_PREFIX + "class_names"]),
        "recipe": recipe,
        "image": json.loads(props.get(ONNX_METADATA_PREFIX + "image", '"mel"')),
        "crop_frames": int(crop_frames or recipe.get("n_frames", 128)),
        "model": json.loads(props.get(ONNX_METADATA_PREFIX + "model", "{}")),
        "normalization": props.get(ONNX_METADATA_PREFIX + "normalization", "none"),
        "task": json.loads(props.get(ONNX_METADATA_PREFIX + "task", '{"name": "single"}')),
    }


class OnnxScorer:
    """An exported model run by onnxruntime on the CPU with ``threads`` threads (0: onnxruntime's choice)."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        ort = require_onnx("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise OnnxError(
                f"{path}: no such ONNX file; write one with `python -m train export --run RUN --onnx {path}`"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise OnnxError(
                f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]}); "
                f"export it again with `python -m train export`"
            ) from None
        meta = read_onnx_metadata(self.session, path)
        self.task = task_from_dict(meta["task"], meta["class_names"])
        self.class_names, self.recipe = self.task.output_names, meta["recipe"]
        self.image, self.chunk_frames = meta["image"], meta["crop_frames"]
        self.description = f"{path} ({meta['model'].get('name', '?')} model on onnxruntime)"
        outputs = {o.name for o in self.session.get_outputs()}
        # Files exported before chunk models give logits and embedding only.
        self._outputs = list(ONNX_OUTPUTS[:2]) if ONNX_OUTPUTS[0] in outputs else ["logits", "embedding"]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        step = images_per_call(self)
        probabilities, embeddings = [], []
        for start in range(0, len(images), step):
            mel = np.ascontiguousarray(images[start : start + step], dtype=np.float32)[:, None]
            first, embedding = self.session.run(self._outputs, {ONNX_INPUT: mel})
            probabilities.append(self.task.probabilities_np(first) if self._outputs[0] == "logits" else first)
            embeddings.append(embedding.astype(np.float32, copy=False))
        return joined(probabilities, embeddings, len(self.class_names))
