"""The GPU backend: NVIDIA DALI decodes (NVDEC), crops, resizes and flips; the rest on the device.

Imported only when this backend is chosen (``import maedfer`` works without DALI). The same
pipeline definition runs on the GPU (``device="mixed"`` decoder: H.264, HEVC, VP9, AV1, …) and on
the CPU (``device_id=None``: DALI 2.4 decodes only VP8, VP9 and MJPEG there, docs/design.md), which
is how the CPU tests run it.

A loader builds its pipeline once (:class:`DaliSession`, kept across epochs; a new one only after
a file DALI cannot decode, since DALI's batches read ahead would otherwise come out of order).
Host work runs off the training thread: a :class:`~maedfer.pipelines.feeding.Producer` thread
makes each batch's plan specs, reads the encoded bytes (a small thread pool) and packs the
augmentation's arguments (:func:`maedfer.pipelines.batch_augment.prepare`, in pinned memory), a
few batches ahead; DALI's external source only hands them over. Per sample DALI gets the frame
indices, the manifest crop, the augmentation box and the flip that
:class:`~maedfer.pipelines.plan.EpochPlan` chose — the choices the PyAV backend applies too.
Output contract: the backend contract's (:mod:`maedfer.pipelines.backend`; ``video`` float32
``(B, 3, T, size, size)`` on the pipeline's device). After DALI, on a side CUDA stream that
overlaps the training step: with RandAugment (train), DALI stops after the crop and first resize
and the batched executors (:mod:`maedfer.pipelines.batch_augment`) run RandAugment, the box
resize and the flip over the whole batch; then, every mode, normalisation, mean-frame
subtraction, sign and random erasing — without reading a value back to the host. Tolerance
against PyAV on the same plan: decoders within 1/255 (max 2/255 after resizing); with
RandAugment, the whole-clip tolerance stated in :mod:`maedfer.pipelines.rand_augment`.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maedfer.errors import MaedferError
from maedfer.pipelines import augment, backend, nvdec
from maedfer.pipelines.backend import BadClipError, Faults, sample_with_retries
from maedfer.pipelines.batch_augment import PreparedBatch, augment_batch, prepare
from maedfer.pipelines.feeding import Producer, SideStream, one_ahead
from maedfer.pipelines.plan import EpochPlan, SampleConfig, SampleSpec

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

_OUTPUTS = ("encoded", "frames", "crop_end", "crop_start", "full", "box_start", "box_end", "mirror")


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


@dataclass
class _Batch:
    """One batch made by the producer: its samples, DALI's inputs, the augmentation's
    arguments, and the faulty files met while making it."""

    specs: list[SampleSpec]
    columns: list[list[np.ndarray]]
    prepared: PreparedBatch
    label: torch.Tensor
    view: torch.Tensor
    faults: list[tuple[int, str, str]]


#: The augmentation stages left to torch: all with RandAugment (DALI stops before the box), else
#: only those after normalisation (DALI crops and flips)
_AFTER_DALI = frozenset({"values", "regions"})


class _Source:
    """DALI's external source: the batches of the producer now feeding it, in order."""

    def __init__(self) -> None:
        self.producer: Producer[_Batch] | None = None
        self.served: dict[int, _Batch] = {}
        self.error: BaseException | None = None

    def feed(self, producer: Producer[_Batch] | None) -> None:
        if self.producer is not None:
            self.producer.close()
        self.producer, self.served, self.error = producer, {}, None

    def __call__(self, info: Any) -> list[list[np.ndarray]]:
        if self.producer is None:
            raise StopIteration
        try:
            k, batch = self.producer.get()
        except StopIteration:
            raise
        except BaseException as exc:  # not a decode error: the epoch loop raises it as it is
            self.error = exc
            raise StopIteration from None
        self.served[k] = batch
        return batch.columns


class _OneSample:
    """A source giving one sample once: used to tell which file of a failed batch is bad."""

    def __init__(self, spec: SampleSpec, size: int) -> None:
        self.arrays = _sample_arrays(spec, _read(spec.path), size)

    def __call__(self, info: Any) -> list[list[np.ndarray]]:
        if info.iteration:
            raise StopIteration
        return [[a] for a in self.arrays]


