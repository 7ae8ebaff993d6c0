"""The whole-track window plan and the streamed window cutter (pure, no audio files)."""

import weakref

import numpy as np
import pytest

from preprocess.recipe import Recipe
from preprocess.windows import cut_windows, hop_length, window_length, window_starts

RATE = 44100
WINDOW = window_length(Recipe(), RATE)  # 29.5 s
HOP = hop_length(29.5 / 2, RATE)


@pytest.mark.parametrize(
    "seconds, expected_starts_s",
    [
        (3.0, [0.0]),  # shorter than min_duration_s: one window; the recipe rejects it as too short
        (20.0, [0.0]),  # short clip: one window, padded by the recipe's short-clip policy
        (29.5, [0.0]),  # exactly one window
        (30.0, [0.0, 0.5]),  # just over a window: a second window ends at the file's end
        (44.25, [0.0, 14.75]),  # two hops fit exactly: no tail window
        (60.0, [0.0, 14.75, 29.5, 30.5]),
    ],
)
def test_window_starts_follow_from_length_and_hop(seconds, expected_starts_s):
    starts = window_starts(int(seconds * RATE), WINDOW, HOP)
    assert [round(s / RATE, 3) for s in starts] == expected_starts_s


def test_several_minutes_are_covered_by_regular_hops_and_one_tail_window():
    n = int(7 * 60 * RATE) + 12345  # 7 minutes and a bit
    starts = window_starts(n, WINDOW, HOP)
    regular = (n - WINDOW) // HOP + 1
    assert len(starts) == regular + 1
    assert starts[:regular] == [k * HOP for k in range(regular)]
    assert starts[-1] == n - WINDOW
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s : s + WINDOW] = True
    assert covered.all()
    # A hop of a whole window: no overlap between the regular windows.
    assert window_starts(n, WINDOW, WINDOW)[:3] == [0, WINDOW, 2 * WINDOW]


def test_bad_hop_is_a_clear_error():
    with pytest.raises(ValueError, match="positive number of seconds"):
        hop_length(0, RATE)
    assert window_starts(0, WINDOW, HOP) == []


def _blocks(samples: np.ndarray, rng: np.random.Generator):
    pos = 0
    while pos < samples.shape[1]:
        size = int(rng.integers(0, 3000))
        yield samples[:, pos : pos + size]
        pos += size


@pytest.mark.parametrize(
    "n, window, hop",
    [
        (0, 1000, 500),
        (700, 1000, 500),
        (1000, 1000, 500),
        (1001, 1000, 500),
        (5432, 1000, 500),
        (5432, 1000, 1000),
        (5432, 1000, 1700),
        (20000, 1000, 333),
    ],
)
def test_cut_windows_yields_the_planned_excerpts_from_any_block_sizes(n, window, hop):
    rng = np.random.default_rng(n + hop)
    samples = rng.standard_normal((2, n)).astype(np.float32)
    cut = list(cut_windows(_blocks(samples, rng), window, hop))
    assert [start for start, _ in cut] == window_starts(n, window, hop)
    for start, excerpt in cut:
        np.testing.assert_array_equal(excerpt, samples[:, start : start + window])


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
