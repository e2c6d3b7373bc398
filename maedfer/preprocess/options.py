"""``prepare``'s options: :class:`PrepareConfig`, each option declared once with its default and
its help line (the command line's ``prepare`` flags read both from here), and checked in one
place (:meth:`PrepareConfig.validate`). A dataset's own options (``prepare folder``'s labels
table, folds, ...) are its module's, declared in the dataset registry
(``@register_dataset(..., options=...)``; docs/datasets.md, docs/design.md "Configs").

Torch-free: the command line imports it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from maedfer.config import opt
from maedfer.errors import MaedferError
from maedfer.preprocess import MIN_FACE_RATIO, MIN_FRAMES


@dataclass
class PrepareConfig:
    """What ``maedfer prepare`` does with any dataset (its own options aside).

    Raises:
        MaedferError: from :meth:`validate`.
    """

    workers: int = opt(1, "Worker processes.")
    size: int = opt(160, "Side of the square face clips.")
    index_only: bool = opt(False, "Write the manifest from the layout alone, touch no pixels.")
    codec: str = opt("h264", "Clip codec: H.264 MP4 or VP9 WebM.")
    from_video: bool = opt(False, "DFEW/FERV39k/MAFW: detect faces in the original clips.")
    reencode: bool = opt(False, "VoxCeleb2: write cropped clips instead of reading in place.")
    shard: str | None = opt(
        None,
        "i/N: prepare the i-th of N shards (1-based), balanced by file size; auto: this Slurm "
        "array task's (SLURM_ARRAY_TASK_ID/_MIN/_COUNT).",
    )
    merge: bool = opt(False, "Combine the shard manifests in --out.")
    device: str | None = opt(None, "Face detection device: cuda, cpu, or auto (CUDA when present).")
    detect_every: int = opt(4, "Detect faces on every k-th frame, track in between.")
    limit: int | None = opt(None, "Prepare only the first N clips (a trial run).")
    min_frames: int = opt(
        MIN_FRAMES,
        "Reject videos with fewer frames ('too short'); official face-frame folders are exempt.",
    )
    min_face_ratio: float = opt(
        MIN_FACE_RATIO,
        "Reject face-detected clips with a face in fewer of their frames ('face_ratio').",
    )
    retry_rejects: bool = opt(False, "Judge every reject of an earlier run in --out again.")

    def validate(self) -> None:
        """Check the options before any work.

        Raises:
            MaedferError: ``--min-frames`` below 1, ``--min-face-ratio`` outside [0, 1], an odd
                ``--size``, an unknown ``--codec``, ``--merge`` with ``--shard``, a ``--limit``
                below 1.
        """
        if self.min_frames < 1:
            raise MaedferError(f"--min-frames {self.min_frames} must be >= 1")
        if not 0.0 <= self.min_face_ratio <= 1.0:
            raise MaedferError(f"--min-face-ratio {self.min_face_ratio} must be between 0 and 1")
        if self.size % 2:
            raise MaedferError(
                f"--size {self.size} must be even (H.264/VP9 4:2:0 needs even sides)"
            )
        from maedfer.preprocess.encode import CODECS  # the codecs' settings (PyAV)

        if self.codec not in CODECS:
            raise MaedferError(f"--codec {self.codec!r} must be one of {', '.join(CODECS)}")
        if self.merge and self.shard is not None:
            raise MaedferError("--merge combines the shards: run it without --shard")
        if self.limit is not None and self.limit < 1:
            raise MaedferError(f"--limit {self.limit} must be >= 1")
