"""Model shapes and parameter counts; ensembles of them."""

import copy

import pytest
import torch
from torch import nn

from train.models import MODELS, Ensemble, ModelConfig, SeedCNN, build_model, count_parameters, per_member


def test_seed_model_has_the_reference_layers_and_parameter_count():
    model = SeedCNN(num_classes=16)
    assert count_parameters(model) == 241_472
    convs = [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert convs == [
        (1, 8, (3, 3), (1, 1), (1, 1)),
        (8, 16, (3, 3), (1, 1), (1, 1)),
        (16, 32, (3, 3), (1, 1), (1, 1)),
        (32, 64, (3, 3), (1, 1), (1, 1)),
        (64, 64, (2, 2), (2, 2), (0, 0)),
    ]
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(1024, 192), (192, 16)]
    assert [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == [8, 16, 32, 64, 64]
    assert [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [192]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    model.eval()
    assert model.features(torch.zeros(2, 1, 128, 128)).shape == (2, 64, 4, 4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_map_images_to_logits(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name, num_classes=5)).eval()
    out = model(torch.randn(3, 1, 128, 128))
    assert out.shape == (3, 5) and torch.isfinite(out).all()


def test_resnet_parameter_count_is_the_documented_one():
    assert count_parameters(build_model(ModelConfig("resnet", 16))) == 1_234_032


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model(ModelConfig("vgg", 16))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_embed_is_the_input_of_the_last_layer(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name, num_classes=5)).eval()
    x = torch.randn(4, 1, 128, 128)
    with torch.no_grad():
        embedding = model.embed(x)
        assert embedding.shape == (4, model.embedding_dim)
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        torch.testing.assert_close(last(embedding), model(x), rtol=0, atol=0)
        torch.testing.assert_close(model.classify(embedding), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["seed", "resnet"])
def test_group_norm_models_treat_each_sample_alone(name):
    """norm=group: no BatchNorm left, same parameter count, and in training mode a sample's logits do
    not depend on the rest of its batch (what makes data-parallel ranks on CPU equal one process)."""
    torch.manual_seed(0)
    grouped = build_model(ModelConfig(name, 5, {"norm": "group"})).train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in grouped.modules())
    assert count_parameters(grouped) == count_parameters(build_model(ModelConfig(name, 5)))
    if name == "resnet":
        grouped.head[0].p = 0.0  # dropout would draw other masks for other batch sizes
    x = torch.randn(6, 1, 128, 128)
    whole, half = grouped(x), grouped(x[:3])
    torch.testing.assert_close(half, whole[:3], atol=1e-5, rtol=1e-4)
    batch = build_model(ModelConfig(name, 5)).train()
    assert not torch.allclose(batch(x[:3]), batch(x)[:3], atol=1e-3)


@pytest.mark.parametrize("freq_pools, bins", [(7, 1), (4, 8), (0, 128)])
def test_shortchunk_takes_any_width_and_keeps_freq_pools_positions(freq_pools, bins):
    torch.manual_seed(0)
    model = build_model(ModelConfig("shortchunk", 5, {"width": 8, "freq_pools": freq_pools})).eval()
    assert model.freq_bins == bins
    assert model.features(torch.zeros(1, 1, 128, 128)).shape[2] == bins
    for frames in (64, 128, 300):  # global pooling over time: any chunk length
        assert model(torch.randn(2, 1, 128, frames)).shape == (2, 5)
    assert model.project[0].in_features == 2 * 4 * 8 * bins  # max and mean over time, per position


def test_shortchunk_options_are_checked():
    with pytest.raises(ValueError, match="freq_pools"):
        build_model(ModelConfig("shortchunk", 5, {"freq_pools": 8}))


