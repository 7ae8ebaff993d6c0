"""The whole-track window plan, the streamed window cutter and the shared frames (pure, no audio files)."""

import weakref

import numpy as np
import pytest

import preprocess.windows as windows_module
from preprocess.audio import TrackFailure, image_of
from preprocess.recipe import NOT_FINITE, RECIPES, Recipe
from preprocess.windows import (
    FrameStream,
    cut_windows,
    describe_hop,
    window_plan,
    window_spans,
    window_starts,
)

RATE = 44100
PLAN = window_plan(Recipe(), RATE)  # 29.5 s windows every 64 frames of 10,164 samples
WINDOW, HOP, GRID = PLAN.window, PLAN.hop, PLAN.grid


@pytest.mark.parametrize(
    "seconds, expected_starts_s",
    [
        (3.0, [0.0]),  # shorter than min_duration_s: one window; the recipe rejects it as too short
        (20.0, [0.0]),  # short clip: one window, padded by the recipe's short-clip policy
        (29.5, [0.0]),  # exactly one window
        (30.0, [0.0, 0.691]),  # just over a window: the end window starts on the first frame after 0.5 s
        (44.25, [0.0, 14.75]),  # 21 samples short of hop + window: the end window starts at the hop
        (60.0, [0.0, 14.75, 29.501, 30.653]),
    ],
)
def test_window_starts_follow_from_length_and_hop(seconds, expected_starts_s):
    starts = window_starts(int(seconds * RATE), WINDOW, HOP, GRID)
    assert [round(s / RATE, 3) for s in starts] == expected_starts_s
    assert all(s % GRID == 0 for s in starts)


def test_the_default_hop_is_64_frames_and_a_given_hop_is_rounded_to_whole_frames():
    assert (WINDOW, GRID, HOP) == (1300950, 10164, 64 * 10164)
    assert window_plan(Recipe(), RATE, 10.0).hop == 43 * GRID  # 10 s = 43.4 frames
    assert window_plan(Recipe(), RATE, 0.01).hop == GRID  # at least one frame
    assert window_plan(Recipe(), RATE, 60.0).hop == 260 * GRID  # longer than a window: allowed
    fine = window_plan(RECIPES["fine"], RATE)
    assert (fine.grid, fine.hop_frames) == (1024, 635)
    assert describe_hop(Recipe()) == "windows of 29.5 s every 14.75 s (64 frames)"
    assert describe_hop(RECIPES["fine"], 29.5) == "windows of 29.5 s every 29.49 s (1270 frames)"
    # A recipe that resamples this rate first cannot share frames: the grid is one sample.
    low = window_plan(Recipe(), 16000)
    assert (low.grid, low.hop) == (1, 236000)
    assert describe_hop(Recipe(), None, 16000) == "windows of 29.5 s every 14.75 s"


@pytest.mark.parametrize("rate", [22050, 32000, 44100, 48000])
@pytest.mark.parametrize("name", ["reference", "fine"])
def test_a_hop_of_one_window_leaves_no_gap_at_any_rate(name, rate):
    recipe = RECIPES[name]
    plan = window_plan(recipe, rate, recipe.duration_s)
    assert plan.grid == recipe.hop_length(rate)
    assert plan.window - plan.grid < plan.hop <= plan.window


def test_several_minutes_are_covered_by_regular_hops_and_one_end_window():
    n = int(7 * 60 * RATE) + 12345  # 7 minutes and a bit
    starts = window_starts(n, WINDOW, HOP, GRID)
    regular = (n - WINDOW) // HOP + 1
    assert len(starts) == regular + 1
    assert starts[:regular] == [k * HOP for k in range(regular)]
    assert starts[-1] % GRID == 0 and n - GRID < starts[-1] + WINDOW
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s : s + WINDOW] = True
    assert covered.all()
    assert window_starts(HOP + WINDOW, WINDOW, HOP, GRID) == [0, HOP]  # two fit exactly: no end window
    # With a one-sample grid the end window is full length and ends at the file's end.
    assert window_starts(n, WINDOW, HOP)[-1] == n - WINDOW
    # A hop of a whole window: no overlap between the regular windows.
    assert window_starts(n, WINDOW, WINDOW)[:3] == [0, WINDOW, 2 * WINDOW]


def test_bad_hop_is_a_clear_error():
    with pytest.raises(ValueError, match="positive number of seconds"):
        window_plan(Recipe(), RATE, 0)
    assert window_starts(0, WINDOW, HOP) == []


def _blocks(samples: np.ndarray, rng: np.random.Generator):
    pos = 0
    while pos < samples.shape[1]:
        size = int(rng.integers(0, 3000))
        yield samples[:, pos : pos + size]
        pos += size


