"""ONNX export: ``python -m train export --run RUN --onnx model.onnx``.

The exported graph takes the raw log-mel images of the checkpoint's recipe (the
fine recipe for a model of the fine image), exactly what the features stage
computes, and gives the probabilities and the penultimate-layer embeddings::

    input   mel            float32 (batch, 1, n_mels, n_frames)   log-mel in dB, not normalised
    output  probabilities  float32 (batch, num_classes)           softmax (sigmoid: multi-label)
    output  embedding      float32 (batch, embedding_dim)
    output  logits         float32 (batch, num_classes)           whole-image models only

A chunk model (``crop_frames`` shorter than the image, e.g. ``shortchunk`` on the
1271-frame fine image) is exported with its chunk scoring inside the graph: the
image is cut into the chunks :func:`train.chunks.chunk_starts` plans (the same
starts, fixed by ``n_frames``), and ``probabilities`` and ``embedding`` are the
means of the chunks' softmax probabilities and embeddings, as ``train test`` and
``predict`` score it. Its logits are per chunk and are not an output.

The batch axis is dynamic; ``n_frames`` is fixed by the recipe. The per-band
normalisation stored in the checkpoint is folded into the graph (a subtraction
and a division before the first layer), so a consumer only needs the recipe to
make inputs. The model's metadata (``metadata_props``) holds, as JSON strings:

``fma_genre.class_names``    the output names, in output order (the top-level genres; the genres of a
                             multi-label model)
``fma_genre.task``           the task (``train.tasks``): ``{"name": "single"}``, or the multi-label
                             task with its genre table (probabilities: softmax / sigmoid of the logits)
``fma_genre.recipe``         the feature recipe of the input image (``preprocess.recipe.Recipe`` fields)
``fma_genre.image``          the shard dataset holding such images (``mel`` or ``mel_fine``)
``fma_genre.crop_frames``    the chunk length in frames (``n_frames``: one chunk, the whole image)
``fma_genre.model``          the model name, classes and options
``fma_genre.normalization``  ``"folded"`` (or ``"none"`` when the run had none)
``fma_genre.source``         the checkpoint it was exported from, and its epoch

Needs the ``onnx`` extra (``pip install -e '.[onnx]'``: onnx, onnxscript for
torch's exporter, onnxruntime to run the result).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from shards import atomic_path
from train.checkpoint import BEST, load_checkpoint
from train.chunks import mean_over_chunks, split_chunks
from train.inference import chunk_frames_of, load_model
from train.normalization import standardize
from train.scorers import ONNX_INPUT as INPUT_NAME
from train.scorers import ONNX_METADATA_PREFIX as METADATA_PREFIX
from train.scorers import ONNX_OUTPUTS as OUTPUT_NAMES
from train.scorers import require_onnx
from train.tasks import task_from_checkpoint

OPSET = 18


class NormalizedModel(nn.Module):
    """``model`` behind the checkpoint's normalisation and chunk scoring: raw log-mel images in,
    (probabilities, embedding[, logits]) out.

    Parameters
    ----------
    model : nn.Module
        A model of :mod:`train.models` (with ``embed`` and ``classify``), in eval mode.
    normalization : dict or None
        ``{"mean": (n_mels,), "std": (n_mels,)}`` tensors, or None for identity.
    n_mels : int
    crop_frames : int or None
        Score an image as the mean over its chunks of this many frames (:mod:`train.chunks`);
        None: the whole image, one chunk, and the logits are an output too.
    multilabel : bool
        Probabilities by one sigmoid per output (a multi-label model), not a softmax.
    """

    def __init__(
        self,
        model: nn.Module,
        normalization: dict | None,
        n_mels: int = 128,
        crop_frames: int | None = None,
        multilabel: bool = False,
    ):
        super().__init__()
        self.model = model
        self.crop_frames = crop_frames
        self.multilabel = multilabel
        mean = torch.zeros(n_mels) if normalization is None else normalization["mean"].float()
        std = torch.ones(n_mels) if normalization is None else normalization["std"].float()
        self.register_buffer("mean", mean.reshape(-1).clone())
        self.register_buffer("std", std.reshape(-1).clone())

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 1, n_mels, n_frames) dB -> probabilities (B, K), embedding (B, D)[, logits (B, K)]."""
        x = standardize(mel, {"mean": self.mean, "std": self.std})
        if self.crop_frames is None:
            embedding = self.model.embed(x)
            logits = self.model.classify(embedding)
            return self.probabilities(logits), embedding, logits
        chunks, count = split_chunks(x, self.crop_frames)
        embedding = self.model.embed(chunks)
        probabilities = self.probabilities(self.model.classify(embedding))
        return mean_over_chunks(probabilities, count), mean_over_chunks(embedding, count)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def output_names(crop_frames: int | None) -> list[str]:
    """The graph's outputs, in order: a chunk model has no logits."""
    return list(OUTPUT_NAMES) if crop_frames is None else list(OUTPUT_NAMES[:2])


