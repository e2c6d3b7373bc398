"""What a person looks at: a timeline PNG and an overlay video of a prediction (docs/inference.md).

:func:`plot_timeline` draws a heat strip: one row per class, time along x, colour = probability;
above it a band coloured by the top class. A video with more windows than ``max_columns`` has
neighbouring windows merged (face windows averaged), so a 2-hour video stays readable. Time
without a face is hatched grey, never coloured as a class.

:func:`render_overlay` decodes the video once more and writes it back, same frame count, size
and rate (H.264 via PyAV), with the face box where a face was found (the square the alignment
template puts the face in, turned as the aligned crop is, so it shows what the model sees; the
five landmarks as dots) and the three most probable classes of the window nearest each frame
as bars ("no face" where that window has none).

A prediction made with ``explain=True`` (``--explain``) adds the relevance of the window nearest
each frame as a heat map over the face (:mod:`maedfer.inference.explain_render`), and strips of
a few windows' token-frames with their heat and the "which frames mattered" curve under the
timeline.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from maedfer.atomic import atomic_path
from maedfer.errors import MaedferError
from maedfer.inference.predictor import Prediction
from maedfer.preprocess.align import FACE_SCALE
from maedfer.preprocess.video import iter_video_frames, prefetched

MAX_COLUMNS = 240  # merged time bins in the plot
TOP_K = 3  # classes drawn on the overlay


def merged_columns(
    prediction: Prediction, max_columns: int = MAX_COLUMNS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges (K+1,) s, probs (C, K) with NaN for faceless bins, face share (K,))``.

    Windows are merged into at most ``max_columns`` bins by their centre time; a bin's
    probabilities are the mean of its face windows (NaN when it has none).
    """
    rows = prediction.windows
    probs = prediction.probabilities
    centres = ((rows["start_s"] + rows["end_s"]) / 2).to_numpy()
    end = max(prediction.duration_s, float(rows["end_s"].max()) if len(rows) else 0.0, 1e-3)
    bins = max(1, min(max_columns, len(rows)))
    edges = np.linspace(0.0, end, bins + 1)
    which = np.clip(np.searchsorted(edges, centres, side="right") - 1, 0, bins - 1)
    out = np.full((probs.shape[1], bins), np.nan)
    face = np.zeros(bins)
    for k in range(bins):
        members = which == k
        if not members.any():
            continue
        chosen = probs[members]
        has = ~np.isnan(chosen).any(axis=1)
        face[k] = has.mean()
        if has.any():
            out[:, k] = chosen[has].mean(axis=0)
    return edges, out, face


