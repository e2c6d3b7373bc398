"""What a pre-trained MAE sees and fills in: masked-autoencoder reconstructions of face windows.

``Reconstructor(checkpoint).reconstruct(video)`` (docs/inference.md, "Reconstructions") cuts the
video's face into windows as ``predict`` does (the same MTCNN tracking, alignment and windows;
windows of a manifest's prepared clips are read as they are), masks each window with the
model's part-window tube masks (``mask_ratio``, drawn from ``seed``) and runs the encoder on the
visible tokens and the decoder on all of them.

The decoder predicts, for each masked token, the normalised target the pre-training loss
compares with (:meth:`maedfer.model.MaskedLGIFormer.targets`): the tubelet's first frame
(appearance) and the difference of its two frames (motion), both standardised by the tubelet's
own per-channel mean and unbiased std. They are mapped back to pixels with the statistics of the
input's patches, as VideoMAE's visualisation does: ``appearance = pred * (std + 1e-6) + mean``,
``motion = pred * (std + 1e-6)`` (a difference: the mean cancels). A visible token is not
predicted: its "reconstruction" is its own normalised target mapped back the same way, which
gives the input patch (the sanity check of the tests). With mean-frame subtraction (the demo's
recipe) the model sees, and predicts, each frame's difference from the clip's mean frame; the
appearance pictures add that mean frame back so they show a face, and say so: the face's
overall look then comes from the mean frame, which the model never saw, and what the model
filled in is the change.

Per window the losses are those of the pre-training loss on that window alone: the MSE over its
masked tokens (``loss``, the reference's plain mean) and its appearance and motion halves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from einops import rearrange

from maedfer.constants import IMAGENET_MEAN, IMAGENET_STD
from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.inference.pretrained import PretrainSettings, load_pretrainer
from maedfer.inference.windows import stream_windows, window_batch
from maedfer.model import MaskedLGIFormer, TubeWindowMasking
from maedfer.preprocess.faces import FaceAligner, NoFaceError
from maedfer.preprocess.video import VideoError, iter_video_frames, prefetched, probe_video

MIN_WINDOW_FACE = 0.5  # as Predictor: a window is reconstructed when half its frames have a face


@dataclass
class WindowReconstruction:
    """One window: its aligned frames, mask, reconstructions and losses.

    Arrays are None and losses NaN where the window has no face (``face`` False).

    Attributes:
        window, start_frame, end_frame, start_s, end_s, face, face_share: as the rows of
            :attr:`maedfer.inference.Prediction.windows`.
        frame_indices: ``(T,)`` the video frames sampled; fps: the video's frame rate.
        frames: ``(T, S, S, 3)`` uint8 aligned face crops (the model's input before
            normalisation).
        mask: ``(T', H', W')`` bool token mask, True = masked (the same in every token-frame).
        appearance: ``(T', S, S, 3)`` float32 RGB in [0, 1] (unclipped): each tubelet's first
            frame, masked patches from the decoder, visible ones from the input.
        motion: ``(T', S, S, 3)`` float32: each tubelet's second frame minus its first, in the
            same units; masked patches from the decoder.
        motion_input: ``(T', S, S, 3)`` float32: the input's own frame differences.
        pred: ``(N_masked, D)`` the decoder's output (normalised targets, masked tokens in
            raster order).
        loss, loss_appearance, loss_motion: the window's pre-training loss and its halves.
        mean_frame_added: the model sees clips minus their mean frame; ``appearance`` has that
            mean frame added back (the model never saw it: it predicts the difference).
    """

    window: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    face: bool
    face_share: float
    frame_indices: np.ndarray
    fps: float = math.nan
    frames: np.ndarray | None = None
    mask: np.ndarray | None = None
    appearance: np.ndarray | None = None
    motion: np.ndarray | None = None
    motion_input: np.ndarray | None = None
    pred: np.ndarray | None = None
    loss: float = math.nan
    loss_appearance: float = math.nan
    loss_motion: float = math.nan
    mean_frame_added: bool = False

    @property
    def second(self) -> np.ndarray | None:
        """``(T', S, S, 3)`` each tubelet's second frame as reconstructed (appearance + motion)."""
        return None if self.appearance is None else self.appearance + self.motion

    def row(self) -> dict[str, Any]:
        """The window's row of the losses table."""
        masked = math.nan if self.mask is None else float(self.mask.mean())
        return {
            "window": self.window,
            "start_frame": self.start_frame,
            "end_frame": self.end_frame,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "face": self.face,
            "face_share": round(self.face_share, 4),
            "masked_share": masked,
            "loss": self.loss,
            "loss_appearance": self.loss_appearance,
            "loss_motion": self.loss_motion,
        }


# ---------------------------------------------------------------- the arithmetic


def _unpatch(tokens: torch.Tensor, grid: tuple[int, int, int], patch: int) -> torch.Tensor:
    """``(B, N, p*p, 3)`` tokens in raster order -> ``(B, T', H, W, 3)`` pictures."""
    _, h, w = grid
    return rearrange(tokens, "b (t h w) (p1 p2) c -> b t (h p1) (w p2) c", h=h, w=w, p1=patch)


@torch.no_grad()
def reconstruct_pixels(
    model: MaskedLGIFormer, video: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Map the decoder's output back to pixels with the input patches' statistics.

    Args:
        model: the pre-training model (its patch and tubelet sizes, target options).
        video: ``(B, 3, T, H, W)`` the model's input (normalised as the loaders do).
        mask: ``(B, N)`` bool, True = masked.
        pred: ``(B, N_masked, 3*t*p*p)`` the decoder's output for ``video`` and ``mask``.

    Returns:
        ``appearance``, ``motion`` and ``motion_input``, each ``(B, T', H, W, 3)`` float32 in
        the input's [0, 1] pixel units (module docstring); visible tokens hold the input's own.
    """
    if model.tubelet_size != 2:
        raise MaedferError(
            f"reconstructions show tubelets of 2 frames; this model's are {model.tubelet_size}"
        )
    video = video.float()
    mean = torch.tensor(IMAGENET_MEAN, device=video.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=video.device).view(1, 3, 1, 1, 1)
    p = model.patch_size
    patches = rearrange(
        video * std + mean, "b c (t p0) (h p1) (w p2) -> b (t h w) p0 (p1 p2) c", p0=2, p1=p, p2=p
    )
    if model.normalize_target:  # the statistics the targets were standardised with
        flat = patches.flatten(2, 3)
        mu = flat.mean(dim=2, keepdim=True).unsqueeze(2)
        scale = flat.var(dim=2, unbiased=True, keepdim=True).sqrt().unsqueeze(2) + 1e-6
    else:
        mu, scale = torch.zeros_like(patches[:, :, :1, :1]), torch.ones_like(patches[:, :, :1, :1])
    target = (patches - mu) / scale
    if model.frame_diff_target:
        target = torch.stack((target[:, :, 0], target[:, :, 1] - target[:, :, 0]), dim=2)
    truth = target.clone()
    filled = target.clone()
    filled[mask] = pred.float().reshape(-1, *target.shape[2:])
    out = {}
    for name, source in (("filled", filled), ("truth", truth)):
        first = source[:, :, 0] * scale[:, :, 0] + mu[:, :, 0]
        second = source[:, :, 1] * scale[:, :, 0]
        if not model.frame_diff_target:  # the second frame itself was the target
            second = second + mu[:, :, 0] - first
        out[name] = (first, second)
    grid = model.encoder.patch_embed.grid
    return {
        "appearance": _unpatch(out["filled"][0], grid, p),
        "motion": _unpatch(out["filled"][1], grid, p),
        "motion_input": _unpatch(out["truth"][1], grid, p),
    }


def window_losses(model: MaskedLGIFormer, pred: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """``(B, 3)`` per window: the pre-training loss, its appearance and its motion half."""
    pred = pred.float().unflatten(-1, (model.tubelet_size, -1))
    targets = targets.float().unflatten(-1, (model.tubelet_size, -1))
    error = (pred - targets) ** 2
    whole = error.mean(dim=(1, 2, 3))
    appearance = error[:, :, 0].mean(dim=(1, 2))
    motion = error[:, :, 1:].mean(dim=(1, 2, 3))
    return torch.stack((whole, appearance, motion), 1).cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------- the reconstructor


class Reconstructor:
    """A pre-trained MAE and the face pipeline, loaded once for any number of videos.

    Args:
        checkpoint: a pretrain run's ``last.pt`` / ``final.pt``, or an official MAE-DFER
            pre-trained ``.pth`` (a classifier checkpoint is refused).
        device: ``cpu``, ``cuda``...; None = CUDA when available.
        mask_ratio: share of each mask window's tokens masked (default: the model's, 0.9).
        seed: seed of the masks (the same seed gives the same masks).
        hop: window hop in sampled frames (default: a whole window, so windows do not overlap).
        detect_every: face detection on every k-th frame, tracking in between (as prepare).
        model_overrides: model fields the official weights do not show (``num_heads``...), and
            ``official_decoder_order``.

    Example::

        rec = Reconstructor("runs/pretrain/final.pt", device="cpu")
        for window in rec.reconstruct("face.mp4"):
            window.loss, window.appearance.shape
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str | torch.device | None = None,
        mask_ratio: float | None = None,
        seed: int = 0,
        hop: int | None = None,
        detect_every: int = 4,
        model_overrides: Mapping[str, Any] | Sequence[str] | None = None,
    ) -> None:
        if hop is not None and hop < 1:
            raise MaedferError(f"window hop ({hop}) must be >= 1 sampled frame")
        self.device = resolve_device(device)
        self.model, self.settings = load_pretrainer(
            checkpoint, device=self.device, model_overrides=model_overrides
        )
        self.mask_ratio = self.settings.mask_ratio if mask_ratio is None else float(mask_ratio)
        if not 0 < self.mask_ratio < 1:
            raise MaedferError(f"--mask-ratio ({self.mask_ratio}) must be in (0, 1)")
        encoder = self.model.encoder
        try:
            self.masking = TubeWindowMasking(
                encoder.patch_embed.grid, mask_ratio=self.mask_ratio, window=encoder.region_size[1:]
            )
        except ValueError as exc:
            raise MaedferError(f"--mask-ratio {self.mask_ratio}: {exc}") from None
        self.seed = int(seed)
        self.hop = self.settings.num_frames if hop is None else hop
        self._detect_every = detect_every
        self._aligner: FaceAligner | None = None

    @property
    def aligner(self) -> FaceAligner:
        if self._aligner is None:  # MTCNN only when a video needs faces found
            self._aligner = FaceAligner(
                size=self.settings.size, device=self.device, detect_every=self._detect_every
            )
        return self._aligner

    # ------------------------------------------------------------------ inputs

    def reconstruct(self, video: str | Path) -> list[WindowReconstruction]:
        """Every window of the face in ``video`` (see :meth:`iter_video`)."""
        return list(self.iter_video(video))

    def iter_video(self, video: str | Path) -> Iterator[WindowReconstruction]:
        """The windows of the face in ``video``, each as soon as it is reconstructed.

        Raises:
            VideoError: unreadable file; NoFaceError: no frame has a face.
        """
        path = Path(video)
        try:
            info = probe_video(path)
            track = self.aligner.locate_stream(prefetched(iter_video_frames(path)))
        except NoFaceError:
            raise NoFaceError(f"no face found in {path}") from None
        except VideoError as exc:
            raise VideoError(f"cannot read video {path}: {exc}") from None
        transforms = self.aligner.transforms(track)
        crops = self.aligner.warp_stream(prefetched(iter_video_frames(path)), transforms)
        try:
            yield from self.iter_frames(zip(crops, track.valid, strict=True), float(info.fps))
        except VideoError as exc:
            raise VideoError(f"cannot read video {path}: {exc}") from None

    def iter_clip(
        self, path: str | Path, fps: float, crop: Sequence[int] | None = None
    ) -> Iterator[WindowReconstruction]:
        """The windows of a prepared face clip (a manifest row): no face search, every frame
        is a face; ``crop`` (x, y, w, h) is cut first, then the frames are resized to the
        model's size."""
        size = self.settings.size

        def frames() -> Iterator[tuple[np.ndarray, bool]]:
            for image in iter_video_frames(path):
                if crop is not None:
                    x, y, w, h = (int(v) for v in crop)
                    image = image[max(0, y) : y + h, max(0, x) : x + w]
                if image.shape[:2] != (size, size):
                    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
                yield np.ascontiguousarray(image), True

        try:
            yield from self.iter_frames(frames(), fps)
        except VideoError as exc:
            raise VideoError(f"cannot read clip {path}: {exc}") from None

    def iter_frames(
        self, items: Iterable[tuple[np.ndarray, bool]], fps: float
    ) -> Iterator[WindowReconstruction]:
        """Windows of aligned ``(crop, has face)`` items, one per video frame."""
        s = self.settings
        generator = torch.Generator().manual_seed(self.seed)
        windows = stream_windows(items, num_frames=s.num_frames, stride=s.stride, hop=self.hop)
        for number, (indices, window) in enumerate(windows):
            share = float(np.mean([has_face for _, has_face in window]))
            mask = self.masking(1, generator=generator)  # drawn for every window: seeds stay put
            result = WindowReconstruction(
                window=number,
                start_frame=int(indices[0]),
                end_frame=int(indices[-1]),
                start_s=round(int(indices[0]) / fps, 3),
                end_s=round((int(indices[-1]) + 1) / fps, 3),
                face=False,
                face_share=share,
                frame_indices=np.asarray(indices),
                fps=float(fps),
            )
            if share >= MIN_WINDOW_FACE and share > 0:
                self._fill(result, np.stack([crop for crop, _ in window]), mask)
            yield result

    # ------------------------------------------------------------------ one window

    @torch.no_grad()
    def reconstruct_window(self, frames: np.ndarray, mask: torch.Tensor) -> dict[str, Any]:
        """The reconstruction of one aligned window ``(T, S, S, 3)`` uint8 under ``mask``
        ``(1, N)`` bool: ``pred``, ``appearance``, ``motion``, ``motion_input`` (numpy) and
        ``losses`` (loss, appearance, motion)."""
        s = self.settings
        video = window_batch([frames], s.subtract_mean).to(self.device)
        mask = mask.to(self.device)
        pred = self.model(video, mask)
        losses = window_losses(self.model, pred, self.model.targets(video, mask))[0]
        pixels = reconstruct_pixels(self.model, video, mask, pred)
        out = {k: v[0].cpu().numpy() for k, v in pixels.items()}
        if s.subtract_mean:  # put the clip's mean frame back: the pictures show the face
            offset = frames.astype(np.float32).mean(0) / 255 - np.asarray(IMAGENET_MEAN, np.float32)
            out["appearance"] += offset
        out["pred"] = pred[0].float().cpu().numpy()
        out["losses"] = losses
        return out

    def _fill(self, result: WindowReconstruction, frames: np.ndarray, mask: torch.Tensor) -> None:
        out = self.reconstruct_window(frames, mask)
        result.face = True
        result.frames = frames
        result.mask = mask[0].cpu().numpy().reshape(self.model.encoder.patch_embed.grid)
        result.appearance, result.motion = out["appearance"], out["motion"]
        result.motion_input, result.pred = out["motion_input"], out["pred"]
        result.loss, result.loss_appearance, result.loss_motion = map(float, out["losses"])
        result.mean_frame_added = self.settings.subtract_mean


def reconstruct(
    video: str | Path, checkpoint: str | Path, **options: Any
) -> list[WindowReconstruction]:
    """Every window of ``video`` reconstructed by ``checkpoint`` (options: see
    :class:`Reconstructor`)."""
    return Reconstructor(checkpoint, **options).reconstruct(video)


__all__ = [
    "PretrainSettings",
    "Reconstructor",
    "WindowReconstruction",
    "reconstruct",
    "reconstruct_pixels",
    "window_losses",
]
