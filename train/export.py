"""ONNX export: ``python -m train export --run RUN --onnx model.onnx``.

The exported graph takes the raw log-mel images of the checkpoint's recipe,
exactly what the features stage computes, and gives the logits and the
penultimate-layer embeddings::

    input   mel        float32 (batch, 1, n_mels, n_frames)   log-mel in dB, not normalised
    output  logits     float32 (batch, num_classes)
    output  embedding  float32 (batch, embedding_dim)

The batch axis is dynamic. The per-band normalisation stored in the checkpoint
is folded into the graph (a subtraction and a division before the first layer),
so a consumer only needs the recipe to make inputs. The model's metadata
(``metadata_props``) holds, as JSON strings:

``fma_genre.class_names``    the output names, in logit order (the top-level genres; the genres of a
                             multi-label model)
``fma_genre.task``           the task (``train.tasks``): ``{"name": "single"}``, or the multi-label
                             task with its genre table (probabilities: softmax / sigmoid of the logits)
``fma_genre.recipe``         the feature recipe (``preprocess.recipe.Recipe`` fields)
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
from train.inference import load_model
from train.normalization import standardize
from train.scorers import ONNX_INPUT as INPUT_NAME
from train.scorers import ONNX_METADATA_PREFIX as METADATA_PREFIX
from train.scorers import ONNX_OUTPUTS as OUTPUT_NAMES
from train.scorers import require_onnx
from train.tasks import task_from_checkpoint

OPSET = 18


class NormalizedModel(nn.Module):
    """``model`` behind the checkpoint's normalisation: raw log-mel images in, (logits, embedding) out.

    Parameters
    ----------
    model : nn.Module
        A model of :mod:`train.models` (with ``embed`` and ``classify``), in eval mode.
    normalization : dict or None
        ``{"mean": (n_mels,), "std": (n_mels,)}`` tensors, or None for identity.
    """

    def __init__(self, model: nn.Module, normalization: dict | None, n_mels: int = 128):
        super().__init__()
        self.model = model
        mean = torch.zeros(n_mels) if normalization is None else normalization["mean"].float()
        std = torch.ones(n_mels) if normalization is None else normalization["std"].float()
        self.register_buffer("mean", mean.reshape(-1).clone())
        self.register_buffer("std", std.reshape(-1).clone())

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, n_mels, n_frames) dB -> logits (B, K), embedding (B, D)."""
        embedding = self.model.embed(standardize(mel, {"mean": self.mean, "std": self.std}))
        return self.model.classify(embedding), embedding


def onnx_metadata(checkpoint: dict, source: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (JSON strings), from a checkpoint."""
    task = task_from_checkpoint(checkpoint)
    return {
        METADATA_PREFIX + "class_names": json.dumps(task.output_names),
        METADATA_PREFIX + "task": json.dumps(task.to_dict()),
        METADATA_PREFIX + "recipe": json.dumps(checkpoint["recipe"]),
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
    wrapped = NormalizedModel(
        load_model(checkpoint, torch.device("cpu")), checkpoint.get("normalization"), n_mels
    ).eval()
    example = torch.zeros(2, 1, n_mels, n_frames)
    # The exporter warns that torchvision's operators are not registered: not ours to care about.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with atomic_path(out) as tmp:
        program = torch.onnx.export(
            wrapped,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
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
    outputs = task_from_checkpoint(checkpoint).describe_outputs()
    print(
        f"{path}: {checkpoint['model']['name']} model, {outputs}, "
        f"input {INPUT_NAME} (batch, 1, {checkpoint['recipe'].get('n_mels', 128)}, "
        f"{checkpoint['recipe'].get('n_frames', 128)}) log-mel dB, outputs {', '.join(OUTPUT_NAMES)}"
    )
    return path
