"""The reference recipe written plainly with librosa: what our images are checked against."""

from __future__ import annotations

import librosa
import numpy as np


def plain_librosa(y: np.ndarray, sr: int, n_frames: int = 128) -> np.ndarray:
    """Log-mel image (128, n_frames) of ``y`` as the reference project computed it.

    Parameters
    ----------
    y : np.ndarray, shape (n,) or (channels, n)
        As ``librosa.load(path, sr=None)`` returns it (longer clips are cut to 29.5 s).
    sr : int
    n_frames : int
        128: the reference image; 1271: the fine one (the same recipe with more frames).
    """
    if y.ndim == 2:
        y = librosa.to_mono(y)
    y = y[: int(29.5 * sr)]
    if sr < 22050:
        y = librosa.resample(y, orig_sr=sr, target_sr=22050)
        sr = 22050
    hop = int(sr * 29.5 / n_frames) + 1
    # The recipe's frame count is n_frames whatever the rate: where 29.5 s gives librosa one frame
    # fewer (the last frame's centre lies past the clip), the clip is padded with silence for it.
    y = np.concatenate([y, np.zeros(max((n_frames - 1) * hop - y.size, 0), y.dtype)])
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2 * hop, hop_length=hop, n_mels=128, fmax=11025)
    return librosa.power_to_db(S[:, :n_frames])
