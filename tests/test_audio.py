"""Decoding: librosa.load's exact samples (libsndfile + mpg123), from paths and file objects; reasons."""

from __future__ import annotations

import io
import struct
import time

import lameenc
import librosa
import numpy as np
import pytest

from preprocess.audio import (
    AudioReader,
    TrackFailure,
    TrackTimeout,
    decode,
    is_digital_silence,
    mel_from_file,
    time_limit,
    track_image,
)
from preprocess.recipe import RECIPES, Recipe
from preprocess.synth.audio import add_xing_header
from tests._reference import plain_librosa

SR = 44100


def encode(y: np.ndarray, sr: int = SR, kbps: int = 320) -> bytes:
    """Real MP3 bytes (CBR, no Xing/LAME header) from mono float samples."""
    enc = lameenc.Encoder()
    enc.set_channels(2)
    enc.set_in_sample_rate(sr)
    enc.set_bit_rate(kbps)
    enc.set_quality(2)
    pcm = (np.clip(y, -1, 1) * 32767).astype("<i2")
    return enc.encode(np.stack([pcm, pcm[::-1]], 1).tobytes()) + enc.flush()


def lame_info_frame(stream: bytes, n_samples: int, delay: int = 1105) -> bytes:
    """A LAME 'Info' frame (gapless header: encoder delay and padding) for a 44.1 kHz stereo CBR stream.

    Decoders that honour it drop ``delay`` samples at the start and the padding at the end.
    """
    header = stream[:4]
    size = 144 * 320_000 // SR  # MPEG-1 layer III, 320 kbit/s, no padding bit
    frame = bytearray(size)
    frame[:4] = bytes([header[0], header[1], header[2] & 0xFD, header[3]])
    o = 4 + 32  # after the stereo side info
    n_frames = -(-(n_samples + delay) // 1152) + 1
    frame[o : o + 8] = b"Info" + struct.pack(">I", 0x0F)
    frame[o + 8 : o + 16] = struct.pack(">II", n_frames, len(stream) + size)
    frame[o + 16 : o + 116] = bytes(range(100))
    lame = o + 120
    frame[lame : lame + 9] = b"LAME3.100"
    padding = n_frames * 1152 - n_samples - delay
    frame[lame + 21 : lame + 24] = ((delay - 529) << 12 | padding).to_bytes(3, "big")
    return bytes(frame)


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    return (
        0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t) * (np.sin(2 * np.pi * 3 * t) > 0)
        + 0.05 * rng.standard_normal(t.size)
    ).astype(np.float32)


@pytest.fixture(scope="module")
def mp3s(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mp3")
    y = signal(8.0)
    stream = encode(y)
    (folder / "plain.mp3").write_bytes(stream)
    (folder / "gapless.mp3").write_bytes(lame_info_frame(stream, y.size) + stream)
    (folder / "xing.mp3").write_bytes(add_xing_header(stream))  # no encoder extension: mpg123 drops 529
    (folder / "short.mp3").write_bytes(encode(signal(1.2)))
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "noise.mp3").write_bytes(np.random.default_rng(1).integers(0, 255, 50_000, np.uint8).tobytes())
    return folder, y


@pytest.mark.parametrize("name", ["plain.mp3", "gapless.mp3", "xing.mp3"])
def test_decode_is_librosa_load(mp3s, name):
    folder, y = mp3s
    ours, sr = decode(folder / name)
    theirs, sr_librosa = librosa.load(folder / name, sr=None, mono=False)
    assert sr == sr_librosa == SR
    assert ours.dtype == np.float32 and ours.shape == theirs.shape  # same encoder delay / padding
    assert np.array_equal(ours, theirs)
    from_memory, _ = decode(io.BytesIO((folder / name).read_bytes()))  # e.g. a zip member
    assert np.array_equal(from_memory, ours)
    # The gapless header really was honoured by both: the first sample is the signal's first.
    lag = {"gapless.mp3": 0, "plain.mp3": 1105, "xing.mp3": 1105 - 529}[name]
    start = ours[0, 5000 + lag : 15000 + lag]
    assert np.corrcoef(start, y[5000:15000])[0, 1] > 0.9