def _build(
    source: Any,
    *,
    batch_size: int,
    threads: int,
    device_id: int | None,
    size: int,
    rand_augment: bool,
) -> Any:
    """The one pipeline definition, GPU (``device_id`` set) or CPU (``None``).

    Output: with ``rand_augment``, uint8 ``(B, F, size, size, 3)`` frames after the manifest crop
    and the first resize (torch does the rest, :meth:`DaliSession._finish`); else float
    ``(B, 3, F, size, size)`` after the box resize and the flip, not yet normalised.
    """
    linear = {"interp_type": types.INTERP_LINEAR, "antialias": False, "size": [size, size]}

    @pipeline_def(
        batch_size=batch_size,
        num_threads=threads,
        device_id=device_id,
        exec_dynamic=True,
        prefetch_queue_depth=2,
    )
    def clip_pipeline():  # noqa: ANN202 (DALI graph)
        dtypes = [types.UINT8] + [types.INT32] * 7
        (encoded, frames, crop_end, crop_start, full, box_start, box_end, mirror) = (
            fn.external_source(
                source=source, num_outputs=len(_OUTPUTS), batch=True, batch_info=True, dtype=dtypes
            )
        )
        video = fn.decoders.video(
            encoded, device="cpu" if device_id is None else "mixed", frames=frames, pad_mode="edge"
        )
        # crop, then resize the crop alone: bilinear at the crop's border then repeats the
        # border pixel, as torch does on the PyAV path (a resize ROI would read pixels outside)
        frame_hw = video.shape(dtype=types.INT32)[1:3]  # (F, H, W, C) -> (H, W)
        video = fn.slice(
            video,
            start=crop_start,
            end=crop_end + full * frame_hw,
            axis_names="HW",
            out_of_bounds_policy="trim_to_shape",
        )
        video = fn.resize(video, **linear)
        if rand_augment:  # RandAugment works on these uint8 frames, before the box (docs/recipe.md)
            return video
        video = fn.slice(
            video,
            start=box_start,
            end=box_end,
            axis_names="HW",
            out_of_bounds_policy="trim_to_shape",
        )
        # float output: the augmentation resize is not rounded (as in torch, docs/recipe.md)
        video = fn.resize(video, dtype=types.FLOAT, **linear)
        # layout and flip only: the normalisation is augment.normalise, after DALI
        return fn.crop_mirror_normalize(
            video, dtype=types.FLOAT, output_layout="CFHW", mirror=mirror
        )

    return clip_pipeline()


