"""Pictures of reconstructions: a PNG grid per window and an MP4 of all windows side by side.

The grid (docs/inference.md, "Reconstructions") has one column per token-frame (a tubelet: two
sampled frames) and five rows: the input (each tubelet's first frame), the mask (masked patches
grey), the appearance reconstruction, the input's motion (second frame minus first) and the
motion reconstruction. Motion is drawn on mid-grey, amplified by the gain written beside it
(the same for both motion rows of a window), so still regions are grey. Small crops (the demo's
64 px) are enlarged by whole factors, pixels kept square.

The MP4 plays every window's sampled frames at the video's pace (``fps / stride``), four panels
side by side: input, masked input, reconstruction (a tubelet's first frame, then first + motion
for its second) and the reconstructed motion.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from maedfer.atomic import atomic_path, write_bytes
from maedfer.inference.reconstruct import WindowReconstruction

ROWS = ("input", "mask", "appearance", "motion (input)", "motion (rec.)")
PANELS = ("input", "masked", "reconstruction", "motion (rec.)")
MIN_CELL = 112  # px: crops smaller than this are enlarged by a whole factor
LABEL_W = 150
HEADER_H = 44
GAP = 2
MASK_GREY = 0.5
TEXT = (235, 235, 235)
BACKGROUND = 24


def _scale(size: int) -> int:
    return max(1, math.ceil(MIN_CELL / size))


def _u8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float RGB -> uint8, clipped."""
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def motion_gain(window: WindowReconstruction) -> float:
    """Amplification that makes the input's strong motion (its 99th percentile) reach a
    quarter of the grey range: 1 to 16."""
    strong = float(np.percentile(np.abs(window.motion_input), 99))
    return float(np.clip(0.25 / max(strong, 1e-6), 1.0, 16.0))


def _motion(diff: np.ndarray, gain: float) -> np.ndarray:
    return _u8(0.5 + gain * diff)


def _masked(frames: np.ndarray, mask: np.ndarray, patch: int) -> np.ndarray:
    """Frames (uint8) with the masked patches grey; ``mask`` (T', H', W')."""
    cover = np.repeat(np.repeat(mask, patch, axis=1), patch, axis=2)  # (T', S, S)
    out = frames.copy()
    out[cover] = int(MASK_GREY * 255)
    return out


def window_rows(window: WindowReconstruction) -> dict[str, np.ndarray]:
    """The grid's five rows, each ``(T', S, S, 3)`` uint8."""
    size = window.frames.shape[1]
    patch = size // window.mask.shape[1]
    firsts = window.frames[0::2]
    gain = motion_gain(window)
    return {
        "input": firsts,
        "mask": _masked(firsts, window.mask, patch),
        "appearance": _u8(window.appearance),
        "motion (input)": _motion(window.motion_input, gain),
        "motion (rec.)": _motion(window.motion, gain),
    }


def _put(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT, 1, cv2.LINE_AA)


