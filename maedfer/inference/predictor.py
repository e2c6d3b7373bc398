"""``maedfer.Predictor``: a classifier and the face pipeline loaded once, videos in, tables out.

``Predictor(checkpoint).predict(video)`` streams the video twice, as ``prepare`` does
(docs/inference.md): once to locate the face in every frame (only landmarks are kept, a few bytes a
frame), once to warp the frames with ``prepare``'s aligner and classify each window as soon as
its last frame is aligned. Memory is bounded by a window and a chunk of frames, not the video.

``predict_frames(frames, fps)`` takes any iterable of RGB frames (a camera, a generator): it
cannot read them twice, so it locates and warps them in segments of a few hundred frames
(keyframes and landmark smoothing restart at each segment) and windows them as they come.

A window whose sampled frames mostly have no face (``face_share`` below ``min_window_face``,
default 0.5) is not classified: its probabilities are NaN and ``face`` is False. The summary
averages the face windows only and says what share of the frames had a face.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.inference.explain import Explanation, build_explanation, explain_batch
from maedfer.inference.loading import ModelSettings, load_classifier
from maedfer.inference.windows import default_hop, stream_windows, window_batch, window_indices
from maedfer.preprocess import MIN_FRAMES
from maedfer.preprocess.faces import FaceAligner, NoFaceError
from maedfer.preprocess.video import (
    VideoError,
    frame_times,
    iter_video_frames,
    prefetched,
    probe_video,
)

logger = logging.getLogger(__name__)

BATCH_WINDOWS = 4  # windows per forward pass: memory stays small on CPU, GPUs are busy enough
SEGMENT_BYTES = 256 << 20  # predict_frames: decoded frames held per alignment segment
SEGMENT_FRAMES = 256


@dataclass
class FacesFound:
    """The face of every frame, in the input frames' pixel coordinates.

    Attributes:
        valid: ``(T,)`` bool, a face was found in the frame.
        landmarks: ``(T, 5, 2)`` float32 MTCNN points (eyes, nose, mouth corners), NaN where
            ``valid`` is False.
        transforms: ``(T, 2, 3)`` the similarity warps frame → aligned crop (frames without a
            face reuse the nearest good one).
        size: side of the aligned crop.
    """

    valid: np.ndarray
    landmarks: np.ndarray
    transforms: np.ndarray
    size: int

    @property
    def face_ratio(self) -> float:
        return float(self.valid.mean()) if len(self.valid) else 0.0

    def crop_corners(self, fraction: float = 1.0) -> np.ndarray:
        """``(T, 4, 2)`` the aligned crop's corners in each frame (what the model sees); with
        ``fraction`` the centred square of that share of its side (``FACE_SCALE``, 0.7: the
        face box the alignment template fills)."""
        s = float(self.size)
        lo, hi = s * (1 - fraction) / 2, s * (1 + fraction) / 2
        corners = np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]], np.float64)
        out = np.empty((len(self.transforms), 4, 2), np.float32)
        for t, m in enumerate(self.transforms.astype(np.float64)):
            inverse = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
            out[t] = corners @ inverse[:, :2].T + inverse[:, 2]
        return out


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` finds in one video.

    Attributes:
        video: the file (None for :meth:`Predictor.predict_frames`).
        fps, num_frames, width, height: of the (upright) video.
        class_names: the model's outputs, in order.
        windows: one row per window: ``window``, ``start_frame``, ``end_frame``,
            ``start_s``, ``end_s``, ``face`` (bool), ``face_share`` (of its sampled frames),
            ``prob_<class>`` for every class (NaN where ``face`` is False), ``top_class``
            (None where no face) and ``top_p``.
        summary: ``num_windows``, ``face_windows``, ``face_ratio`` (share of frames with a
            face), ``face_window_share``, ``top_class`` (of the mean over face windows; None
            when there is none), ``mean_probabilities`` and ``window_share`` (how often each
            class is the top one), both over face windows only.
        faces: the faces found (:class:`FacesFound`).
        settings: the model's input settings and the window hop.
        explain: with ``explain=True``, where the evidence for each window's top class lies
            (:class:`~maedfer.inference.explain.Explanation`); the windows table then also
            has ``frame_relevance`` (the share of each token-frame) and ``peak_frame``.
        frame_times: a variable-frame-rate video's frame times in seconds (the windows'
            ``start_s``/``end_s`` and the overlay follow them); None at a constant rate.
    """

    video: str | None
    fps: float
    num_frames: int
    width: int
    height: int
    class_names: list[str]
    windows: pd.DataFrame
    summary: dict[str, Any]
    faces: FacesFound
    settings: dict[str, Any] = field(default_factory=dict)
    explain: Explanation | None = None
    frame_times: np.ndarray | None = None

    @property
    def duration_s(self) -> float:
        if self.frame_times is not None:
            return round(float(_span_ends(self.frame_times, self.fps)[-1]), 3)
        return round(self.num_frames / self.fps, 3)

    @property
    def probabilities(self) -> np.ndarray:
        """``(W, C)`` window probabilities, NaN rows for faceless windows."""
        return self.windows[prob_columns(self.class_names)].to_numpy(np.float64)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (NaN probabilities as null)."""
        windows = self.windows.astype(object).where(self.windows.notna(), None)
        return {
            "video": self.video,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "width": self.width,
            "height": self.height,
            "duration_s": self.duration_s,
            "class_names": self.class_names,
            "settings": self.settings,
            "summary": self.summary,
            "windows": windows.to_dict(orient="records"),
        }


def _span_ends(times: np.ndarray, fps: float) -> np.ndarray:
    """When each frame stops being shown: the next one's time; the last one's, a frame later
    (its own duration unknown: the one before it)."""
    last = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1 / fps)
    return np.append(times[1:], last)


def window_seconds(
    spans: np.ndarray, fps: float, times: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``start_s``, ``end_s`` of windows ``spans`` (first and last frame): at a constant rate
    ``start / fps`` and ``(end + 1) / fps``; with frame times, when those frames are shown."""
    if times is None:
        return np.round(spans[:, 0] / fps, 3), np.round((spans[:, 1] + 1) / fps, 3)
    return np.round(times[spans[:, 0]], 3), np.round(_span_ends(times, fps)[spans[:, 1]], 3)


