"""The GPU backend: NVIDIA DALI decodes (NVDEC), crops, resizes and flips; RandAugment in torch.

Imported only when this backend is chosen (``import maedfer`` works without DALI). The same
pipeline definition runs on the GPU (``device="mixed"`` decoder: H.264, HEVC, VP9, AV1, …) and on
the CPU (``device_id=None``: DALI 2.4 decodes only VP8, VP9 and MJPEG there, DESIGN.md §7), which
is how the CPU tests run it.

Start-up does not grow with the manifest: no file is opened when the pipeline is built. An
external source reads each batch's encoded bytes (a small thread pool) and hands DALI, per
sample, the frame indices, the manifest crop, the augmentation box and the flip that
:class:`~maedfer.pipelines.plan.EpochPlan` chose — the choices the PyAV backend applies too.
Output contract: the backend contract's (:mod:`maedfer.pipelines.backend`; ``video`` float32
``(B, 3, T, size, size)`` on the pipeline's device). Steps after DALI, in torch on that device:
with RandAugment (train), DALI stops after the crop and first resize, and the plan's RandAugment
ops (:func:`maedfer.pipelines.rand_augment.apply_torch`, before the random-resized crop as in
MODEL.md §4.2), the box resize and the flip run on the decoded frames; then, every mode,
:func:`~maedfer.pipelines.augment.normalise` and :func:`~maedfer.pipelines.augment.finish_clip`
(mean-frame subtraction, random erasing). Tolerance against PyAV on the same plan: decoders
within 1/255 (max 2/255 after resizing); with RandAugment, the whole-clip tolerance stated in
:mod:`maedfer.pipelines.rand_augment`.

A file DALI cannot decode stops the pipeline; the pending samples are then decoded one at a
time to find the faulty files, those are replaced by other samples from then on, and a new
pipeline resumes at the failed batch (the epoch goes on). If every sample fails alone while PyAV
decodes them, the fault is DALI's (an H.264 clip for the CPU decoder, say): that is an error.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines import augment, backend, nvdec
from maedfer.pipelines.backend import BadClipError, Faults, sample_with_retries
from maedfer.pipelines.plan import EpochPlan, SampleConfig, SampleSpec
from maedfer.pipelines.rand_augment import apply_torch, policy_for

log = logging.getLogger(__name__)
# with RandAugment the graph stops before the box and flip inputs, which torch applies
warnings.filterwarnings("ignore", message="The external source node .* produces")

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
                 known_bad: set[str], threads: int) -> None:
        self.plan, self.batch_size, self.drop_last = plan, batch_size, drop_last
        self.first_batch = first_batch
        self.known_bad = known_bad  # the loader's: grows as faults are found
        self.faults: list[tuple[int, str, str]] = []  # (position, path, reason), for the loader
        self.specs: dict[int, list[SampleSpec]] = {}  # batch index -> its samples
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="maedfer-read")

    def close(self) -> None:
        self.pool.shutdown(wait=False)

    def num_batches(self) -> int:
        n = len(self.plan)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _spec(self, i: int) -> tuple[SampleSpec, np.ndarray]:
        spec, data, faults = sample_with_retries(self.plan, i, lambda s: _read(s.path),
                                                 skip=self.known_bad)
        self.faults.extend(faults)
        return spec, data

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


def _build(source: Any, *, batch_size: int, threads: int, device_id: int | None,
           size: int, rand_augment: bool) -> Any:
    """The one pipeline definition, GPU (``device_id`` set) or CPU (``None``).

    Output: with ``rand_augment``, uint8 ``(B, F, size, size, 3)`` frames after the manifest crop
    and the first resize (torch does the rest, :meth:`DaliEpoch._finish`); else float
    ``(B, 3, F, size, size)`` after the box resize and the flip, not yet normalised.
    """
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
        if rand_augment:  # RandAugment works on these uint8 frames, before the box (§4.2)
            return video
        video = fn.slice(video, start=box_start, end=box_end, axis_names="HW",
                         out_of_bounds_policy="trim_to_shape")
        # float output: the augmentation resize is not rounded (as in torch, MODEL.md §4.2)
        video = fn.resize(video, dtype=types.FLOAT, **linear)
        # layout and flip only: the normalisation is augment.normalise, after DALI
        return fn.crop_mirror_normalize(video, dtype=types.FLOAT, output_layout="CFHW",
                                        mirror=mirror)

    return clip_pipeline()


class DaliEpoch:
    """Iterates one epoch of a plan through DALI; rebuilds the pipeline after a faulty file."""

    def __init__(self, plan: EpochPlan, *, batch_size: int, drop_last: bool, threads: int,
                 device: torch.device, faults: Faults) -> None:
        self.plan, self.batch_size, self.drop_last = plan, batch_size, drop_last
        self.threads, self.device, self.faults = threads, device, faults
        self.device_id = (device.index or 0) if device.type == "cuda" else None
        self.rand_augment = plan.config.rand_augment

    def _pipeline(self, source: Any, batch_size: int) -> Any:
        return _build(source, batch_size=batch_size, threads=self.threads,
                      device_id=self.device_id, size=self.plan.config.size,
                      rand_augment=self.rand_augment)

    def _start(self, first_batch: int) -> tuple[_BatchSource, Any]:
        source = _BatchSource(self.plan, batch_size=self.batch_size, drop_last=self.drop_last,
                              first_batch=first_batch, known_bad=self.faults.known_bad,
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
        faults, source.faults = source.faults, []
        for position, path, reason in faults:
            self.faults.note(position, path, reason)

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

        When every sample fails alone yet the reference backend (PyAV) decodes one of them, the
        fault is DALI's (say an H.264 clip for the CPU decoder), not the files': that is an
        error, not a replacement.
        """
        failed = {spec.position: (spec, why) for spec in specs
                  if (why := self._decodes(spec)) is not None}
        if specs and len(failed) == len(specs):
            reference = backend.load(backend.REFERENCE)
            for spec in specs:
                if not reference.decodes(spec):
                    continue
                where = " on the CPU (VP8, VP9, MJPEG only there)" if self.device_id is None else ""
                raise MaedferError(
                    f"DALI cannot decode {spec.path}{where} but {backend.REFERENCE} can; use "
                    f"backend {backend.REFERENCE} (training: --set data.backend="
                    f"{backend.REFERENCE}). DALI said: {_dali_reason(error)}"
                ) from error
        if not failed:
            raise MaedferError(f"DALI failed on a batch whose clips each decode alone: {error}")
        for position, (spec, why) in failed.items():
            self.faults.note(position, spec.path, why)

    def _augment(self, frames: torch.Tensor, specs: list[SampleSpec]) -> torch.Tensor:
        """uint8 ``(B, F, S, S, 3)`` → float ``(B, 3, F, S, S)``: RandAugment, box, flip."""
        config = self.plan.config
        fill = policy_for(config.rand_augment_policy, config.size).fill
        clips = []
        for video, spec in zip(frames, specs, strict=True):
            x = video.permute(0, 3, 1, 2).float()  # (T, 3, H, W), whole numbers 0..255
            if spec.rand_augment:
                x = apply_torch(x, spec.rand_augment, fill)
            x = augment.resize_frames(x, spec.box, config.size)
            clips.append((x.flip(-1) if spec.flip else x).transpose(0, 1))
        return torch.stack(clips)

    def _finish(self, video: torch.Tensor, specs: list[SampleSpec]) -> dict[str, Any]:
        config = self.plan.config
        if self.rand_augment:
            video = self._augment(video, specs)
        video = augment.normalise(video, channel_dim=-4, inplace=True)
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