class DaliSession:
    """One loader's DALI pipeline and its feeding, kept from epoch to epoch."""

    def __init__(
        self,
        config: SampleConfig,
        *,
        batch_size: int,
        threads: int,
        device: torch.device,
        faults: Faults,
    ) -> None:
        self.config, self.batch_size, self.threads = config, batch_size, threads
        self.device, self.faults = device, faults
        self.device_id = (device.index or 0) if device.type == "cuda" else None
        self.rand_augment = config.rand_augment
        self.source = _Source()
        self.side = SideStream(device)
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="maedfer-read")
        self.iterator: Any = None
        self.state = "new"  # new, running (an epoch), ended (an epoch, cleanly: reset to reuse)
        self.builds = 0  # pipelines built: one per loader, and one per decode error

    def close(self) -> None:
        self.source.feed(None)
        self.pool.shutdown(wait=False)

    def _pipeline(self, source: Any, batch_size: int) -> Any:
        return _build(
            source,
            batch_size=batch_size,
            threads=self.threads,
            device_id=self.device_id,
            size=self.config.size,
            rand_augment=self.rand_augment,
        )

    def _rebuild(self) -> None:
        self.source.feed(None)
        self.iterator = DALIGenericIterator(
            [self._pipeline(self.source, self.batch_size)],
            ["video"],
            auto_reset=False,
            prepare_first_batch=False,
            last_batch_policy=LastBatchPolicy.PARTIAL,
        )
        self.builds += 1
        self.state = "new"

    def _make(self, plan: EpochPlan, k: int) -> _Batch:
        """Batch ``k`` of ``plan`` (in the producer thread): specs, bytes, arguments."""
        positions = range(k * self.batch_size, min((k + 1) * self.batch_size, len(plan)))
        known_bad = self.faults.known_bad  # grows as faults are found (read only here)

        def one(i: int) -> tuple[SampleSpec, np.ndarray, list[tuple[int, str, str]]]:
            return sample_with_retries(plan, i, lambda s: _read(s.path), skip=known_bad)

        made = list(self.pool.map(one, positions))
        specs = [spec for spec, _, _ in made]
        size = self.config.size
        columns = [
            list(c)
            for c in zip(*(_sample_arrays(spec, data, size) for spec, data, _ in made), strict=True)
        ]
        stages = None if self.rand_augment else _AFTER_DALI
        prepared = prepare(specs, self.config, stages=stages, pin=self.device.type == "cuda")
        label = torch.tensor([s.label for s in specs], dtype=torch.long)
        view = torch.tensor([s.view for s in specs], dtype=torch.long)
        if self.device.type == "cuda":  # the training step moves them without blocking
            label, view = label.pin_memory(), view.pin_memory()
        return _Batch(
            specs, columns, prepared, label, view, [f for _, _, faults in made for f in faults]
        )

    def _feed(self, plan: EpochPlan, first: int, count: int) -> None:
        """Feed batches ``first..count-1`` of ``plan`` to the pipeline: the same pipeline when
        it ended its last epoch cleanly, a new one otherwise."""
        if self.iterator is None or self.state == "running":
            self._rebuild()
        self.source.feed(
            Producer(
                lambda k: self._make(plan, k),
                range(first, count),
                ahead=2,
                name="maedfer-dali-producer",
            )
        )
        if self.state == "ended":
            self.iterator.reset()  # the next epoch of the same pipeline (DALI reads ahead now)
        self.state = "running"

    def epoch(self, plan: EpochPlan, drop_last: bool) -> Iterator[dict[str, Any]]:
        """The epoch's batches, each handed to the consumer's stream as it is yielded."""
        try:
            for batch, event in one_ahead(self._batches(plan, drop_last)):
                yield self.side.hand_over(batch, event)
        finally:
            if self.state != "ended":  # left mid-epoch: stop the producer (a new pipeline next)
                self.source.feed(None)

    def _batches(self, plan: EpochPlan, drop_last: bool) -> Iterator[tuple[dict, Any]]:
        n = len(plan) // self.batch_size if drop_last else -(-len(plan) // self.batch_size)
        k = 0
        self._feed(plan, 0, n)
        while k < n:
            try:
                with self.side():  # DALI's copy into torch goes on the side stream too
                    video = next(self.iterator)[0]["video"]
            except StopIteration:
                self._raise_source_error()
                raise MaedferError(f"DALI ended the epoch after {k} of {n} batches") from None
            except RuntimeError as exc:  # DALI stops the pipeline on a decode error
                self._raise_source_error()
                # the failure may belong to a batch read ahead: check every pending sample
                served = self.source.served
                for j in sorted(served):
                    self._note(served[j].faults)
                pending = [s for j in sorted(served) if j >= k for s in served[j].specs]
                self._isolate(pending, exc)
                self._rebuild()  # a new pipeline resumes at the failed batch
                self._feed(plan, k, n)
                continue
            batch = self.source.served.pop(k)
            self._note(batch.faults)
            with self.side():
                out = self._finish(video, batch)
                event = self.side.done()
            yield out, event
            k += 1
        try:  # the source said stop at batch n: DALI's epoch end, before the next reset
            next(self.iterator)
        except StopIteration:
            self.source.feed(None)
            self.state = "ended"

    def _raise_source_error(self) -> None:
        if self.source.error is not None:
            error, self.source.error = self.source.error, None
            raise error

    def _note(self, faults: list[tuple[int, str, str]]) -> None:
        for position, path, reason in faults:
            self.faults.note(position, path, reason)

    def _decodes(self, spec: SampleSpec) -> str | None:
        """``None`` if DALI decodes this one sample alone, else DALI's last error line."""
        try:
            pipe = self._pipeline(_OneSample(spec, self.config.size), 1)
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
        failed = {
            spec.position: (spec, why) for spec in specs if (why := self._decodes(spec)) is not None
        }
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

    def _finish(self, video: torch.Tensor, batch: _Batch) -> dict[str, Any]:
        """DALI's output → the contract's batch: the batched steps left to torch."""
        if self.rand_augment:  # uint8 (B, F, S, S, 3) → (B, 3, F, S, S), a view
            video = video.permute(0, 4, 1, 2, 3)
        # else float (B, 3, F, S, S), cropped and flipped: normalised in place
        return {
            "video": augment_batch(video, batch.prepared),
            "label": batch.label,
            "clip_id": [s.clip_id for s in batch.specs],
            "view": batch.view,
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
            _build(
                _OneSample(spec, 16),
                batch_size=1,
                threads=1,
                device_id=device_id,
                size=16,
                rand_augment=False,
            ).run()
        except (BadClipError, RuntimeError):
            return False
        return True

    def epoch(
        self,
        plan: EpochPlan,
        *,
        batch_size: int,
        drop_last: bool,
        workers: int,
        device: torch.device | None,
        faults: Faults,
        session: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The epoch's batches; ``session`` (the loader's) keeps the pipeline for the next."""
        assert device is not None  # resolve_backend always gives DALI a device
        if device.type == "cuda" and nvdec.library() is None:
            raise MaedferError(nvdec.MISSING)  # else every sample fails as if the files were bad
        session = {} if session is None else session
        key = ("dali", batch_size, max(1, workers), str(device))
        if session.get("key") != key:
            if "dali" in session:
                session["dali"].close()
            session["key"] = key
            session["dali"] = DaliSession(
                plan.config,
                batch_size=batch_size,
                threads=max(1, workers),
                device=device,
                faults=faults,
            )
        yield from session["dali"].epoch(plan, drop_last)


BACKEND = DaliBackend()
