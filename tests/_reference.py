"""The reference recipe written plainly with librosa: what our images are checked against."""

from __future__ import annotations

import librosa
import numpy as np


def plain_librosa(y: np.ndarray, sr: int) -> np.ndarray:
    """Log-mel image (128, 128) of ``y`` as the reference project computed it.

    Parameters
    ----------
    y : np.ndarray, shape (n,) or (channels, n)
        As ``librosa.load(path, sr=None)`` returns it (longer clips are cut to 29.5 s).
    sr : int
    """
    if y.ndim == 2:
        y = librosa.to_mono(y)
    y = y[: int(29.5 * sr)]
    if sr < 22050:
        y = librosa.resample(y, orig_sr=sr, target_sr=22050)
        sr = 22050
    hop = int(sr * 29.5 / 128) + 1
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2 * hop, hop_length=hop, n_mels=128, fmax=11025)
    return librosa.power_to_db(S)
