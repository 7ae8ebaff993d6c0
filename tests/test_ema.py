"""train.ema: the average differs from the raw weights, follows them, and is what inference loads."""

import pytest
import torch

from train.ema import WeightEMA, inference_state_dict
from train.models import ModelConfig, build_model


def _train_steps(model, ema, steps=5):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 1, 128, 128, generator=g)
        y = torch.randint(0, 4, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)


@pytest.mark.slow
def test_ema_weights_differ_from_raw_and_lie_between_start_and_end():
    torch.manual_seed(0)
    model = build_model(ModelConfig("seed", 4))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightEMA(model, decay=0.9)
    _train_steps(model, ema)
    raw, avg = model.state_dict(), ema.model.state_dict()
    w = "classifier.4.weight"
    assert not torch.allclose(avg[w], raw[w])
    assert not torch.allclose(avg[w], start[w])
    # the BatchNorm running statistics are averaged too, the batch counter copied
    assert not torch.allclose(avg["features.1.running_mean"], raw["features.1.running_mean"])
    assert int(avg["features.1.num_batches_tracked"]) == 5
    assert ema.updates == 5


def test_decay_warms_up():
    ema = WeightEMA(torch.nn.Linear(2, 2), decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.updates = 10_000
    assert ema.current_decay() == 0.999


def test_state_round_trip_and_inference_weights():
    model = build_model(ModelConfig("seed", 4))
    ema = WeightEMA(model, decay=0.5)
    _train_steps(model, ema, 2)
    state = ema.state_dict()
    other = WeightEMA(build_model(ModelConfig("seed", 4)), decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 2
    assert all(
        torch.equal(a, b)
        for a, b in zip(other.model.state_dict().values(), ema.model.state_dict().values(), strict=True)
    )
    raw = {k: v.cpu() for k, v in model.state_dict().items()}
    assert inference_state_dict({"state_dict": raw, "ema_state_dict": state}) is state["weights"]
    assert inference_state_dict({"state_dict": raw}) is raw


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(torch.nn.Linear(2, 2), decay=1.0)
