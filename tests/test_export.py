"""ONNX export: onnxruntime's logits and embeddings against PyTorch's, dynamic batch, metadata."""

import json

import numpy as np
import onnxruntime as ort  # the onnx extra is part of the dev install: missing, the tests fail
import pytest
import torch

from preprocess.recipe import Recipe
from tests._inference import make_checkpoint
from train.__main__ import main
from train.inference import load_model


def torch_outputs(checkpoint: dict, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings of the checkpoint's model on raw images (N, 1, 128, 128), normalised here."""
    model = load_model(checkpoint, torch.device("cpu"))
    mean = checkpoint["normalization"]["mean"].reshape(1, 1, 128, 1)
    std = checkpoint["normalization"]["std"].reshape(1, 1, 128, 1)
    with torch.no_grad():
        x = (torch.from_numpy(mel) - mean) / std
        return model(x).numpy(), model.embed(x).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seed", "resnet"])
def test_onnx_logits_match_pytorch(name, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = make_checkpoint(run / "best.pt", name)
    out = tmp_path / "model.onnx"
    assert main(["export", "--run", str(run), "--onnx", str(out)]) == 0
    assert str(out) in capsys.readouterr().out

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert inp.name == "mel" and not isinstance(inp.shape[0], int)  # a named, dynamic batch axis
    rng = np.random.default_rng(1)
    worst = 0.0
    for batch in (1, 3, 17):  # batch sizes other than the one exported with
        mel = rng.normal(-40, 15, size=(batch, 1, 128, 128)).astype(np.float32)
        logits, embedding = session.run(["logits", "embedding"], {"mel": mel})
        ref_logits, ref_embedding = torch_outputs(checkpoint, mel)
        assert logits.shape == (batch, 6)
        worst = max(worst, float(np.abs(logits - ref_logits).max()))
        np.testing.assert_allclose(embedding, ref_embedding, rtol=0, atol=1e-4)
        # The logits vary with the input, so agreeing is not trivial.
        assert ref_logits.std() > 1e-2
    print(f"{name}: max abs logit difference onnxruntime vs PyTorch {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.slow
def test_onnx_metadata_holds_class_names_and_recipe(tmp_path):
    from train.scorers import read_onnx_metadata

    run = tmp_path / "run"
    run.mkdir()
    checkpoint = make_checkpoint(run / "best.pt", "seed", num_classes=4)
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(run), "--onnx", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = read_onnx_metadata(session, out)
    assert meta["class_names"] == checkpoint["class_names"]
    assert Recipe.from_dict(meta["recipe"]) == Recipe()
    assert meta["normalization"] == "folded" and meta["model"]["name"] == "seed"
    raw = session.get_modelmeta().custom_metadata_map
    assert json.loads(raw["fma_genre.class_names"]) == ["genre0", "genre1", "genre2", "genre3"]


def test_export_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path / "nope"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint here" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()
