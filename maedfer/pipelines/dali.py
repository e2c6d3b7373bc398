"""The GPU backend: NVIDIA DALI decodes (NVDEC), crops, resizes, flips and normalises clips.

Imported only when this backend is chosen (``import maedfer`` works without DALI). The same
pipeline definition runs on the GPU (``device="mixed"`` decoder: H.264, HEVC, VP9, AV1, …) and on
the CPU (``device_id=None``: DALI 2.4 decodes only VP8, VP9 and MJPEG there, DESIGN.md §7), which
is how the CPU tests run it.

Start-up does not grow with the manifest: no file is opened when the pipeline is built. An
external source reads each batch's encoded bytes (a small thread pool) and hands DALI, per
sample, the frame indices, the manifest crop, the augmentation box and the flip that
:class:`~maedfer.pipelines.plan.EpochPlan` chose — the choices the PyAV backend applies too.
Output contract: as :mod:`maedfer.pipelines.pyav` (``video`` float32 ``(B, 3, T, size, size)``
on the pipeline's device, ImageNet-normalised); mean-frame subtraction and random erasing run in
torch on that device after DALI (:func:`maedfer.pipelines.augment.finish_clip`).

A file DALI cannot decode stops the pipeline; the pending samples are then decoded one at a
time to find the faulty files, those are replaced by other samples from then on, and a new
pipeline resumes at the failed batch (the epoch goes on). If every sample fails alone while PyAV
decodes them, the fault is DALI's (an H.264 clip for the CPU decoder, say): that is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines import augment
from maedfer.pipelines.plan import EpochPlan, SampleSpec
from maedfer.pipelines.pyav import MAX_ATTEMPTS, BadClipError, decode_frames, probe_num_frames

log = logging.getLogger(__name__)

try:  # DALI is the optional `gpu` extra: this module is imported only for backend="dali"
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MaedferError(
        "backend 'dali' needs NVIDIA DALI (pip install 'maedfer[gpu]'); use backend pyav "
        "(training: --set data.backend=pyav)"
    ) from exc

_OUTPUTS = ("encoded", "frames", "crop_end", "crop_start", "full", "box_start", "box_end",
            "mirror")


def _read(path: str) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise BadClipError(path, f"cannot read it ({exc.strerror or exc})") from None
    if data.size == 0:
        raise BadClipError(path, "the file is empty")
    return data


def _sample_arrays(spec: SampleSpec, data: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """One sample's inputs to the pipeline, in ``_OUTPUTS`` order.

    ROIs are (y, x) like DALI's HWC shape order; a row without crop takes the whole frame
    (``crop_end`` 0 plus ``full`` 1 times the frame's shape, computed in the pipeline).
    """
    crop, box = spec.crop, spec.box or augment.Box(0, 0, size, size)
    i32 = np.int32
    return (
        data,
        spec.frame_indices.astype(i32),
        np.array([crop.y + crop.h, crop.x + crop.w] if crop else [0, 0], i32),
        np.array([crop.y, crop.x] if crop else [0, 0], i32),
        np.array(0 if crop else 1, i32),
        np.array([box.y, box.x], i32),
        np.array([box.y + box.h, box.x + box.w], i32),
        np.array(int(spec.flip), i32),
    )


def _dali_reason(error: Exception) -> str:
    """The informative line of a DALI pipeline error (the one after "encountered:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for before, line in zip(lines, lines[1:], strict=False):
        if before.startswith("encountered"):
            return line[:200]
    return (lines[0] if lines else repr(error))[:200]


class _BatchSource:
    """DALI external source: batch ``k`` of the plan as arrays, with faulty files replaced."""

    def __init__(self, plan: EpochPlan, *, batch_size: int, drop_last: bool, first_batch: int,
                 bad_paths: set[str], threads: int) -> None:
        self.plan, self.batch_size, self.drop_last = plan, batch_size, drop_last
        self.first_batch = first_batch
        self.bad_paths = bad_paths  # shared with the loader: grows as faults are found
        self.replaced: dict[int, tuple[str, str]] = {}  # position -> (path, reason)
        self.specs: dict[int, list[SampleSpec]] = {}  # batch index -> its samples
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="maedfer-read")

    def close(self) -> None:
        self.pool.shutdown(wait=False)

    def num_batches(self) -> int:
        n = len(self.plan)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _spec(self, i: int) -> tuple[SampleSpec, np.ndarray]:
        for attempt in range(MAX_ATTEMPTS):
            try:
                spec = self.plan.spec(i, attempt=attempt, probe=probe_num_frames)
                if spec.path in self.bad_paths:
                    raise BadClipError(spec.path, "failed to decode earlier")
                return spec, _read(spec.path)
            except BadClipError as exc:
                self.bad_paths.add(exc.path)
                self.replaced.setdefault(i, (exc.path, exc.reason))
        raise MaedferError(f"{MAX_ATTEMPTS} samples in a row failed to read at position {i}")

    def __call__(self, info: Any) -> list[list[np.ndarray]]:
        k = self.first_batch + info.iteration
        if k >= self.num_batches():
            raise StopIteration
        positions = range(k * self.batch_size, min((k + 1) * self.batch_size, len(self.plan)))
        pairs = list(self.pool.map(self._spec, positions))
        self.specs[k] = [spec for spec, _ in pairs]
        size = self.plan.config.size
        return [list(column) for column in
                zip(*(_sample_arrays(spec, data, size) for spec, data in pairs), strict=True)]


class _OneSample:
    """A source giving one sample once: used to tell which file of a failed batch is bad."""

    def __init__(self, spec: SampleSpec, size: int) -> None:
        self.arrays = _sample_arrays(spec, _read(spec.path), size)

    def __call__(self, info: Any) -> list[list[np.ndarray]]:
        if info.iteration:
            raise StopIteration
        return [[a] for a in self.arrays]


def _build(source: _BatchSource, *, batch_size: int, threads: int, device_id: int | None,
           size: int) -> Any:
    """The one pipeline definition, GPU (``device_id`` set) or CPU (``None``)."""
    mean = [m * 255 for m in augment.IMAGENET_MEAN]
    std = [s * 255 for s in augment.IMAGENET_STD]
    linear = {"interp_type": types.INTERP_LINEAR, "antialias": False, "size": [size, size]}

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id,
                  exec_dynamic=True, prefetch_queue_depth=2)
    def clip_pipeline():  # noqa: ANN202 (DALI graph)
        dtypes = [types.UINT8] + [types.INT32] * 7
        (encoded, frames, crop_end, crop_start, full, box_start, box_end,
         mirror) = fn.external_source(source=source, num_outputs=len(_OUTPUTS), batch=True,
                                      batch_info=True, dtype=dtypes)  # fmt: skip
        video = fn.decoders.video(encoded, device="cpu" if device_id is None else "mixed",
                                  frames=frames, pad_mode="edge")
        # crop, then resize the crop alone: bilinear at the crop's border then repeats the
        # border pixel, as torch does on the PyAV path (a resize ROI would read pixels outside)
        frame_hw = video.shape(dtype=types.INT32)[1:3]  # (F, H, W, C) -> (H, W)
        video = fn.slice(video, start=crop_start, end=crop_end + full * frame_hw,
                         axis_names="HW", out_of_bounds_policy="trim_to_shape")
        video = fn.resize(video, **linear)
        video = fn.slice(video, start=box_start, end=box_end, axis_names="HW",
                         out_of_bounds_policy="trim_to_shape")
        # float output: the augmentation resize is not rounded (as in torch, MODEL.md §4.2)
        video = fn.resize(video, dtype=types.FLOAT, **linear)
        return fn.crop_mirror_normalize(video, dtype=types.FLOAT, output_layout="CFHW",
                                        mean=mean, std=std, mirror=mirror)

    return clip_pipeline()


