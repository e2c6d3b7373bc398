"""The backend contract: one interface, one table of backends, shared fault accounting.

A backend turns an :class:`~maedfer.pipelines.plan.EpochPlan` into batches (the shape of
pytorchvideo's ``select_video_class`` table and torchcodec's decoders: one name → one class with
one contract). It implements :class:`Backend`:

- ``name`` and ``default_workers()`` (worker processes or decoding threads);
- ``unsupported(config)`` — the options of a :class:`~maedfer.pipelines.plan.SampleConfig` it
  cannot honour, each with the reason: ``build_loader`` refuses them in one line naming the option
  and the backend (a backend never changes what a recipe means);
- ``epoch(plan, batch_size=, drop_last=, workers=, device=, faults=, session=)`` — the epoch's
  batches (:class:`~maedfer.pipelines.loader.ClipBatch` dicts on ``device``), every replaced
  faulty file noted in ``faults`` (:class:`Faults`); ``session`` is a dict the loader keeps
  from epoch to epoch, for what a backend builds once per loader (DALI: its pipeline);
- ``decodes(spec)`` — whether it decodes that sample (DALI asks the reference backend, PyAV, to
  tell a faulty file from a codec DALI lacks).

Output contract of every backend: ``video`` float32 ``(B, 3, T, size, size)``, RGB, normalised by
:func:`maedfer.pipelines.augment.normalise`, then :func:`maedfer.pipelines.augment.finish_clip`;
the frames ``spec.frame_indices``; the plan's crop, RandAugment ops, box and flip.

:data:`BACKENDS` is the one table: ``resolve_backend``, the recipe configs' ``data.backend``
choices and the command line's ``--backend`` choices are read from it. Adding a backend (say
torchcodec) is one module defining ``BACKEND`` and one row here. This module imports neither
torch nor a decoder, so the command line and the configs read the table cheaply.

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from maedfer.errors import MaedferError

if TYPE_CHECKING:
    import torch

    from maedfer.pipelines.plan import EpochPlan, SampleConfig, SampleSpec

log = logging.getLogger(__name__)

#: Replacements tried for a faulty sample before the epoch is stopped.
MAX_ATTEMPTS = 10
#: Faulty files logged one by one; the rest are counted (a broken clips folder is one line's
#: worth of news, not one line per clip).
LOGGED_FAULTS = 10


@dataclass(frozen=True)
class BackendEntry:
    """One row of the table: where the backend lives and what it needs."""

    name: str
    module: str  # defines ``BACKEND``, an object implementing :class:`Backend`
    summary: str
    requires: str  # the package it imports (checked without importing it)
    extra: str | None = None  # the maedfer extra that installs it
    gpu: bool = False  # batches land on cuda:$LOCAL_RANK by default; auto picks it with CUDA
    threads: bool = False  # its workers are threads in this process (at least one)


#: The backends, in the order ``auto`` prefers them (the first available wins).
BACKENDS: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry(
            "dali",
            "maedfer.pipelines.dali",
            "NVIDIA DALI: NVDEC decoding, crop, "
            "resize, RandAugment on the GPU (CPU: VP8/VP9/MJPEG only)",
            requires="nvidia.dali",
            extra="gpu",
            gpu=True,
            threads=True,
        ),
        BackendEntry(
            "hybrid",
            "maedfer.pipelines.hybrid",
            "PyAV decodes only the frames a "
            "sample needs in worker processes; colour conversion and augmentation "
            "batched on the GPU",
            requires="av",
            gpu=True,
        ),
        BackendEntry(
            "pyav",
            "maedfer.pipelines.pyav",
            "PyAV in DataLoader worker processes on the CPU, every codec",
            requires="av",
        ),
    )
}
#: The backend the others defer to on whether a file decodes (it reads every codec).
REFERENCE = "pyav"


def choices() -> tuple[str, ...]:
    """``auto`` and the backends of the table as it is now."""
    return ("auto", *BACKENDS)


def unknown_backend(name: str) -> MaedferError:
    return MaedferError(f"backend {name!r} is unknown; expected one of {', '.join(choices())}")


def entry(name: str) -> BackendEntry:
    if name not in BACKENDS:
        raise unknown_backend(name)
    return BACKENDS[name]


def installed(name: str) -> bool:
    """Whether the package backend ``name`` needs is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec(entry(name).requires) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def load(name: str) -> Backend:
    """The backend object of ``name`` (its module is imported only now)."""
    row = entry(name)
    if not installed(name):
        hint = f" (pip install 'maedfer[{row.extra}]')" if row.extra else ""
        raise MaedferError(
            f"backend {name!r} needs {row.requires}{hint}; use backend "
            f"{REFERENCE} (training: --set data.backend={REFERENCE})"
        )
    return importlib.import_module(row.module).BACKEND