def prob_columns(class_names: Sequence[str]) -> list[str]:
    return [f"prob_{name}" for name in class_names]


def summarise(
    probs: np.ndarray, face: np.ndarray, face_ratio: float, class_names: Sequence[str]
) -> dict[str, Any]:
    """The per-video summary of ``(W, C)`` window probabilities, face windows only."""
    names = list(class_names)
    shown = probs[face]
    summary: dict[str, Any] = {
        "num_windows": int(len(probs)),
        "face_windows": int(face.sum()),
        "face_ratio": round(float(face_ratio), 4),
        "face_window_share": round(float(face.mean()) if len(face) else 0.0, 4),
    }
    if len(shown):
        mean = shown.mean(axis=0)
        tops = np.bincount(shown.argmax(axis=1), minlength=len(names)) / len(shown)
        summary["top_class"] = names[int(mean.argmax())]
        summary["mean_probabilities"] = {n: float(v) for n, v in zip(names, mean, strict=True)}
        summary["window_share"] = {n: float(v) for n, v in zip(names, tops, strict=True)}
    else:
        summary["top_class"] = None
        summary["mean_probabilities"] = {n: None for n in names}
        summary["window_share"] = {n: None for n in names}
    return summary


def add_explanation_columns(windows: pd.DataFrame, explanation: Explanation, stride: int) -> None:
    """``frame_relevance`` (a list per window: the share of each token-frame, None without a
    face) and ``peak_frame`` (the first video frame of the most relevant token-frame)."""
    curves, peaks = [], []
    spans = zip(
        windows["start_frame"], windows["end_frame"], explanation.frame_relevance, strict=True
    )
    for start, end, curve in spans:
        if np.isnan(curve).any():
            curves.append(None)
            peaks.append(pd.NA)
            continue
        curves.append([round(float(v), 4) for v in curve])
        if not curve.any():  # no token raised the class: no peak
            peaks.append(pd.NA)
            continue
        # a short video's window repeats its last frame: the peak stays inside the video
        peaks.append(
            min(int(end), int(start) + int(np.argmax(curve)) * explanation.tubelet * stride)
        )
    windows["frame_relevance"] = curves
    windows["peak_frame"] = pd.array(peaks, "Int64")