def plot_timeline(prediction: Prediction, path: str | Path, max_columns: int = MAX_COLUMNS) -> Path:
    """Save the heat-strip PNG of ``prediction`` to ``path`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = prediction.class_names
    edges, probs, _ = merged_columns(prediction, max_columns)
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colours = [palette(i % palette.N) for i in range(len(names))]
    strips = _explain_strips(prediction)
    timeline_h = 1.2 + 0.32 * len(names)
    fig = plt.figure(figsize=(10, timeline_h + 1.9 * len(strips)))
    outer = fig.add_gridspec(
        1 + bool(strips),
        1,
        hspace=0.35,
        height_ratios=[timeline_h] + ([1.9 * len(strips)] if strips else []),
    )
    inner = outer[0].subgridspec(2, 1, height_ratios=[1, max(2, len(names))], hspace=0.05)
    top_ax = fig.add_subplot(inner[0])
    ax = fig.add_subplot(inner[1], sharex=top_ax)
    top_ax.tick_params(labelbottom=False)
    try:
        for axis in (top_ax, ax):  # faceless time: hatched grey under the NaN cells
            axis.set_facecolor("#d9d9d9")
            axis.fill_between(
                [0, edges[-1]],
                0,
                len(names),
                hatch="///",
                color="#bdbdbd",
                facecolor="#e8e8e8",
                linewidth=0,
            )
        best = np.where(
            np.isnan(probs).all(axis=0), np.nan, np.nan_to_num(probs, nan=-1).argmax(axis=0)
        )
        top_ax.pcolormesh(
            edges,
            [0, len(names)],
            best[None, :],
            vmin=-0.5,
            vmax=len(names) - 0.5,
            cmap=ListedColormap(colours),
        )
        top_ax.set_yticks([])
        top_ax.set_ylabel("top", rotation=0, ha="right", va="center")
        mesh = ax.pcolormesh(
            edges, np.arange(len(names) + 1), probs, vmin=0, vmax=1, cmap="viridis"
        )
        ax.set_yticks(np.arange(len(names)) + 0.5, names)
        ax.set_ylim(len(names), 0)
        ax.set_xlim(0, edges[-1])
        ax.set_xlabel("time (s)")
        merged = len(prediction.windows) > len(edges) - 1
        summary = prediction.summary
        title = (
            f"{Path(prediction.video).name if prediction.video else 'frames'}: "
            f"{summary['top_class'] or 'no face'}, face in {summary['face_ratio']:.0%} "
            f"of the frames, {summary['num_windows']} windows"
            + (f" merged into {len(edges) - 1} columns" if merged else "")
        )
        top_ax.set_title(title, fontsize=10)
        fig.colorbar(mesh, ax=[top_ax, ax], fraction=0.025, pad=0.01, label="probability")
        handles = [Patch(color=c, label=n) for c, n in zip(colours, names, strict=True)]
        handles.append(
            Patch(facecolor="#e8e8e8", hatch="///", edgecolor="#bdbdbd", label="no face")
        )
        top_ax.legend(
            handles=handles,
            loc="lower left",
            bbox_to_anchor=(0, 1.25),
            ncol=min(len(handles), 6),
            fontsize=8,
            frameon=False,
        )
        if strips:
            from maedfer.inference.explain_render import draw_strip

            rows = outer[1].subgridspec(len(strips), 1, hspace=0.6)
            for i, strip in enumerate(strips):
                draw_strip(fig.add_subplot(rows[i]), strip)
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def _explain_strips(prediction: Prediction) -> list:
    """The explanation strips of the plot (none without an explanation)."""
    if prediction.explain is None:
        return []
    from maedfer.inference.explain_render import chosen_windows, strip_rows, window_crops

    chosen = chosen_windows(prediction)
    return strip_rows(prediction, window_crops(prediction, chosen), chosen)


def _window_of_frames(prediction: Prediction) -> np.ndarray:
    """``(T,)`` the row of the window whose centre is nearest each frame."""
    rows = prediction.windows
    centres = ((rows["start_frame"] + rows["end_frame"]) / 2).to_numpy()
    frames = np.arange(prediction.num_frames)
    right = np.clip(np.searchsorted(centres, frames), 0, len(centres) - 1)
    left = np.clip(right - 1, 0, len(centres) - 1)
    closer_left = np.abs(frames - centres[left]) <= np.abs(centres[right] - frames)
    return np.where(closer_left, left, right)


def _panel(image: np.ndarray, names: list[str], probs: np.ndarray | None, scale: float) -> None:
    """The top classes as bars in the top-left corner (in place)."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale))
    line = int(22 * scale)
    width = int(230 * scale)
    rows = 1 if probs is None else min(TOP_K, len(names))
    x0, y0 = int(8 * scale), int(8 * scale)
    box = image[y0 : y0 + line * rows + int(8 * scale), x0 : x0 + width]
    box[:] = (box * 0.35).astype(np.uint8)  # darkened backing, readable on any picture
    if probs is None:
        cv2.putText(
            image,
            "no face",
            (x0 + 6, y0 + line - 6),
            font,
            0.55 * scale,
            (255, 200, 0),
            thick,
            cv2.LINE_AA,
        )
        return
    for r, k in enumerate(np.argsort(-probs)[:rows]):
        y = y0 + r * line
        bar = int((width - 12) * float(probs[k]))
        cv2.rectangle(
            image,
            (x0 + 6, y + 4),
            (x0 + 6 + bar, y + line - 2),
            (40, 160, 255) if r == 0 else (90, 90, 140),
            -1,
        )
        cv2.putText(
            image,
            f"{names[k]} {probs[k]:.2f}",
            (x0 + 10, y + line - 7),
            font,
            0.5 * scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )


