"""The hybrid backend: PyAV decodes only what a sample needs on the CPU, the GPU does the rest.

Worker processes (torch ``DataLoader``, as the PyAV backend) decode each sample's frames with
PyAV — only the wanted frames and those they reference: the prepared clips' non-reference
B-frames are never decoded, and a clip's test views (or ``num_sample`` repeats) share one
decode — and cut the manifest crop from the planes the decoder gives (4:2:0 luma and chroma,
:class:`~maedfer.pipelines.pyav.Planes`), without converting them. The worker also plans the
batch's augmentation (:func:`maedfer.pipelines.batch_augment.prepare`: sample groups, matrices,
erasing noise). The planes of a batch travel as one uint8 buffer (1.5 bytes a pixel against 12
for PyAV's float clips), pinned by the loader's pin thread, copied without blocking; on the
device, on a side stream that overlaps the training step, :mod:`maedfer.pipelines.yuv` converts
them to RGB (the arithmetic of PyAV's conversion: the same values), they are resized to the clip
size, and the batched executors run every augmentation step
(:mod:`maedfer.pipelines.batch_augment`). The host's share of a sample is the decode alone.

Output contract: the backend contract's (:mod:`maedfer.pipelines.backend`), on the loader's
device (``cuda:$LOCAL_RANK`` by default; ``cpu`` runs the same code, which is how the tests run
it). Tolerance against PyAV on the same plan: the conversion is equal; after the resizes, within
2/255 (torch's and OpenCV's bilinear weights round differently); with RandAugment, the
whole-clip tolerance of :mod:`maedfer.pipelines.rand_augment`. Faulty files are replaced as
PyAV's backend replaces them (every codec PyAV reads).

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maedfer.pipelines import pyav
from maedfer.pipelines.backend import Faults, sample_with_retries
from maedfer.pipelines.batch_augment import Params, PreparedBatch, augment_batch, prepare
from maedfer.pipelines.feeding import SideStream, one_ahead
from maedfer.pipelines.plan import EpochPlan, SampleConfig, SampleSpec
from maedfer.pipelines.pyav import Planes
from maedfer.pipelines.yuv import planes_to_rgb, resize_rounded


class PlaneDataset(Dataset):
    """Item ``i``: sample ``i``'s :class:`~maedfer.pipelines.pyav.Planes` (its frames, in
    order), decoded in a worker process."""

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan
        self._union: tuple[tuple[str, int], np.ndarray, Planes] | None = None
        if plan.config.rand_augment:  # imported here, in the parent: forked workers have it
            from maedfer.pipelines.rand_augment import policy_for

            policy_for(plan.config.rand_augment_policy, plan.config.size)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pyav.keep_heap_memory()
        spec, planes, faults = sample_with_retries(self.plan, i, lambda s: self._read(i, s))
        return {"spec": spec, "planes": planes, "bad": faults}

    def _read(self, i: int, spec: SampleSpec) -> Planes:
        union = self._shared(i, spec)
        if union is None:
            have, planes = pyav.decode_planes(spec.path, np.unique(spec.frame_indices), spec.crop)
        else:
            have, planes = union
        return planes.take(pyav._positions(have, spec.frame_indices))

    def _shared(self, i: int, spec: SampleSpec) -> tuple[np.ndarray, Planes] | None:
        """The planes of all the samples of ``spec``'s row (test views, ``num_sample``
        repeats), decoded once and kept for the next; ``None`` for one sample per row, a
        replacement, or a file that ends before the frames asked for (decode alone then)."""
        key = pyav.views_key(self.plan, i, spec)
        if key is None:
            return None
        if self._union is None or self._union[0] != key:
            wanted = pyav.views_frames(self.plan, i, spec)
            have, planes = pyav.decode_planes(spec.path, wanted, spec.crop)
            if len(have) != len(wanted):
                return None
            self._union = (key, have, planes)
        return self._union[1], self._union[2]


@dataclass(frozen=True)
class _Group:
    """Samples whose planes have one shape and one conversion: their params keys."""

    samples: tuple[int, ...]
    keys: tuple[int, ...]  # (y, u, v) or (rgb,)
    oy: int = 0
    ox: int = 0
    full_range: bool = False
    kr: float = 0.0
    kb: float = 0.0


@dataclass
class PlaneBatch:
    """A batch of planes and its prepared augmentation, made in a worker process."""

    groups: list[_Group]
    order: int | None  # params key of the batch order of the groups' samples (None: in order)
    prepared: PreparedBatch
    params: Params = field(default_factory=Params)

    def pin_memory(self) -> PlaneBatch:
        """For torch's ``DataLoader(pin_memory=True)``."""
        self.params.pin()
        self.prepared.pin_memory()
        return self

    def clips(self, device: torch.device, size: int) -> torch.Tensor:
        """The batch's frames as RGB ``(B, 3, T, size, size)`` float32 whole numbers, on
        ``device`` (one non-blocking copy per dtype; nothing read back)."""
        tensors = self.params.to(device)
        parts = []
        for g in self.groups:
            if len(g.keys) == 1:  # RGB converted by the decoder's scaler
                rgb = tensors[g.keys[0]].permute(0, 4, 1, 2, 3).float()
            else:
                y, u, v = (tensors[k] for k in g.keys)
                rgb = planes_to_rgb(
                    y, u, v, oy=g.oy, ox=g.ox, full_range=g.full_range, kr=g.kr, kb=g.kb
                )
            parts.append(resize_rounded(rgb, size))
        clips = parts[0] if len(parts) == 1 else torch.cat(parts)
        return clips if self.order is None else clips.index_select(0, tensors[self.order])