def render_grid(window: WindowReconstruction, title: str = "") -> np.ndarray:
    """The window's grid as an ``(H, W, 3)`` uint8 RGB picture (module docstring)."""
    rows = window_rows(window)
    count, size = window.mask.shape[0], window.frames.shape[1]
    k = _scale(size)
    cell = size * k
    height = HEADER_H + len(ROWS) * (cell + GAP)
    width = LABEL_W + count * (cell + GAP)
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    _put(canvas, title[: width // 8], (6, 16))
    for c in range(count):
        x = LABEL_W + c * (cell + GAP)
        _put(
            canvas,
            f"frames {window.frame_indices[2 * c]},{window.frame_indices[2 * c + 1]}",
            (x + 2, HEADER_H - 8),
            0.38,
        )
    gain = motion_gain(window)
    for r, name in enumerate(ROWS):
        y = HEADER_H + r * (cell + GAP)
        _put(canvas, name, (6, y + cell // 2))
        if name == "appearance" and window.mean_frame_added:
            _put(canvas, "+ the clip's mean", (6, y + cell // 2 + 18), 0.38)
            _put(canvas, "frame (not seen)", (6, y + cell // 2 + 34), 0.38)
        if name.startswith("motion"):
            _put(canvas, f"x{gain:.1f} on grey", (6, y + cell // 2 + 18), 0.38)
        for c in range(count):
            x = LABEL_W + c * (cell + GAP)
            tile = rows[name][c]
            if k > 1:
                tile = cv2.resize(tile, (cell, cell), interpolation=cv2.INTER_NEAREST)
            canvas[y : y + cell, x : x + cell] = tile
    return canvas


def grid_title(name: str, window: WindowReconstruction) -> str:
    return (
        f"{name} window {window.window} (frames {window.start_frame}-{window.end_frame}): "
        f"loss {window.loss:.3f} = appearance {window.loss_appearance:.3f} / motion "
        f"{window.loss_motion:.3f}, {window.mask.mean():.0%} masked"
    )


def write_grid(window: WindowReconstruction, path: str | Path, title: str = "") -> Path:
    """Save the window's grid as a PNG (atomically)."""
    picture = render_grid(window, title)
    ok, data = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 picture
        raise RuntimeError("PNG encoding failed")
    write_bytes(path, data.tobytes())
    return Path(path)


def side_by_side(window: WindowReconstruction) -> list[np.ndarray]:
    """The window's frames for the MP4: four panels per sampled frame (module docstring)."""
    size = window.frames.shape[1]
    k = _scale(size)
    patch = size // window.mask.shape[1]
    gain = motion_gain(window)
    second = window.second
    label_h = 22
    out = []
    for t, frame in enumerate(window.frames):
        token = t // 2
        rec = window.appearance[token] if t % 2 == 0 else second[token]
        masked = _masked(frame[None], window.mask[token : token + 1], patch)[0]
        panels = [frame, masked, _u8(rec), _motion(window.motion[token], gain)]
        cell = size * k
        canvas = np.full((cell + label_h, 4 * cell + 3 * GAP, 3), BACKGROUND, np.uint8)
        for i, (panel, name) in enumerate(zip(panels, PANELS, strict=True)):
            x = i * (cell + GAP)
            if k > 1:
                panel = cv2.resize(panel, (cell, cell), interpolation=cv2.INTER_NEAREST)
            canvas[label_h:, x : x + cell] = panel
            _put(canvas, name, (x + 3, 15), 0.4)
        _put(
            canvas, f"w{window.window} f{window.frame_indices[t]}", (canvas.shape[1] - 80, 15), 0.4
        )
        out.append(canvas)
    return out


class ReconstructionVideo:
    """An MP4 written window by window (H.264 via PyAV), renamed into place on :meth:`close`.

    Its frame rate is the first window's video rate divided by ``stride`` (the sampled frames
    play at the video's pace).
    """

    def __init__(self, path: str | Path, stride: int) -> None:
        self.path = Path(path)
        self.stride = stride
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._container = None
        self._stream = None
        self.frames = 0

    def add(self, window: WindowReconstruction) -> None:
        for image in side_by_side(window):
            if self._container is None:
                self._container = av.open(str(self._tmp), "w", format="mp4")
                fps = window.fps if math.isfinite(window.fps) and window.fps > 0 else 25.0
                rate = Fraction(fps / self.stride).limit_denominator(1001)
                stream = self._container.add_stream(
                    "libx264", rate=rate, options={"crf": "18", "preset": "veryfast"}
                )
                height, width = image.shape[:2]
                stream.width, stream.height = width + width % 2, height + height % 2
                stream.pix_fmt = "yuv420p"
                self._stream = stream
            padded = np.zeros((self._stream.height, self._stream.width, 3), np.uint8)
            padded[: image.shape[0], : image.shape[1]] = image
            frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
            self._container.mux(self._stream.encode(frame))
            self.frames += 1

    def close(self, keep: bool = True) -> Path | None:
        """Finish the file; ``keep`` False (or no frame added) leaves nothing behind."""
        if self._container is not None:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        if keep and self.frames:
            self._atomic.__exit__(None, None, None)
            return self.path
        self._atomic.__exit__(RuntimeError, RuntimeError("discarded"), None)
        return None


__all__ = [
    "ReconstructionVideo",
    "grid_title",
    "render_grid",
    "side_by_side",
    "window_rows",
    "write_grid",
]