class DaliEpoch:
    """Iterates one epoch of a plan through DALI; rebuilds the pipeline after a faulty file."""

    def __init__(self, plan: EpochPlan, *, batch_size: int, drop_last: bool, threads: int,
                 device: torch.device, bad_paths: set[str]) -> None:
        self.plan, self.batch_size, self.drop_last = plan, batch_size, drop_last
        self.threads, self.device, self.bad_paths = threads, device, bad_paths
        self.device_id = (device.index or 0) if device.type == "cuda" else None
        self.replaced: dict[int, tuple[str, str]] = {}  # position -> (path, reason)

    def _pipeline(self, source: Any, batch_size: int) -> Any:
        return _build(source, batch_size=batch_size, threads=self.threads,
                      device_id=self.device_id, size=self.plan.config.size)

    def _start(self, first_batch: int) -> tuple[_BatchSource, Any]:
        source = _BatchSource(self.plan, batch_size=self.batch_size, drop_last=self.drop_last,
                              first_batch=first_batch, bad_paths=self.bad_paths,
                              threads=self.threads)
        iterator = DALIGenericIterator([self._pipeline(source, self.batch_size)], ["video"],
                                       auto_reset=False, prepare_first_batch=False,
                                       last_batch_policy=LastBatchPolicy.PARTIAL)
        return source, iterator

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batch = 0
        source, iterator = self._start(0)
        try:
            while True:
                try:
                    video = next(iterator)[0]["video"]
                except StopIteration:
                    break
                except RuntimeError as exc:  # DALI stops the pipeline on a decode error
                    self._merge(source)
                    # the failure may belong to a batch read ahead: check every pending sample
                    pending = [s for k in sorted(source.specs) if k >= batch
                               for s in source.specs[k]]
                    self._isolate(pending, exc)
                    source.close()
                    source, iterator = self._start(batch)  # resume at the failed batch
                    continue
                self._merge(source)
                yield self._finish(video, source.specs.pop(batch))
                batch += 1
            self._merge(source)
        finally:
            source.close()

    def _merge(self, source: _BatchSource) -> None:
        # the first reason found for a position wins (the real fault, not "failed earlier")
        for position, fault in source.replaced.items():
            self.replaced.setdefault(position, fault)

    def _decodes(self, spec: SampleSpec) -> str | None:
        """``None`` if DALI decodes this one sample alone, else DALI's last error line."""
        try:
            pipe = self._pipeline(_OneSample(spec, self.plan.config.size), 1)
            pipe.run()
            return None
        except BadClipError as exc:
            return exc.reason
        except RuntimeError as exc:
            return _dali_reason(exc)

    def _isolate(self, specs: list[SampleSpec], error: Exception) -> None:
        """Find the faulty files of a failed batch, one sample at a time.

        When every sample fails alone yet PyAV decodes one of them, the fault is DALI's (say an
        H.264 clip for the CPU decoder), not the files': that is an error, not a replacement.
        """
        failed = {spec.position: (spec, why) for spec in specs
                  if (why := self._decodes(spec)) is not None}
        if specs and len(failed) == len(specs):
            for spec in specs:
                try:
                    decode_frames(spec.path, spec.frame_indices)
                except BadClipError:
                    continue
                where = " on the CPU (VP8, VP9, MJPEG only there)" if self.device_id is None else ""
                raise MaedferError(
                    f"DALI cannot decode {spec.path}{where} but PyAV can; use backend pyav "
                    f"(training: --set data.backend=pyav). "
                    f"DALI said: {_dali_reason(error)}"
                ) from error
        if not failed:
            raise MaedferError(f"DALI failed on a batch whose clips each decode alone: {error}")
        for position, (spec, why) in failed.items():
            self.bad_paths.add(spec.path)
            self.replaced.setdefault(position, (spec.path, why))

    def _finish(self, video: torch.Tensor, specs: list[SampleSpec]) -> dict[str, Any]:
        config = self.plan.config
        if config.subtract_mean or any(s.erase is not None or s.negate for s in specs):
            video = torch.stack([
                augment.finish_clip(v, subtract_mean=config.subtract_mean, erase=s.erase,
                                    erase_seed=s.erase_seed, negate=s.negate)
                for v, s in zip(video, specs, strict=True)
            ])  # fmt: skip
        return {
            "video": video,
            "label": torch.tensor([s.label for s in specs], dtype=torch.long),
            "clip_id": [s.clip_id for s in specs],
            "view": torch.tensor([s.view for s in specs], dtype=torch.long),
        }