def _heat_drawer(prediction: Prediction):
    """``draw(image, frame, window)``: the window's relevance for that frame over the face, or
    None without an explanation."""
    explanation = prediction.explain
    if explanation is None:
        return None
    from maedfer.inference.explain_render import heat_on_frame

    stride = int(prediction.settings["stride"])
    starts = prediction.windows["start_frame"].to_numpy()

    def draw(image: np.ndarray, t: int, window: int) -> np.ndarray:
        maps = explanation.gradcam[window]
        if np.isnan(maps).any():
            return image
        position = max(0, t - int(starts[window])) // stride  # the sampled frame at or before
        k = min(len(maps) - 1, position // explanation.tubelet)
        return heat_on_frame(image, maps[k], prediction.faces.transforms[t], prediction.faces.size)

    return draw


def overlay_frames(prediction: Prediction, frames):
    """The frames of ``prediction``'s video with its faces and window probabilities drawn."""
    names = prediction.class_names
    probs = prediction.probabilities
    nearest = _window_of_frames(prediction)
    corners = prediction.faces.crop_corners(FACE_SCALE)
    landmarks = prediction.faces.landmarks
    valid = prediction.faces.valid
    heat = _heat_drawer(prediction)
    for t, frame in enumerate(frames):
        if t >= len(nearest):
            raise MaedferError(f"{prediction.video} has more frames than were predicted")
        image = np.array(frame, copy=True)
        scale = max(0.6, min(image.shape[:2]) / 480)
        if valid[t] and heat is not None:
            image = heat(image, t, int(nearest[t]))
        if valid[t]:
            quad = np.round(corners[t]).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(image, [quad], True, (0, 255, 0), max(1, round(2 * scale)), cv2.LINE_AA)
            for x, y in landmarks[t]:
                cv2.circle(
                    image,
                    (int(round(x)), int(round(y))),
                    max(2, round(2 * scale)),
                    (255, 60, 60),
                    -1,
                    cv2.LINE_AA,
                )
        row = probs[nearest[t]]
        _panel(image, names, None if np.isnan(row).any() else row, scale)
        yield image


_VFR_TIME_BASE = Fraction(1, 90000)  # the MPEG clock: exact for every common frame rate


def render_overlay(prediction: Prediction, path: str | Path) -> Path:
    """Write ``prediction``'s video with the overlay to ``path`` (H.264 MP4, atomically).

    Same frame count, size and frame rate as the input; a variable-frame-rate video keeps
    each frame's time (``prediction.frame_times``), not the average rate's.

    Raises:
        MaedferError: a prediction made from frames, not a file.
    """
    if prediction.video is None:
        raise MaedferError("an overlay needs the video file: use Predictor.predict(video)")
    path = Path(path)
    width, height = prediction.width, prediction.height
    # 4:2:0 needs even sides; an odd-sized video keeps its size in 4:4:4
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    rate = Fraction(prediction.fps).limit_denominator(1001)
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream(
                "libx264", rate=rate, options={"crf": "20", "preset": "veryfast"}
            )
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            times = prediction.frame_times
            if times is not None:  # each frame at its own time, as in the input
                stream.codec_context.time_base = stream.time_base = _VFR_TIME_BASE
            frames = prefetched(iter_video_frames(prediction.video))
            for image in overlay_frames(prediction, frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame = frame.reformat(format=pix_fmt)
                if times is not None and written < len(times):
                    frame.pts = round(float(times[written]) / _VFR_TIME_BASE)
                    frame.time_base = _VFR_TIME_BASE
                container.mux(stream.encode(frame))
                written += 1
            container.mux(stream.encode(None))
    if written != prediction.num_frames:
        raise MaedferError(
            f"overlay of {prediction.video}: {written} frames written, "
            f"{prediction.num_frames} predicted"
        )
    return path