class Collate:
    """Batch samples in a worker: the planes grouped and stacked, the augmentation prepared."""

    def __init__(self, config: SampleConfig) -> None:
        self.config = config

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        specs = [s["spec"] for s in samples]
        batch = PlaneBatch([], None, prepare(specs, self.config))
        members: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            p: Planes = s["planes"]
            key = (
                ("rgb", p.rgb.shape)
                if p.rgb is not None
                else ("yuv", p.y.shape, p.u.shape, p.oy, p.ox, p.full_range, p.kr, p.kb)
            )
            members.setdefault(key, []).append(i)
        for key, chosen in members.items():
            planes: list[Planes] = [samples[i]["planes"] for i in chosen]
            keys = tuple(
                batch.params.put(np.stack([getattr(p, name) for p in planes]))
                for name in (("rgb",) if key[0] == "rgb" else ("y", "u", "v"))
            )
            first = planes[0]
            batch.groups.append(
                _Group(
                    tuple(chosen), keys, first.oy, first.ox, first.full_range, first.kr, first.kb
                )
            )
        order = [i for g in batch.groups for i in g.samples]
        if order != list(range(len(samples))):
            batch.order = batch.params.put(np.argsort(np.array(order)).astype(np.int64))
        batch.params.stage(pin=False)
        return {
            "planes": batch,
            "label": torch.tensor([s.label for s in specs], dtype=torch.long),
            "clip_id": [s.clip_id for s in specs],
            "view": torch.tensor([s.view for s in specs], dtype=torch.long),
            "bad": [fault for s in samples for fault in s["bad"]],
        }


class HybridBackend:
    """The hybrid backend of the table (:class:`maedfer.pipelines.backend.Backend`)."""

    name = "hybrid"

    def default_workers(self) -> int:
        """Decoding processes: one per core but one (the main process feeds the GPU), at
        most 16 (a sample costs the decode alone, a quarter of a PyAV sample)."""
        return max(1, min(16, (os.cpu_count() or 2) - 1))

    def unsupported(self, config: SampleConfig) -> dict[str, str]:
        return {}  # every option of SampleConfig

    def decodes(self, spec: SampleSpec) -> bool:
        return pyav.BACKEND.decodes(spec)

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
        from torch.utils.data import DataLoader

        device = torch.device("cpu") if device is None else device
        loader = DataLoader(
            PlaneDataset(plan),
            batch_size=batch_size,
            shuffle=False,
            drop_last=drop_last,
            num_workers=workers,
            collate_fn=Collate(plan.config),
            pin_memory=device.type == "cuda",
            worker_init_fn=pyav.worker_init,
            prefetch_factor=2 if workers else None,
        )
        side = SideStream(device)
        with pyav.fork_safe_opencv():
            batches = iter(loader)  # forks the workers

        def on_device() -> Iterator[tuple[dict[str, Any], Any]]:
            for batch in batches:
                for position, path, reason in batch.pop("bad"):
                    faults.note(position, path, reason)
                planes: PlaneBatch = batch.pop("planes")
                with side():
                    clips = planes.clips(device, plan.config.size)
                    batch["video"] = augment_batch(clips, planes.prepared)
                    for key in ("label", "view"):
                        batch[key] = batch[key].to(device, non_blocking=True)
                    event = side.done()
                yield batch, event

        for batch, event in one_ahead(on_device()):
            yield side.hand_over(batch, event)


BACKEND = HybridBackend()