@pytest.mark.parametrize(
    "n, window, hop, grid",
    [
        (0, 1000, 500, 1),
        (700, 1000, 500, 1),
        (1000, 1000, 500, 1),
        (1001, 1000, 500, 1),
        (5432, 1000, 500, 1),
        (5432, 1000, 1000, 1),
        (5432, 1000, 1700, 1),
        (20000, 1000, 333, 1),
        (1001, 1000, 500, 100),
        (5432, 1000, 500, 100),
        (5432, 1000, 1000, 250),
        (20011, 1000, 333, 37 * 9),
    ],
)
def test_cut_windows_yields_the_planned_excerpts_from_any_block_sizes(n, window, hop, grid):
    rng = np.random.default_rng(n + hop + grid)
    samples = rng.standard_normal((2, n)).astype(np.float32)
    cut = list(cut_windows(_blocks(samples, rng), window, hop, grid=grid))
    assert [start for start, _ in cut] == window_starts(n, window, hop, grid)
    for start, excerpt in cut:
        np.testing.assert_array_equal(excerpt, samples[:, start : start + window])
        assert start % grid == 0 and (excerpt.shape[1] > window - grid or start == 0)


def test_cut_windows_holds_at_most_a_window_and_a_block_of_samples():
    window, hop, block = 1000, 500, 300
    refs = []

    def blocks():
        for i in range(200):
            b = np.full((1, block), i, np.float32)
            refs.append(weakref.ref(b))
            yield b

    most = 0
    for _, excerpt in cut_windows(blocks(), window, hop):
        del excerpt
        most = max(most, sum(r() is not None for r in refs))
    assert len(refs) == 200
    assert most * block <= window + 2 * block, most


def test_first_only_stops_reading_after_the_first_window():
    read = []

    def blocks():
        for i in range(100):
            read.append(i)
            yield np.zeros((1, 100), np.float32)

    cut = list(cut_windows(blocks(), 250, 125, first_only=True))
    assert [s for s, _ in cut] == [0] and len(read) == 3


def _stream(seconds: float, seed: int) -> np.ndarray:
    """Mono test audio (n,) float32 whose loudness changes, so windows differ in their dB floor."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    loud = 10.0 ** (-3 * (1 + np.sin(2 * np.pi * t / 47.0)))  # 60 dB swings over ~47 s
    y = loud * (np.sin(2 * np.pi * (200 + 30 * t) * t) + 0.1 * rng.standard_normal(n))
    return y.astype(np.float32)


def _outcomes(recipe: Recipe, y: np.ndarray, hop_s: float | None, skip: int | None = None):
    """Each window's image (or failure reason) by a FrameStream and by image_of of its excerpt."""
    plan = window_plan(recipe, RATE, hop_s)
    stream = FrameStream(recipe, RATE)

    def watched(blocks):  # as window_images feeds them: every block checked once on arrival
        at = 0
        for block in blocks:
            stream.watch(block, at)
            at += block.shape[1]
            yield block

    def outcome(make, *args):
        try:
            return make(*args)
        except TrackFailure as exc:
            return str(exc)

    def by_image_of(start, stop, buffer):
        return image_of(buffer.take(start, stop), RATE, recipe).image

    blocks = watched(_blocks(y[None], np.random.default_rng(0)))
    pairs = []
    for i, span in enumerate(window_spans(blocks, plan.window, plan.hop, grid=plan.grid)):
        if i != skip:  # (predict skips a window of digital silence)
            pairs.append((outcome(stream.image, *span), outcome(by_image_of, *span)))
    return plan, pairs


@pytest.mark.parametrize(
    "name, seconds, hop_s",
    [("reference", 200.3, None), ("fine", 95.0, None), ("reference", 100.0, 10.0), ("fine", 70.0, 29.5)],
)
def test_a_frame_stream_gives_each_window_the_features_stage_image_and_transforms_each_frame_once(
    name, seconds, hop_s, monkeypatch
):
    recipe = RECIPES[name]
    computed = []

    def counted(y, rate, recipe, first, count):  # the real function, its frames counted
        computed.append(count)
        return real(y, rate, recipe, first, count)

    real = windows_module.mel_power
    monkeypatch.setattr(windows_module, "mel_power", counted)
    y = _stream(seconds, seed=len(name))
    plan, pairs = _outcomes(recipe, y, hop_s, skip=1)
    assert len(pairs) >= 2
    for by_stream, by_image_of in pairs:
        np.testing.assert_array_equal(by_stream, by_image_of)
    # Every frame of the file's grid is transformed once, plus each window's edge frames.
    file_frames = len(y) // plan.grid + 1
    assert sum(computed) <= file_frames + 3 * (len(pairs) + 1), (sum(computed), file_frames, len(pairs))
    if plan.hop < plan.window / 2 + plan.grid:  # windows overlap by half or more
        assert sum(computed) < 0.6 * (len(pairs) + 1) * recipe.n_frames


def test_a_frame_stream_fails_the_windows_image_of_fails():
    y = _stream(120.0, seed=3)
    y[int(40.2 * RATE) : int(75 * RATE)] = 0.0  # digital silence over more than a window
    y[int(100.0 * RATE)] = np.nan
    _, pairs = _outcomes(Recipe(), y, None)
    outcomes = [a if isinstance(a, str) else "image" for a, _ in pairs]
    # Windows at 0, 14.75, ... 88.5 s and one at 90.5 s: the one at 44.25 s lies in the silence,
    # the last three hold the NaN.
    assert outcomes == ["image"] * 3 + ["digital silence", "image"] + ["bad audio: " + NOT_FINITE] * 3
    for by_stream, by_image_of in pairs:
        if isinstance(by_stream, str):
            assert by_stream == by_image_of
        else:
            np.testing.assert_array_equal(by_stream, by_image_of)
