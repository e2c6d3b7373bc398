"""Relevance drawn for people: heat maps over the aligned face, per-window strips, sparklines.

- :func:`heat_on_crop`: a window's token map (one token-frame) blended over an aligned crop,
  the map enlarged smoothly to the crop's pixels (``inferno``: dark = nothing, yellow = most);
- :func:`heat_on_frame`: the same map taken back into the video frame through the inverse of
  the alignment warp, for the ``--overlay`` video (the heat sits on the face the model saw);
- :func:`strip_rows` / :func:`draw_strip`: for the ``--plot``, a strip of a window's
  token-frames (each tubelet's first frame) with its heat, and the "which frames mattered"
  curve over it;
- :func:`sparkline`: the same curve in one line of text, for the terminal table.

Documented in docs/inference.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from maedfer.preprocess.align import warp_frames

ALPHA = 0.55  # the heat's opacity where relevance is highest
MAX_STRIPS = 6  # windows shown in the plot
_BLOCKS = " ▁▂▃▄▅▆▇█"


def _lut() -> np.ndarray:
    """``(256, 3)`` uint8 RGB of matplotlib's ``inferno``."""
    import matplotlib

    colours = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3]
    return np.round(colours * 255).astype(np.uint8)


_LUT: np.ndarray | None = None