def test_images_match_librosa_on_real_mp3(mp3s):
    folder, _ = mp3s
    recipe = Recipe(min_duration_s=5.0)
    for name in ("plain.mp3", "gapless.mp3", "xing.mp3"):
        y, sr = librosa.load(folder / name, sr=None, mono=True, duration=29.5)
        y = np.concatenate([y, np.zeros(int(29.5 * sr) - y.size, np.float32)])  # the short-clip policy
        hop = int(sr * 29.5 / 128) + 1
        S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2 * hop, hop_length=hop, n_mels=128, fmax=11025)
        ours = track_image(folder / name, recipe).image
        assert np.abs(ours - librosa.power_to_db(S)).max() < 0.05
        assert np.array_equal(mel_from_file(folder / name, recipe.to_dict()), ours)


@pytest.mark.parametrize(
    "name,reason",
    [
        ("missing.mp3", "missing file"),
        ("empty.mp3", "empty file"),
        ("noise.mp3", "cannot decode: "),
        ("short.mp3", "too short: 1.2 s < 5 s"),
    ],
)
def test_failures_are_classified(mp3s, name, reason):
    folder, _ = mp3s
    with pytest.raises(TrackFailure) as info:
        track_image(folder / name, Recipe())
    assert str(info.value).startswith(reason)
    with pytest.raises(TrackFailure, match=str(folder / name)):
        mel_from_file(folder / name, Recipe().to_dict())


def test_a_time_limit_holds_when_the_body_swallows_the_alarm():
    # A library's `except Exception` can catch the alarm's exception and carry on.
    with pytest.raises(TrackTimeout, match="timed out after 0.01 s"):
        with time_limit(0.01):
            try:
                time.sleep(2)  # the alarm's handler raises in here
            except Exception:
                pass
    with pytest.raises(TrackTimeout, match="timed out after 0.01 s"):
        with time_limit(0.01):
            try:
                time.sleep(2)
            except Exception:
                pass
            raise TrackFailure("not a regular file")  # pathlib's is_file() said False on the alarm
    with time_limit(5):  # a body that ends in time is left alone
        time.sleep(0.001)
    with pytest.raises(TrackFailure, match="not a regular file"):  # and so is its own failure
        with time_limit(5):
            raise TrackFailure("not a regular file")


def test_a_track_over_its_time_limit_fails_with_timeout(mp3s):
    folder, _ = mp3s
    with pytest.raises(TrackFailure, match="timed out after 0.0001 s"):
        track_image(folder / "plain.mp3", Recipe(), timeout_s=1e-4)
    assert track_image(folder / "plain.mp3", Recipe(), timeout_s=60).image.shape == (128, 128)  # lifted


@pytest.mark.parametrize(
    "where, value, silent",
    [
        (None, 0.0, True),  # all zeros
        (100, 0.9, True),  # a click in the first 0.1 s: skipped (decoders ring there)
        (5000, 2.0**-15, True),  # one 16-bit step: still silence
        (5000, 2.0**-14, False),  # early in the rest: found by the first look
        (400_000, -(2.0**-14), False),  # late and negative: found by the whole look
        (-1, 0.5, False),  # the very last sample
    ],
)
def test_digital_silence_is_the_peak_after_the_first_tenth_of_a_second(where, value, silent):
    mono = np.zeros(441_000, np.float32)
    if where is not None:
        mono[where] = value
    assert is_digital_silence(mono, 44100) == silent
    assert is_digital_silence(mono, 44100) == (float(np.abs(mono[4410:]).max()) <= 2.0**-15)


def test_directory_is_not_a_track(tmp_path):
    with pytest.raises(TrackFailure, match="not a regular file"):
        decode(tmp_path)


