"""Prediction windows: the table of starts, streaming equals the whole-video rule, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from maedfer.errors import MaedferError
from maedfer.inference.windows import stream_windows, window_batch, window_indices


@pytest.mark.parametrize(
    ("frames", "hop", "starts", "last"),
    [
        (72, None, [0, 8], 68),  # 18 subsampled frames: the two test views 0..60 and 8..68
        (64, None, [0], 60),  # exactly one window
        (100, None, [0, 32, 36], 96),  # hops 0, 8 then a last window ending at 96
        (30, None, [0], 28),  # shorter than a window: 0..28 padded with 28
        (1, None, [0], 0),
        (200, 16, [0, 64, 128, 136], 196),  # 50 subsampled: hop 16 → 0, 16, 32, tail 34
    ],
)
def test_window_indices(frames: int, hop: int | None, starts: list[int], last: int) -> None:
    windows = window_indices(frames, num_frames=16, stride=4, hop=hop)
    assert windows.shape == (len(starts), 16)
    assert windows[:, 0].tolist() == starts
    assert windows[-1, -1] == last
    assert (windows < frames).all() and (np.diff(windows, axis=1) >= 0).all()
    full = windows[:, -1] - windows[:, 0] == 60
    assert full.all() or frames < 64  # every window spans 16 frames at stride 4 when it can


def test_window_indices_refuses_bad_arguments() -> None:
    with pytest.raises(MaedferError, match="hop"):
        window_indices(72, hop=0)
    with pytest.raises(MaedferError, match="video frame"):
        window_indices(0)
    with pytest.raises(MaedferError, match="no frames"):
        list(stream_windows(iter([])))


@pytest.mark.parametrize("hop", [None, 1, 3, 16])
@pytest.mark.parametrize("frames", [1, 5, 30, 63, 64, 65, 72, 100, 103, 257])
def test_streamed_windows_are_the_whole_video_windows(frames: int, hop: int | None) -> None:
    """Cut from frames arriving one by one (length unknown), the windows and their frames are
    those of window_indices; at most one window's frames are held at a time."""
    expected = window_indices(frames, num_frames=16, stride=4, hop=hop)
    held = []

    class Frame(int):
        pass

    got = []
    for indices, items in stream_windows(
        (Frame(t) for t in range(frames)), num_frames=16, stride=4, hop=hop
    ):
        got.append(indices)
        assert [int(i) for i in items] == indices.tolist()
        held.append(len(set(items)))
    np.testing.assert_array_equal(np.stack(got), expected)
    assert max(held) <= 16


def test_window_inputs_are_normalised_like_the_pipelines() -> None:
    # Frames of constant value v give (v - 255·mean_c) / (255·std_c) per channel (the loader's
    # ImageNet normalisation); with subtract_mean a clip whose frames only brighten by 8 per
    # frame gives (v_t - mean_t v) / (255·std_c), the same in every pixel.
    from maedfer.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD

    values = np.arange(100, 100 + 8 * 20, 8)[:20]
    faces = np.broadcast_to(values[:, None, None, None], (20, 4, 4, 3)).astype(np.uint8)
    windows = window_indices(20, num_frames=4, stride=2)  # frames 0,2,4,6 ... 12..18
    plain = window_batch([faces[w] for w in windows], subtract_mean=False)
    assert plain.shape == (len(windows), 3, 4, 4, 4)
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    expected = (values[windows[0]][None, :] - mean[:, None]) / std[:, None]  # (3, T)
    np.testing.assert_allclose(plain[0, :, :, 0, 0].numpy(), expected, rtol=1e-5)
    centred = window_batch([faces[w] for w in windows], subtract_mean=True)
    steps = values[windows[0]] - values[windows[0]].mean()
    np.testing.assert_allclose(
        centred[0, :, :, 2, 3].numpy(), steps[None, :] / std[:, None], rtol=1e-5, atol=1e-6
    )