def test_an_ensemble_scores_with_the_mean_of_its_members_logits():
    torch.manual_seed(0)
    model = build_model(ModelConfig("seed", 5, {"members": 2}))
    assert isinstance(model, Ensemble) and len(model.members) == 2 and model.embedding_dim == 2 * 192
    first, second = (dict(m.named_parameters()) for m in model.members)
    assert not torch.equal(first["features.0.weight"], second["features.0.weight"])  # own initial weights
    assert count_parameters(model) == 2 * count_parameters(SeedCNN(5))
    x = torch.randn(4, 1, 128, 128)
    model.train()
    torch.testing.assert_close(model(x), torch.cat([m(x) for m in model.members]))  # (M * B, K)
    model.eval()
    with torch.no_grad():
        mean = torch.stack([m(x) for m in model.members]).mean(dim=0)
        embedding = model.embed(x)
        assert embedding.shape == (4, 384)
        torch.testing.assert_close(model(x), mean)
        torch.testing.assert_close(model.classify(embedding), mean)
        assert not torch.allclose(model(x), model.members[0](x), atol=1e-3)
    assert not isinstance(build_model(ModelConfig("seed", 5, {"members": 1})), Ensemble)
    with pytest.raises(ValueError, match="members must be >= 1"):
        build_model(ModelConfig("seed", 5, {"members": 0}))


@pytest.mark.parametrize("soft", [False, True])
def test_each_member_of_an_ensemble_steps_as_it_would_alone(soft):
    """SGD on the ensemble moves member 0 exactly as SGD on a copy of it trained alone on the same
    batches (the loss stepped on is the members' sum, not their mean: plain SGD would halve it)."""
    from train.loop import batch_loss

    torch.manual_seed(0)
    ensemble = build_model(ModelConfig("seed", 3, {"members": 2})).train()
    alone = copy.deepcopy(ensemble.members[0])
    start = copy.deepcopy(alone.state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ensemble, alone)]
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(6, 1, 128, 128, generator=generator)
        y = torch.randint(0, 3, (6,), generator=generator)
        targets = torch.softmax(torch.randn(6, 3, generator=generator), dim=1) if soft else y
        for model, optimizer in zip((ensemble, alone), optimizers, strict=True):
            step_loss, loss, logits = batch_loss(model, criterion, x, targets)
            assert logits.shape == (6, 3)
            optimizer.zero_grad()
            step_loss.backward()
            optimizer.step()
    moved = alone.state_dict()
    assert not torch.equal(moved["classifier.4.weight"], start["classifier.4.weight"])
    for key, value in ensemble.members[0].state_dict().items():
        torch.testing.assert_close(value, moved[key], rtol=1e-5, atol=1e-6, msg=key)


def test_per_member_repeats_the_targets_once_per_block_of_logits():
    logits = torch.arange(24.0).view(6, 4)  # 2 members x 3 samples
    targets, mean = per_member(torch.tensor([0, 1, 2]), logits)
    assert targets.tolist() == [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(mean, (logits[:3] + logits[3:]) / 2)
    soft, _ = per_member(torch.eye(4)[:3], logits)
    assert soft.shape == (6, 4) and torch.equal(soft[3:], torch.eye(4)[:3])
    same, unchanged = per_member(torch.tensor([0, 1, 2, 3, 0, 1]), logits)
    assert unchanged is logits and same.tolist() == [0, 1, 2, 3, 0, 1]
    with pytest.raises(ValueError, match="7 rows of logits for a batch of 3"):
        per_member(torch.tensor([0, 1, 2]), torch.zeros(7, 4))


def test_models_run_channels_last_on_the_cpu_too():
    """place_model / prepare_input: channels-last weights and batches on the CPU, the same outputs."""
    from train.inference import place_model, prepare_input

    torch.manual_seed(0)
    model = build_model(ModelConfig("shortchunk", 5, {"width": 8})).eval()
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        before = model(x)
        placed = place_model(model, torch.device("cpu"))
        convs = [m.weight for m in placed.modules() if isinstance(m, nn.Conv2d)]
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        assert not all(w.is_contiguous() for w in convs)  # the default layout is not what it has
        assert prepare_input(x, torch.device("cpu")).is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(
            placed(prepare_input(x, torch.device("cpu"))), before, rtol=1e-4, atol=1e-5
        )