def onnx_metadata(checkpoint: dict, source: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (JSON strings), from a checkpoint."""
    task = task_from_checkpoint(checkpoint)
    return {
        METADATA_PREFIX + "class_names": json.dumps(task.output_names),
        METADATA_PREFIX + "task": json.dumps(task.to_dict()),
        METADATA_PREFIX + "recipe": json.dumps(checkpoint["recipe"]),
        METADATA_PREFIX + "image": json.dumps(checkpoint["config"].get("image") or "mel"),
        METADATA_PREFIX + "crop_frames": json.dumps(chunk_frames_of(checkpoint)),
        METADATA_PREFIX + "model": json.dumps(checkpoint["model"]),
        METADATA_PREFIX + "normalization": "none" if checkpoint.get("normalization") is None else "folded",
        METADATA_PREFIX + "source": json.dumps({"checkpoint": source, "epoch": checkpoint.get("epoch")}),
    }


def export_onnx(checkpoint: dict, out: str | os.PathLike, source: str = "") -> Path:
    """Write the checkpoint's model as an ONNX file (atomically).

    Parameters
    ----------
    checkpoint : dict
        As :func:`train.checkpoint.load_checkpoint` returns it.
    out : path-like
        The ``.onnx`` file to write; replaced only once the new one is complete.
    source : str
        Where the checkpoint came from, recorded in the metadata.

    Returns
    -------
    Path of the written file.
    """
    onnx = require_onnx("onnx")
    require_onnx("onnxscript")  # torch's exporter needs it
    out = Path(out)
    recipe = checkpoint["recipe"]
    n_mels, n_frames = int(recipe.get("n_mels", 128)), int(recipe.get("n_frames", 128))
    crop_frames = chunk_frames_of(checkpoint)
    crop_frames = None if crop_frames >= n_frames else crop_frames
    multilabel = task_from_checkpoint(checkpoint).name == "multilabel"
    wrapped = NormalizedModel(
        load_model(checkpoint, torch.device("cpu")),
        checkpoint.get("normalization"),
        n_mels,
        crop_frames,
        multilabel,
    ).eval()
    example = torch.zeros(2, 1, n_mels, n_frames)
    # The exporter warns that torchvision's operators are not registered: not ours to care about.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with atomic_path(out) as tmp:
        program = torch.onnx.export(
            wrapped,
            (example,),
            input_names=[INPUT_NAME],
            output_names=output_names(crop_frames),
            dynamic_shapes={"mel": {0: torch.export.Dim("batch")}},
            opset_version=OPSET,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
        proto = program.model_proto
        for key, value in onnx_metadata(checkpoint, source).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
    return out


def run_export(run: str, onnx_path: str, checkpoint_name: str = BEST) -> Path:
    """The ``export`` command: load RUN/CHECKPOINT, write ONNX_PATH, print what was written."""
    source = Path(run) / checkpoint_name
    checkpoint = load_checkpoint(source)
    path = export_onnx(checkpoint, onnx_path, source=str(source))
    n_frames, crop_frames = int(checkpoint["recipe"].get("n_frames", 128)), chunk_frames_of(checkpoint)
    chunks = f", scored by chunks of {crop_frames} frames" if crop_frames < n_frames else ""
    outputs = task_from_checkpoint(checkpoint).describe_outputs()
    print(
        f"{path}: {checkpoint['model']['name']} model, {outputs}, "
        f"input {INPUT_NAME} (batch, 1, {checkpoint['recipe'].get('n_mels', 128)}, {n_frames}) log-mel dB"
        f"{chunks}, outputs {', '.join(output_names(crop_frames if chunks else None))}"
    )
    return path
