"""ONNX export: onnxruntime's outputs against PyTorch's (whole-image and chunk models), dynamic batch,
metadata."""

import json

import numpy as np
import onnxruntime as ort  # the onnx extra is part of the dev install: missing, the tests fail
import pytest
import torch

from preprocess.recipe import RECIPES, Recipe
from tests._inference import direct_scores, make_checkpoint
from train.__main__ import main
from train.inference import load_model

CHUNKS = {"image": "mel_fine", "crop_frames": 128}  # a chunk model's config: 10 chunks of the fine image


def torch_outputs(checkpoint: dict, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings of the checkpoint's model on raw images (N, 1, 128, 128), normalised here."""
    model = load_model(checkpoint, torch.device("cpu"))
    mean = checkpoint["normalization"]["mean"].reshape(1, 1, 128, 1)
    std = checkpoint["normalization"]["std"].reshape(1, 1, 128, 1)
    with torch.no_grad():
        x = (torch.from_numpy(mel) - mean) / std
        return model(x).numpy(), model.embed(x).numpy()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, recipe, config, options",
    [
        ("seed", "reference", {}, {}),
        ("resnet", "reference", {}, {}),
        ("shortchunk", "fine", CHUNKS, {}),
        ("shortchunk", "fine", CHUNKS, {"members": 2, "width": 8, "freq_pools": 4}),
    ],
)
def test_onnx_outputs_match_pytorch(name, recipe, config, options, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    recipe = RECIPES[recipe]
    checkpoint = make_checkpoint(
        run / "best.pt", name, recipe=recipe.to_dict(), config=config, options=options
    )
    out = tmp_path / "model.onnx"
    assert main(["export", "--run", str(run), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and ("chunks of 128 frames" in printed) == bool(config)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert inp.name == "mel" and not isinstance(inp.shape[0], int)  # a named, dynamic batch axis
    assert inp.shape[1:] == [1, 128, recipe.n_frames]
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == (["probabilities", "embedding"] if config else ["probabilities", "embedding", "logits"])
    rng = np.random.default_rng(1)
    worst = dict.fromkeys(outputs, 0.0)
    for batch in (1, 3, 17):  # batch sizes other than the one exported with
        mel = rng.normal(-40, 15, size=(batch, 1, 128, recipe.n_frames))
        mel = (mel + rng.normal(0, 10, size=(batch, 1, 128, 1))).astype(np.float32)  # images differ by band
        got = dict(zip(outputs, session.run(outputs, {"mel": mel}), strict=True))
        # By hand: normalised, cut into the planned chunks, each through the model, then averaged.
        probabilities, embedding = direct_scores(checkpoint, mel[:, 0])
        expected = {"probabilities": probabilities, "embedding": embedding}
        if not config:
            expected["logits"] = torch_outputs(checkpoint, mel)[0]
        assert got["probabilities"].shape == (batch, 6)
        for key, value in expected.items():
            worst[key] = max(worst[key], float(np.abs(got[key] - value).max()))
        if batch > 1:  # the outputs vary with the input, so agreeing is not trivial
            assert probabilities.std(axis=0).max() > 1e-2 and embedding.std(axis=0).max() > 1e-2
    print(
        f"{name}: max abs difference onnxruntime vs PyTorch "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    )
    assert max(worst.values()) <= 1e-4


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
    assert (meta["image"], meta["crop_frames"]) == ("mel", 128)
    raw = session.get_modelmeta().custom_metadata_map
    assert json.loads(raw["fma_genre.class_names"]) == ["genre0", "genre1", "genre2", "genre3"]


@pytest.mark.slow
def test_a_chunk_model_records_its_image_recipe_and_chunk_length(tmp_path):
    from train.scorers import OnnxScorer, read_onnx_metadata

    run = tmp_path / "run"
    run.mkdir()
    fine = RECIPES["fine"]
    make_checkpoint(run / "best.pt", "shortchunk", num_classes=4, recipe=fine.to_dict(), config=CHUNKS)
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(run), "--onnx", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = read_onnx_metadata(session, out)
    assert Recipe.from_dict(meta["recipe"]) == fine
    assert (meta["image"], meta["crop_frames"], meta["model"]["name"]) == ("mel_fine", 128, "shortchunk")
    scorer = OnnxScorer(out)
    assert (scorer.image, scorer.chunk_frames, scorer.recipe["n_frames"]) == ("mel_fine", 128, 1271)


def test_export_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path / "nope"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint here" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_a_file_exported_before_chunk_models_still_scores(tmp_path):
    import onnx

    from train.scorers import OnnxScorer

    run = tmp_path / "run"
    run.mkdir()
    checkpoint = make_checkpoint(run / "best.pt", "seed", num_classes=4)
    out = tmp_path / "new.onnx"
    assert main(["export", "--run", str(run), "--onnx", str(out)]) == 0
    # The earlier format: outputs logits and embedding only, no image or crop_frames metadata.
    proto = onnx.load(str(out))
    outputs = [o for o in proto.graph.output if o.name != "probabilities"]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    props = [p for p in proto.metadata_props if p.key not in ("fma_genre.image", "fma_genre.crop_frames")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    old = tmp_path / "old.onnx"
    onnx.save_model(proto, str(old))
    scorer = OnnxScorer(old)
    assert sorted(o.name for o in scorer.session.get_outputs()) == ["embedding", "logits"]
    assert (scorer.image, scorer.chunk_frames) == ("mel", 128)
    rng = np.random.default_rng(2)
    mel = (rng.normal(-40, 15, size=(5, 128, 128)) + rng.normal(0, 10, size=(5, 128, 1))).astype(np.float32)
    probabilities, embedding = scorer(mel)
    expected_probabilities, expected_embedding = direct_scores(checkpoint, mel)
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-4)
    np.testing.assert_allclose(embedding, expected_embedding, rtol=0, atol=1e-4)