def test_reader_blocks_are_slices_of_the_whole_decode(mp3s):
    folder, _ = mp3s
    whole, sr = decode(folder / "gapless.mp3")
    with AudioReader(folder / "gapless.mp3") as reader:
        assert (reader.rate, reader.channels) == (sr, 2)
        blocks = list(reader.blocks(50_000))
    assert [b.shape[1] for b in blocks[:-1]] == [50_000] * (len(blocks) - 1)
    assert np.array_equal(np.concatenate(blocks, axis=1), whole)
    with AudioReader(folder / "gapless.mp3") as reader:  # skipping is sample-exact
        assert reader.skip(12_345) == 12_345
        assert np.array_equal(reader.read(1000), whole[:, 12_345:13_345])
    with AudioReader(io.BytesIO((folder / "gapless.mp3").read_bytes())) as reader:
        assert np.array_equal(np.concatenate(list(reader.blocks(SR)), axis=1), whole)


def test_decoder_messages_go_into_the_reason_not_the_terminal(tmp_path, capfd):
    """A damaged stream (junk before the audio, cut frames) makes libmpg123 print on fd 2."""
    good = encode(signal(8.0))
    junk = np.random.default_rng(2).integers(0, 255, 70_000, np.uint8).tobytes().replace(b"\xff", b"\x00")
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(junk + good[:3000])
    with pytest.raises(TrackFailure) as info:
        track_image(broken, Recipe())
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    reason = str(info.value)
    assert reason.startswith(("cannot decode: ", "too short: ")) and "decoder: " in reason, reason
    assert "\n" not in reason and len(reason) < 500


# --------------------------------------------------------------------------- every kind of generated file


def generated_kinds(info: dict) -> list[str]:
    """The kinds of real-world file a good generated track is (from synth_truth.json)."""
    kinds = [info["master"]] if info["master"] != "normal" else []
    kinds += [f"mpeg{info['mpeg_version']}"] if info["mpeg_version"] != "1" else []
    kinds += [info["channel_mode"]]
    kinds += ["true_stereo"] if info["true_stereo"] else []
    kinds += ["dc_offset"] if info["dc_offset"] else []
    kinds += ["lead_in"] if info["lead_in_s"] else []
    kinds += (["vbr"] if info["xing"] else ["vbr_no_xing"]) if info["vbr"] else []
    kinds += ["full_length"] if info["duration_s"] > 31 else []
    kinds += ["id3v1"] if info["id3v1"] else []
    return kinds


def ffmpeg_decode(path, seconds: float) -> tuple[np.ndarray, int]:
    """ffmpeg's float decode (its own MP3 decoder), shape (channels, n), and the rate."""
    import json
    import subprocess

    probe = json.loads(
        subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "a:0",
                "-show_entries",
                "stream=sample_rate,channels",
                "-of",
                "json",
                str(path),
            ],
            check=True,
            capture_output=True,
        ).stdout
    )["streams"][0]
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-t",
            str(seconds),
            "-f",
            "f32le",
            "-c:a",
            "pcm_f32le",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    channels = int(probe["channels"])
    return np.frombuffer(raw, "<f4").reshape(-1, channels).T, int(probe["sample_rate"])


def _good_files(truth: dict):
    for tid, info in sorted(truth["tracks"].items()):
        if info["kind"] == "good":
            yield tid, info


def _report(title: str, worst: dict) -> None:
    print(f"\n{title}")
    for kind, values in sorted(worst.items()):
        print(f"  {kind}: " + ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values))