def colour(relevance: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 RGB of relevance in [0, 1]."""
    global _LUT
    if _LUT is None:
        _LUT = _lut()
    index = np.clip(np.nan_to_num(relevance) * 255, 0, 255).astype(np.uint8)
    return _LUT[index]


def enlarge(token_map: np.ndarray, size: int) -> np.ndarray:
    """``(H', W')`` -> ``(size, size)`` float32, bilinear between token centres."""
    return cv2.resize(
        np.nan_to_num(token_map).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR
    )


def blend(image: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """``image`` (uint8 RGB) under the heat of ``relevance`` (same height and width, [0, 1]):
    opacity grows with relevance, so irrelevant parts stay visible."""
    weight = (ALPHA * np.clip(relevance, 0, 1))[..., None]
    out = image.astype(np.float32) * (1 - weight) + colour(relevance).astype(np.float32) * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heat_on_crop(crop: np.ndarray, token_map: np.ndarray) -> np.ndarray:
    """An aligned crop ``(S, S, 3)`` with one token-frame's map ``(H', W')`` over it."""
    return blend(crop, enlarge(token_map, crop.shape[0]))


def heat_on_frame(
    frame: np.ndarray, token_map: np.ndarray, transform: np.ndarray, size: int
) -> np.ndarray:
    """A video frame with the map drawn where the aligned crop came from.

    ``transform`` (2, 3) maps the frame to the ``size`` crop (continuous coordinates, as
    :func:`maedfer.preprocess.align.warp_frames` takes it); its inverse takes the heat back.
    """
    heat = np.dstack([enlarge(token_map, size), np.ones((size, size), np.float32)])
    inverse = np.linalg.inv(np.vstack([np.asarray(transform, np.float64), [0, 0, 1]]))[:2]
    m = inverse.copy()  # crop -> frame; continuous -> pixel-centre coordinates, as warp_frames
    m[:, 2] += 0.5 * m[:, :2].sum(1) - 0.5
    height, width = frame.shape[:2]
    back = cv2.warpAffine(
        heat,
        m,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    relevance = back[..., 0] * (back[..., 1] > 0.5)  # nothing outside the crop
    return blend(frame, relevance)


def window_frame_indices(prediction, window: int) -> np.ndarray:
    """``(num_frames,)`` the video frames window ``window`` samples (a short video's window
    repeats its last frame)."""
    row = prediction.windows.iloc[window]
    stride, frames = int(prediction.settings["stride"]), int(prediction.settings["num_frames"])
    steps = int(row["start_frame"]) + stride * np.arange(frames)
    return np.minimum(steps, int(row["end_frame"]))


def token_frame_of(position: int, num_frames: int, tubelet: int, grid_frames: int) -> int:
    """The token-frame holding sampled frame ``position`` of a window."""
    return min(grid_frames - 1, max(0, position) // tubelet) if num_frames else 0


@dataclass
class Strip:
    """One window's strip for the plot."""

    window: int
    title: str
    image: np.ndarray  # (S, T' * S, 3) uint8
    relevance: np.ndarray  # (T',)
    labels: list[str]  # video frame of each token-frame


def chosen_windows(prediction, max_strips: int = MAX_STRIPS) -> list[int]:
    """Up to ``max_strips`` face windows, spread evenly over the video."""
    windows = prediction.windows
    faced = [int(w) for w, f in zip(windows["window"], windows["face"], strict=True) if f]
    if not faced:
        return []
    spread = np.linspace(0, len(faced) - 1, min(max_strips, len(faced)))
    return sorted({faced[int(round(i))] for i in spread})


def strip_rows(prediction, crops: dict[int, np.ndarray] | None, chosen: list[int]) -> list[Strip]:
    """The strips of windows ``chosen`` of ``prediction`` (which has an explanation).

    Args:
        crops: window number -> ``(T', S, S, 3)`` aligned crops of each token-frame's first
            frame; None draws the heat alone (a prediction without its video file).
    """
    windows, explanation = prediction.windows, prediction.explain
    t_grid, _, _ = explanation.grid
    out = []
    for w in chosen:
        row = windows.iloc[w]
        maps = explanation.gradcam[w]
        size = 64 if crops is None else crops[w].shape[1]
        tiles = []
        for k in range(t_grid):
            base = np.zeros((size, size, 3), np.uint8) if crops is None else crops[w][k]
            tiles.append(heat_on_crop(base, maps[k]))
        firsts = window_frame_indices(prediction, w)[:: explanation.tubelet]
        labels = [str(int(i)) for i in firsts[:t_grid]]
        title = (
            f"window {w} ({row['start_s']:.2f}-{row['end_s']:.2f} s): "
            f"{row['top_class']} {row['top_p']:.2f}"
        )
        out.append(
            Strip(w, title, np.concatenate(tiles, axis=1), explanation.frame_relevance[w], labels)
        )
    return out


def draw_strip(ax, strip: Strip) -> None:
    """Draw a strip on a matplotlib axis: the tiles, the frame curve over them."""
    height, width = strip.image.shape[:2]
    count = len(strip.relevance)
    ax.imshow(strip.image, extent=(0, width, height, 0))
    centres = (np.arange(count) + 0.5) * width / count
    peak = max(float(np.nanmax(strip.relevance)), 1e-9)
    curve = height * (1 - 0.9 * strip.relevance / peak)
    ax.plot(centres, curve, color="#00e5ff", linewidth=1.5, marker="o", markersize=3)
    ax.set_xticks(centres, [f"f{label}" for label in strip.labels], fontsize=7)
    ax.set_yticks([])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(f"{strip.title}; the line: which frames mattered", fontsize=8, loc="left")


def window_crops(prediction, windows: list[int]) -> dict[int, np.ndarray] | None:
    """``window -> (T', S, S, 3)`` aligned crops of each token-frame's first frame, decoded
    again from the prediction's video (None without a file)."""
    from maedfer.preprocess.video import iter_video_frames

    if prediction.video is None or not windows:
        return None
    explanation = prediction.explain
    wanted = {w: window_frame_indices(prediction, w)[:: explanation.tubelet] for w in windows}
    needed = sorted({int(i) for idx in wanted.values() for i in idx})
    size = prediction.faces.size
    picked: dict[int, np.ndarray] = {}
    for t, frame in enumerate(iter_video_frames(prediction.video)):
        if t in needed:
            picked[t] = warp_frames(frame[None], prediction.faces.transforms[t][None], size)[0]
        if t >= needed[-1]:
            break
    return {w: np.stack([picked[int(i)] for i in idx]) for w, idx in wanted.items()}


def sparkline(curve) -> str:
    """``▁▃█▂``: one character per value, scaled to the largest."""
    if curve is None:
        return ""
    values = np.asarray(curve, np.float64)
    if not len(values) or np.isnan(values).any():
        return ""
    top = max(values.max(), 1e-12)
    return "".join(_BLOCKS[int(round(v / top * (len(_BLOCKS) - 1)))] for v in values)


__all__ = [
    "Strip",
    "blend",
    "chosen_windows",
    "colour",
    "draw_strip",
    "heat_on_crop",
    "heat_on_frame",
    "sparkline",
    "strip_rows",
    "token_frame_of",
    "window_crops",
    "window_frame_indices",
]
