"""The recipe: plain data, and the pure function waveform -> image, checked against librosa."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.recipe import RECIPES, Recipe, TooShortError, mel_image
from tests._reference import plain_librosa


def music(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    y = 0.3 * np.sin(2 * np.pi * (220 + 200 * t) * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)
    y = y + 0.02 * rng.standard_normal(t.shape)
    y = y.astype(np.float32)
    return y if channels == 1 else np.stack([y, 0.5 * y[::-1]]).astype(np.float32)


@pytest.mark.parametrize("sr,channels", [(44100, 2), (48000, 1), (22050, 2), (16000, 1)])
def test_matches_plain_librosa(sr, channels):
    y = music(sr, 30.0, channels)
    ours = mel_image(y, sr)
    assert ours.shape == (128, 128) and ours.dtype == np.float32
    reference = plain_librosa(y, sr)
    assert reference.shape == (128, 128)
    assert np.abs(ours - reference).max() < 0.05  # the issue allows 0.5 dB


def test_hop_and_rates_follow_the_reference_formula():
    r = Recipe()
    assert (r.hop_length(44100), r.n_fft(44100)) == (10164, 20328)
    assert r.output_rate(16000) == 22050 and r.output_rate(48000) == 48000
    assert RECIPES["fixed22050"].output_rate(44100) == 22050
    assert mel_image(music(44100, 30.0), 44100, RECIPES["fixed22050"]).shape == (128, 128)


def test_silence_gives_finite_floor():
    image = mel_image(np.zeros((2, 44100 * 30), np.float32), 44100)
    assert np.isfinite(image).all()
    assert np.all(image == np.float32(-100.0))  # 10*log10(amin)


def test_short_clip_is_padded_with_silence_not_stretched():
    sr = 22050
    y = music(sr, 10.0)
    image = mel_image(y, sr)
    assert image.shape == (128, 128)
    padded = np.concatenate([y, np.zeros(int(29.5 * sr) - y.size, np.float32)])
    assert np.abs(image - plain_librosa(padded, sr)).max() < 0.05
    hop = Recipe().hop_length(sr)
    after = (y.size + hop) // hop + 1  # first frame whose window holds no signal
    assert np.all(image[:, after:] == image.max() - 80.0)  # the dB floor
    assert image[:, : after - 2].max() > image.max() - 80.0 + 10


def test_too_short_and_bad_waveforms_are_refused():
    with pytest.raises(TooShortError, match=r"too short: 1\.2 s < 5 s"):
        mel_image(np.ones(int(1.2 * 22050), np.float32) * 0.1, 22050)
    y = music(22050, 6.0)
    y[100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mel_image(y, 22050)
    with pytest.raises(ValueError, match="shape"):
        mel_image(np.zeros((2, 2, 10), np.float32), 22050)


def test_mono_is_the_channel_mean():
    y = music(44100, 30.0, channels=2)
    assert np.array_equal(mel_image(y, 44100), mel_image(y.mean(axis=0), 44100))


def test_recipe_is_plain_data():
    r = Recipe(name="x", sample_rate=16000, min_duration_s=3.0)
    assert Recipe.from_dict(r.to_dict()) == r
    assert isinstance(r.to_dict()["duration_s"], float)
    with pytest.raises(ValueError, match="unknown recipe fields"):
        Recipe.from_dict({**r.to_dict(), "hop": 3})
    with pytest.raises(ValueError):
        Recipe(min_duration_s=40.0)
    with pytest.raises(AttributeError):
        r.n_mels = 3  # frozen