class DaliBackend:
    """The GPU backend of the table (:class:`maedfer.pipelines.backend.Backend`)."""

    name = "dali"

    def default_workers(self) -> int:
        """DALI threads: one per core, at most 8."""
        return min(8, os.cpu_count() or 2)

    def unsupported(self, config: SampleConfig) -> dict[str, str]:
        return {}  # every option of SampleConfig, RandAugment included (in torch, on the device)

    def decodes(self, spec: SampleSpec) -> bool:
        """Whether DALI decodes the sample alone, on the GPU when there is one."""
        device_id = 0 if torch.cuda.is_available() else None
        try:
            _build(_OneSample(spec, 16), batch_size=1, threads=1, device_id=device_id, size=16,
                   rand_augment=False).run()
        except (BadClipError, RuntimeError):
            return False
        return True

    def epoch(self, plan: EpochPlan, *, batch_size: int, drop_last: bool, workers: int,
              device: torch.device | None, faults: Faults) -> Iterator[dict[str, Any]]:
        assert device is not None  # resolve_backend always gives DALI a device
        if device.type == "cuda" and nvdec.library() is None:
            raise MaedferError(nvdec.MISSING)  # else every sample fails as if the files were bad
        yield from DaliEpoch(plan, batch_size=batch_size, drop_last=drop_last,
                             threads=max(1, workers), device=device, faults=faults)


BACKEND = DaliBackend()