class Backend(Protocol):
    """What every backend implements (see the module notes)."""

    name: str

    def default_workers(self) -> int: ...

    def unsupported(self, config: SampleConfig) -> dict[str, str]: ...

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
    ) -> Iterator[dict[str, Any]]: ...

    def decodes(self, spec: SampleSpec) -> bool: ...


def check_supported(backend: Backend, config: SampleConfig) -> None:
    """Refuse, in one line, an option ``backend`` cannot honour (never drop it silently).

    Raises:
        MaedferError: naming the option, its value, the backend and the reason.
    """
    refused = backend.unsupported(config)
    if refused:
        option, why = next(iter(refused.items()))
        others = [n for n in BACKENDS if n != backend.name]
        raise MaedferError(
            f"backend {backend.name} cannot honour {option}={getattr(config, option, None)!r} "
            f"(recipe key data.{option}): {why}; choose another backend ({', '.join(others)}) "
            "or turn the option off"
        )


# ------------------------------------------------------------------------------ faults


class BadClipError(MaedferError):
    """A clip file that cannot be opened or decoded; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class Faults:
    """Faulty files met by one loader: counted per epoch, logged once each, remembered.

    A fault is one (sample position, file) pair replaced by another sample; ``count`` is those
    of the current epoch (``ClipLoader.num_bad``). ``known_bad`` lets a backend skip a file that
    failed before without opening it again.
    """

    def __init__(self) -> None:
        self.known_bad: set[str] = set()
        self.reasons: dict[str, str] = {}  # every faulty file met, with its first reason
        self._logged: set[str] = set()
        self._epoch: dict[tuple[int, str], str] = {}

    def start_epoch(self) -> None:
        self._epoch = {}

    @property
    def count(self) -> int:
        return len(self._epoch)

    def note(self, position: int, path: str, reason: str) -> None:
        self._epoch.setdefault((int(position), path), reason)
        self.known_bad.add(path)
        self.reasons.setdefault(path, reason)
        if path not in self._logged and len(self._logged) < LOGGED_FAULTS:
            self._logged.add(path)
            log.warning("faulty clip replaced by another sample: %s: %s", path, reason)
            if len(self._logged) == LOGGED_FAULTS:
                log.warning(
                    "further faulty clips are counted, not logged one by one (a "
                    "training run lists them all in its bad_clips.json)"
                )


T = TypeVar("T")


def sample_with_retries(
    plan: EpochPlan,
    i: int,
    read: Callable[[SampleSpec], T],
    *,
    skip: set[str] | frozenset[str] = frozenset(),
) -> tuple[SampleSpec, T, list[tuple[int, str, str]]]:
    """Sample ``i`` read by ``read(spec)``, replaced (``plan.spec(i, attempt=k)``) while faulty.

    A file in ``skip`` counts as faulty without being read. Returns the spec, what ``read``
    gave, and the faults met as ``(position, path, reason)``.

    Raises:
        MaedferError: :data:`MAX_ATTEMPTS` samples in a row were faulty.
    """
    faults: list[tuple[int, str, str]] = []
    for attempt in range(MAX_ATTEMPTS):
        try:
            spec = plan.spec(i, attempt=attempt, probe=probe_num_frames)
            if spec.path in skip:
                raise BadClipError(spec.path, "failed to decode earlier")
            return spec, read(spec), faults
        except BadClipError as exc:
            faults.append((i, exc.path, exc.reason))
    path, reason = faults[-1][1:]
    raise MaedferError(f"{MAX_ATTEMPTS} samples in a row failed to decode, last: {path}: {reason}")


def probe_num_frames(path: str) -> int:
    """Frame count of a video file from its header, else by demuxing its packets (no decode)."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if stream.frames > 0:
                return int(stream.frames)
            return sum(1 for p in container.demux(stream) if p.size > 0)
    except (OSError, av.FFmpegError, IndexError) as exc:
        raise BadClipError(path, f"cannot read it ({exc})") from None