class Predictor:
    """A fine-tuned classifier and the face pipeline, loaded once for any number of videos.

    Args:
        checkpoint: a finetune run's ``last.pt``, its ``final.pt``, or an official MAE-DFER
            fine-tuned ``.pth``.
        device: ``cpu``, ``cuda``, ``cuda:1``... ; None = CUDA when available.
        dataset: official checkpoints: the dataset it was fine-tuned on (names the classes).
        classes: official checkpoints: the class names in output order.
        hop: window hop in subsampled frames (default half a window).
        batch_windows: windows per forward pass.
        min_window_face: a window is classified when at least this share of its sampled
            frames has a face.
        detect_every: face detection on every k-th frame, tracking in between (as prepare).
        model_overrides: official checkpoints: model fields the weights do not show.
        progress: a tqdm bar over each video's windows.

    Raises:
        MaedferError: a checkpoint that cannot be used (see
            :func:`maedfer.inference.loading.load_classifier`).

    Example::

        predictor = maedfer.Predictor("final.pt", device="cpu")
        result = predictor.predict("interview.mp4")
        result.windows[["start_s", "end_s", "face", "top_class", "top_p"]]
        result.summary["top_class"], result.summary["face_ratio"]
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str | torch.device | None = None,
        dataset: str | None = None,
        classes: Sequence[str] | str | None = None,
        hop: int | None = None,
        batch_windows: int = BATCH_WINDOWS,
        min_window_face: float = 0.5,
        detect_every: int = 4,
        model_overrides: Mapping[str, Any] | Sequence[str] | None = None,
        progress: bool = False,
    ) -> None:
        if hop is not None and hop < 1:
            raise MaedferError(f"window hop ({hop}) must be >= 1 subsampled frame")
        if batch_windows < 1:
            raise MaedferError(f"batch_windows ({batch_windows}) must be >= 1")
        if not 0.0 <= min_window_face <= 1.0:
            raise MaedferError(f"min_window_face ({min_window_face}) must be in [0, 1]")
        self.device = resolve_device(device)
        self.checkpoint = Path(checkpoint)
        self.model, self.settings = load_classifier(
            checkpoint,
            device=self.device,
            dataset=dataset,
            classes=classes,
            model_overrides=model_overrides,
        )
        self.hop = default_hop(self.settings.num_frames) if hop is None else hop
        self.batch_windows = batch_windows
        self.min_window_face = min_window_face
        self.progress = progress
        self.aligner = FaceAligner(
            size=self.settings.size, device=self.device, detect_every=detect_every
        )

    @property
    def class_names(self) -> list[str]:
        return list(self.settings.class_names)

    # ------------------------------------------------------------------ a video file

    def embed(self, video: str | Path) -> pd.DataFrame:
        """Pooled, normalised features (the head's input, ``(C,)`` float32) per window of
        ``video``: the window columns of :attr:`Prediction.windows` and ``features`` (None
        where the window has no face)."""
        path, fps, _, _, table, faces = self._stream_video(video, features=True)
        spans = np.array(table["spans"], np.int64).reshape(-1, 2)
        feats = table["features"]
        start_s, end_s = window_seconds(spans, fps, table.get("times"))
        return pd.DataFrame(
            {
                "window": np.arange(len(spans)),
                "start_frame": spans[:, 0],
                "end_frame": spans[:, 1],
                "start_s": start_s,
                "end_s": end_s,
                "face": [f is not None for f in feats],
                "face_share": np.round(np.array(table["shares"], np.float64), 4),
                "features": [None if f is None else f.astype(np.float32) for f in feats],
            }
        )

    def predict(self, video: str | Path, *, explain: bool = False) -> Prediction:
        """Window probabilities of the face in ``video`` (any file PyAV decodes); with
        ``explain``, also where their evidence lies (:attr:`Prediction.explain`).

        Raises:
            VideoError: the file cannot be read (message: the reason, naming the file).
            NoFaceError: no frame has a face.
        """
        path, fps, width, height, table, faces = self._stream_video(video, explain=explain)
        return self._result(str(path), fps, width, height, table, faces)

    def _stream_video(self, video: str | Path, features: bool = False, explain: bool = False):
        path = Path(video)
        try:
            info = probe_video(path)
            track = self.aligner.locate_stream(prefetched(iter_video_frames(path)))
        except NoFaceError:
            raise NoFaceError(f"no face found in {path}") from None
        except VideoError as exc:  # its message is a bare reason: say which file
            raise VideoError(f"cannot read video {path}: {exc}") from None
        if len(track.valid) < MIN_FRAMES:  # prepare's rule: no motion to read in fewer
            raise VideoError(
                f"cannot read video {path}: too short: {len(track.valid)} "
                f"frame(s); predict needs at least {MIN_FRAMES}, as prepare "
                "does"
            )
        fps = float(info.fps)
        if not fps or not math.isfinite(fps) or fps <= 0:
            raise VideoError(f"{path} reports no usable frame rate ({fps})")
        transforms = self.aligner.transforms(track)
        faces = FacesFound(track.valid, track.landmarks, transforms, self.settings.size)
        total = len(
            window_indices(
                len(track.valid),
                num_frames=self.settings.num_frames,
                stride=self.settings.stride,
                hop=self.hop,
            )
        )
        crops = self.aligner.warp_stream(prefetched(iter_video_frames(path)), transforms)
        try:
            table = self._classify(
                zip(crops, track.valid, strict=True),
                total=total,
                features=features,
                explain=explain,
            )
        except VideoError as exc:
            raise VideoError(f"cannot read video {path}: {exc}") from None
        table["times"] = frame_times(path, len(track.valid))
        return path, fps, info.width, info.height, table, faces

    # ------------------------------------------------------------------ any frames

    def predict_frames(
        self, frames: Iterable[np.ndarray], fps: float, *, explain: bool = False
    ) -> Prediction:
        """Window probabilities of the face in ``frames``, ``(H, W, 3)`` uint8 RGB each.

        The frames are read once, as they come (a live source can be fed); see the module
        docstring for how that differs from :meth:`predict`. ``explain``: as :meth:`predict`.

        Raises:
            NoFaceError: no frame has a face.
            MaedferError: a frame that is not ``(H, W, 3)`` uint8, sizes that change, no
                frames, or ``fps`` not positive.
        """
        if not fps or not math.isfinite(float(fps)) or fps <= 0:
            raise MaedferError(f"fps ({fps}) must be a positive number")
        parts: dict[str, list[np.ndarray]] = {"valid": [], "landmarks": [], "transforms": []}
        shape: list[tuple[int, ...]] = []
        items = self._segments(iter(frames), parts, shape)
        table = self._classify(items, total=None, explain=explain)
        valid = np.concatenate(parts["valid"])
        if not valid.any():
            raise NoFaceError("no face found in the frames")
        faces = FacesFound(
            valid,
            np.concatenate(parts["landmarks"]),
            np.concatenate(parts["transforms"]),
            self.settings.size,
        )
        height, width = shape[0][:2]
        return self._result(None, float(fps), width, height, table, faces)

    def stream(self, frames: Iterable[np.ndarray], fps: float, **options: Any):
        """Window results of ``frames`` as an iterator, each as soon as its frames are in
        (:func:`maedfer.inference.stream.stream_windows_of`; options there)."""
        from maedfer.inference.stream import stream_windows_of

        return stream_windows_of(self, frames, fps, **options)

    def _segments(
        self, frames: Iterator[np.ndarray], parts: dict, shape: list
    ) -> Iterator[tuple[np.ndarray, bool]]:
        """``(crop, has face)`` per frame, aligned segment by segment."""
        buffer: list[np.ndarray] = []
        limit = None
        for frame in frames:
            if limit is None:
                frame = FaceAligner._check_frame(frame, None)
                shape.append(frame.shape)
                every = self.aligner.detect_every
                fit = SEGMENT_BYTES // max(1, frame.nbytes)
                limit = max(every * 8, min(SEGMENT_FRAMES, fit) // every * every)
            buffer.append(frame)
            if len(buffer) == limit:
                yield from self._align_segment(buffer, parts)
                buffer = []
        if buffer:
            yield from self._align_segment(buffer, parts)
        if limit is None:
            raise MaedferError("no frames given")

    def _align_segment(
        self, buffer: list[np.ndarray], parts: dict
    ) -> Iterator[tuple[np.ndarray, bool]]:
        frames = np.stack(buffer)
        n, size = len(frames), self.settings.size
        try:
            track = self.aligner.locate_stream(frames)
        except NoFaceError:  # this segment has none: its windows are faceless
            parts["valid"].append(np.zeros(n, bool))
            parts["landmarks"].append(np.full((n, 5, 2), np.nan, np.float32))
            parts["transforms"].append(np.tile(np.eye(2, 3, dtype=np.float32), (n, 1, 1)))
            blank = np.zeros((size, size, 3), np.uint8)
            for _ in range(n):
                yield blank, False
            return
        transforms = self.aligner.transforms(track)
        parts["valid"].append(track.valid)
        parts["landmarks"].append(track.landmarks)
        parts["transforms"].append(transforms)
        yield from zip(self.aligner.warp_stream(frames, transforms), track.valid, strict=True)

    # ------------------------------------------------------------------ shared

    @torch.inference_mode()
    def _classify(
        self,
        items: Iterable[tuple[np.ndarray, bool]],
        total: int | None,
        features: bool = False,
        explain: bool = False,
    ) -> dict[str, Any]:
        """Stream ``(crop, has face)`` items through the windows and the model: softmax
        probabilities per window, or with ``features`` the pooled features (None where no
        face); with ``explain`` also the relevance maps of each window (None where no face)."""
        s = self.settings
        spans, shares, probs, maps = [], [], [], []
        pending: list[tuple[int, np.ndarray]] = []
        bar = tqdm(
            total=total, desc="windows", unit="window", leave=False, disable=not self.progress
        )

        width = len(s.class_names) if not features else None

        def flush() -> None:
            batch = window_batch([clip for _, clip in pending], s.subtract_mean)
            # a model that draws random numbers in evaluation (S4D's router noise) draws the
            # same ones for every batch: the same video gives the same table, the caller's
            # generator untouched
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(0)
                if features:  # the head's input: pooled tokens after fc_norm
                    out = self.model.forward_features(batch.to(self.device)).float()
                    out = out.cpu().numpy()
                elif explain:  # the same forward, with the gradients Grad-CAM needs
                    found = explain_batch(self.model, batch.to(self.device))
                    out = found["probs"]
                    for i, (row, _) in enumerate(pending):
                        maps[row] = {k: (v[i] if v is not None else None) for k, v in found.items()}
                else:
                    logits = self.model(batch.to(self.device))
                    out = torch.softmax(logits.float(), dim=1).cpu().numpy()
            for (row, _), p in zip(pending, out, strict=True):
                probs[row] = p
            pending.clear()

        try:
            windows = stream_windows(items, num_frames=s.num_frames, stride=s.stride, hop=self.hop)
            for indices, window in windows:
                share = float(np.mean([has_face for _, has_face in window]))
                spans.append((int(indices[0]), int(indices[-1])))
                shares.append(share)
                probs.append(None if width is None else np.full(width, np.nan))
                maps.append(None)
                if share >= self.min_window_face and share > 0:
                    pending.append((len(probs) - 1, np.stack([crop for crop, _ in window])))
                    if len(pending) == self.batch_windows:
                        flush()
                bar.update(1)
            if pending:
                flush()
        finally:
            bar.close()
        if features:
            return {"spans": spans, "shares": shares, "features": probs}
        table = {"spans": spans, "shares": shares, "probs": np.array(probs, np.float64)}
        if explain:
            table["maps"] = maps
        return table

    def _result(
        self,
        video: str | None,
        fps: float,
        width: int,
        height: int,
        table: dict[str, Any],
        faces: FacesFound,
    ) -> Prediction:
        names = self.class_names
        probs = table["probs"].reshape(-1, len(names))
        spans = np.array(table["spans"], np.int64).reshape(-1, 2)
        face = ~np.isnan(probs).any(axis=1)
        top = np.where(face, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1)
        times = table.get("times")
        start_s, end_s = window_seconds(spans, fps, times)
        frame = pd.DataFrame(
            {
                "window": np.arange(len(spans)),
                "start_frame": spans[:, 0],
                "end_frame": spans[:, 1],
                "start_s": start_s,
                "end_s": end_s,
                "face": face,
                "face_share": np.round(np.array(table["shares"], np.float64), 4),
            }
        )
        for column, values in zip(prob_columns(names), probs.T, strict=True):
            frame[column] = values
        frame["top_class"] = pd.array([names[i] if i >= 0 else None for i in top], "string")
        frame["top_p"] = np.where(
            face, np.nanmax(np.where(face[:, None], probs, 0), axis=1), np.nan
        )
        settings = {
            **self.settings.to_dict(),
            "hop": self.hop,
            "min_window_face": self.min_window_face,
        }
        settings.pop("model_config", None)
        explanation = None
        if "maps" in table:
            explanation = build_explanation(self.model, table["maps"])
            add_explanation_columns(frame, explanation, self.settings.stride)
        return Prediction(
            video=video,
            fps=fps,
            num_frames=len(faces.valid),
            width=int(width),
            height=int(height),
            class_names=names,
            windows=frame,
            summary=summarise(probs, face, faces.face_ratio, names),
            faces=faces,
            settings=settings,
            explain=explanation,
            frame_times=times,
        )


__all__ = [
    "FacesFound",
    "ModelSettings",
    "Prediction",
    "Predictor",
    "add_explanation_columns",
    "prob_columns",
    "summarise",
]
