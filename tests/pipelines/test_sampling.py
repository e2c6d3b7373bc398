"""Temporal sampling rules (docs/recipe.md), table-driven, including short clips."""

from __future__ import annotations

import numpy as np
import pytest

from maedfer.errors import MaedferError
from maedfer.pipelines import sampling


class FixedDraw:
    """A generator whose ``integers`` returns a fixed value (checked to be in its range)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def integers(self, low: int, high: int | None = None) -> int:
        low, high = (0, low) if high is None else (low, high)
        assert low <= self.value < high, (low, self.value, high)
        return self.value


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize(
    ("n", "start", "expected"),
    [
        (100, 36, list(range(36, 100, 4))),  # the last start: the window ends at frame 96
        (100, 0, list(range(0, 64, 4))),
        (64, 0, list(range(0, 64, 4))),  # exactly one span: only start 0
        (63, 0, list(range(0, 61, 4))),  # shorter than the span: start 0, all reachable
        (30, 0, list(range(0, 29, 4)) + [28] * 8),  # repeat the last reachable frame
        (1, 0, [0] * 16),
    ],
)
def test_stride_window_table(n: int, start: int, expected: list[int]) -> None:
    got = sampling.stride_window(n, num_frames=16, stride=4, generator=FixedDraw(start))
    assert got.tolist() == expected
    assert got.dtype == np.int64


def test_stride_window_starts_cover_the_range() -> None:
    starts = {int(sampling.stride_window(100, generator=rng(s))[0]) for s in range(400)}
    assert starts == set(range(0, 37))  # [0, n - 64] inclusive, as in the reference


@pytest.mark.parametrize(
    ("n", "end", "expected"),
    [
        (100, 80, [16, 20, 24, 28, 33, 37, 41, 45, 50, 54, 58, 62, 67, 71, 75, 79]),
        (65, 64, [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63]),
        (64, None, [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63]),
        (30, None, [0, 5, 10, 15, 20, 25, 29] + [29] * 9),
        (3, None, [2] * 16),  # n // 4 == 0: only the padded tail
    ],
)
def test_reference_train_window_table(n: int, end: int | None, expected: list[int]) -> None:
    draw = FixedDraw(end) if end is not None else None
    got = sampling.reference_train_window(n, num_frames=16, stride=4, generator=draw)
    assert got.tolist() == expected


@pytest.mark.parametrize(
    ("n", "views", "expected"),
    [
        (100, 2, [list(range(0, 64, 4)), list(range(36, 100, 4))]),
        (65, 2, [list(range(0, 64, 4)), list(range(4, 68, 4))]),
        (64, 2, [list(range(0, 64, 4))] * 2),
        (30, 2, [list(range(0, 29, 4)) + [28] * 8] * 2),
        (100, 3, [list(range(s, s + 64, 4)) for s in (0, 16, 36)]),  # starts 0, 4, 9 of 25
        (100, 1, [list(range(16, 80, 4))]),  # one view: the middle window
    ],
)
def test_test_window_table(n: int, views: int, expected: list[list[int]]) -> None:
    got = [sampling.test_window(n, view=v, views=views).tolist() for v in range(views)]
    assert got == expected


@pytest.mark.parametrize("rule", ["stride", "reference"])
@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 63, 64, 65, 66, 127, 300])
def test_windows_stay_in_the_clip(rule: str, n: int) -> None:
    for seed in range(5):
        got = sampling.train_window(n, rule=rule, generator=rng(seed))
        assert got.shape == (16,) and got.min() >= 0 and got.max() <= n - 1
        assert (np.diff(got) >= 0).all()
    for view in range(2):
        got = sampling.test_window(n, view=view)
        assert got.shape == (16,) and got.min() >= 0 and got.max() <= n - 1


def test_other_sizes() -> None:
    got = sampling.stride_window(50, num_frames=8, stride=2, generator=FixedDraw(34))
    assert got.tolist() == list(range(34, 50, 2))
    assert sampling.test_window(10, view=1, num_frames=4, stride=1).tolist() == [6, 7, 8, 9]


def test_same_seed_same_window() -> None:
    a = [sampling.train_window(200, generator=rng(7)).tolist() for _ in range(2)]
    assert a[0] == a[1]


@pytest.mark.parametrize(
    "call",
    [
        lambda: sampling.stride_window(0, generator=rng()),
        lambda: sampling.stride_window(10, num_frames=0, generator=rng()),
        lambda: sampling.reference_train_window(10, stride=0, generator=rng()),
        lambda: sampling.test_window(10, view=2, views=2),
        lambda: sampling.train_window(10, rule="linspace", generator=rng()),
    ],
)
def test_bad_arguments_raise(call) -> None:
    with pytest.raises(MaedferError):
        call()