def test_every_generated_kind_decodes_as_librosa_load(mini_fma):
    """Loud, quiet, MPEG-2/2.5, mono, joint and true stereo, DC, lead-in, VBR (with and without a Xing
    header), full-length, ID3v1: our mono waveform is librosa.load's to 1e-5, nothing clamped, and
    the image and the fine image are the plain librosa recipe's to 0.05 dB."""
    fma_dir, truth = mini_fma
    worst: dict[str, list] = {}
    loud_peaks = []
    for tid, info in _good_files(truth):
        path = fma_dir / info["path"]
        theirs, sr = librosa.load(path, sr=None, mono=True, duration=29.5)
        waveform, rate = decode(path, max_seconds=29.5)
        assert rate == sr == info["sample_rate"] and waveform.shape[0] == info["channels"], tid
        mono = waveform.mean(axis=0)
        assert mono.shape == theirs.shape, tid
        wave_diff = float(np.abs(mono - theirs).max())
        n = int(29.5 * sr)
        padded = np.concatenate([theirs, np.zeros(max(n - theirs.size, 0), np.float32)])
        ours = track_image(path, Recipe(), fine=RECIPES["fine"])
        image_diff = float(np.abs(ours.image - plain_librosa(padded, sr)).max())
        # The fine image (float16: <= 0.031 dB of rounding in -128..128 dB) from the same decode.
        fine_diff = float(np.abs(ours.fine.astype(np.float32) - plain_librosa(padded, sr, 1271)).max())
        assert wave_diff <= 1e-5 and image_diff <= 0.05 and fine_diff <= 0.05, (
            tid,
            wave_diff,
            image_diff,
            fine_diff,
        )
        assert ours.fine.shape == (128, 1271) and ours.fine.dtype == np.float16
        peak = float(np.abs(waveform).max())
        if info["master"] == "loud":
            loud_peaks.append(peak)
        for kind in generated_kinds(info):
            row = worst.setdefault(kind, [0, 0.0, 0.0, 0.0, 0.0])
            row[:] = [
                row[0] + 1,
                max(row[1], wave_diff),
                max(row[2], image_diff),
                max(row[3], fine_diff),
                max(row[4], peak),
            ]
    # Every kind occurs, and the loud masters really overshoot full scale (clamping would show).
    assert set(worst) >= {
        "loud",
        "quiet",
        "mpeg2",
        "mpeg2.5",
        "mono",
        "joint_stereo",
        "stereo",
        "true_stereo",
        "dc_offset",
        "lead_in",
        "vbr",
        "vbr_no_xing",
        "full_length",
        "id3v1",
    }
    assert min(loud_peaks) > 1.0 and max(loud_peaks) >= 1.25, loud_peaks
    _report(
        "kind: files, max |mono - librosa.load|, max |image - plain librosa| (dB), the same for the fine "
        "image (dB), max peak",
        worst,
    )


def test_generated_files_decode_as_ffmpeg(mini_fma):
    """ffmpeg's own MP3 decoder (float output) gives the same samples, unclamped peaks included."""
    import shutil

    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg); .ci/run installs it")
    fma_dir, truth = mini_fma
    worst: dict[str, list] = {}
    for tid, info in _good_files(truth):
        path = fma_dir / info["path"]
        waveform, rate = decode(path, max_seconds=29.5)
        reference, ff_rate = ffmpeg_decode(path, 30.0)
        assert ff_rate == rate and reference.shape[0] == waveform.shape[0], tid
        # A Xing header without LAME's extension: mpg123 (so librosa.load) drops 529 samples of
        # decoder delay, ffmpeg keeps them. Without a Xing header on a VBR file libsndfile stops
        # at a length estimated from the first frame (as librosa.load does); ffmpeg reads on.
        lag = 529 if info["xing"] else 0
        reference = reference[:, lag:]
        m = min(reference.shape[1], waveform.shape[1])
        assert m == waveform.shape[1], tid
        diff = float(np.abs(reference[:, :m] - waveform).max())
        peak_diff = abs(float(np.abs(reference[:, :m]).max()) - float(np.abs(waveform).max()))
        assert diff < 1e-4 and peak_diff < 1e-4, (tid, diff, peak_diff)
        for kind in generated_kinds(info):
            row = worst.setdefault(kind, [0, 0.0])
            row[:] = [row[0] + 1, max(row[1], diff)]
    _report("kind: files, max |samples - ffmpeg's|", worst)
