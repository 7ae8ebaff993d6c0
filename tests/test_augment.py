"""train.augment: each augmentation really changes the batch the way it says, seeded."""

import numpy as np
import pytest
import torch

from train.augment import AugmentSettings, augment_batch, batch_seed, circular_shift, span_masks


def _batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 128, 128, generator=g) + 3.0  # no exact zeros anywhere
    y = torch.arange(b) % 4
    return x, y


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


def test_nothing_enabled_returns_the_batch_unchanged():
    x, y = _batch()
    out, targets = augment_batch(x, y, 4, AugmentSettings(), _gen())
    assert not AugmentSettings().enabled
    assert torch.equal(out, x) and torch.equal(targets, y)


def test_frequency_mask_zeroes_whole_bands_and_nothing_else():
    x, y = _batch()
    s = AugmentSettings(freq_masks=2, freq_mask_width=20)
    out, targets = augment_batch(x, y, 4, s, _gen())
    assert torch.equal(targets, y)
    zero_bands = (out == 0).all(dim=3)[:, 0]  # (B, F): band zero over all frames
    assert zero_bands.any(dim=1).sum() >= 6  # most images got a masked band
    assert zero_bands.sum(dim=1).max() <= 40  # at most 2 masks of <= 20 bands
    kept = ~zero_bands.view(8, 1, 128, 1).expand_as(x)
    assert torch.equal(out[kept], x[kept])  # the rest untouched
    assert not (out == 0).all(dim=2).any()  # no time frame fully zeroed


def test_time_mask_zeroes_whole_frames():
    x, y = _batch()
    out, _ = augment_batch(x, y, 4, AugmentSettings(time_masks=1, time_mask_width=30), _gen())
    zero_frames = (out == 0).all(dim=2)[:, 0]
    assert zero_frames.any(dim=1).sum() >= 6
    assert zero_frames.sum(dim=1).max() <= 30
    assert not (out == 0).all(dim=3).any()


def test_span_masks_widths_stay_in_bounds():
    m = span_masks(500, 128, 3, 27, _gen(3))
    assert m.shape == (500, 128) and m.dtype == torch.bool
    assert m.sum(dim=1).max() <= 81 and m.any()
    assert not span_masks(4, 128, 0, 27, _gen()).any()


def test_circular_shift_rolls_each_image_by_its_own_amount():
    x, _ = _batch(3)
    out = circular_shift(x, torch.tensor([0, 5, -7]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], torch.roll(x[1], 5, dims=2))
    assert torch.equal(out[2], torch.roll(x[2], -7, dims=2))


def test_time_shift_moves_content_and_keeps_it():
    x, y = _batch()
    out, _ = augment_batch(x, y, 4, AugmentSettings(time_shift=0.5), _gen())
    assert not torch.equal(out, x)
    # a circular shift keeps every image's values (per band), only moves them in time
    assert torch.allclose(out.sort(dim=3).values, x.sort(dim=3).values)


def test_mixup_mixes_images_and_labels_with_the_same_weight():
    x, y = _batch()
    out, targets = augment_batch(x, y, 4, AugmentSettings(mixup_alpha=0.4), _gen(5))
    assert targets.shape == (8, 4) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    mixed = targets.max(dim=1).values < 1.0
    assert mixed.any()  # some rows really hold two labels
    # out_i = lam x_i + (1 - lam) x_j: recover lam from the own-label weight and check the image
    lam = targets[torch.arange(8), y]
    for i in range(8):
        if lam[i] < 1:
            rest = (out[i] - lam[i] * x[i]) / (1 - lam[i])
            assert any(torch.allclose(rest, x[j], atol=1e-3) for j in range(8))


def test_same_seed_same_batch_other_seed_other_batch():
    x, y = _batch()
    s = AugmentSettings(
        freq_masks=2, freq_mask_width=20, time_masks=2, time_mask_width=20, time_shift=0.3, mixup_alpha=0.3
    )
    a = augment_batch(x, y, 4, s, torch.Generator().manual_seed(batch_seed(0, 1, 2)))
    b = augment_batch(x, y, 4, s, torch.Generator().manual_seed(batch_seed(0, 1, 2)))
    c = augment_batch(x, y, 4, s, torch.Generator().manual_seed(batch_seed(0, 1, 3)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert len({batch_seed(0, 0, k) for k in range(100)}) == 100


@pytest.mark.parametrize("bad", [dict(freq_masks=-1), dict(time_shift=1.5), dict(mixup_alpha=-0.1)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AugmentSettings(**bad)


def test_loss_accepts_mixed_targets():
    x, y = _batch()
    _, targets = augment_batch(x, y, 4, AugmentSettings(mixup_alpha=1.0), _gen())
    logits = torch.randn(8, 4)
    loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, targets)
    manual = -(((targets * 0.9) + 0.1 / 4) * torch.log_softmax(logits, 1)).sum(1).mean()
    assert np.isclose(loss.item(), manual.item(), atol=1e-5)
