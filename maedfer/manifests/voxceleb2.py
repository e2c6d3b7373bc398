"""VoxCeleb2 (docs/datasets.md): the unlabeled dev set for MAE pre-training, read in place.

Layout: ``dev/mp4/idXXXXX/<11-char YouTube id>/NNNNN.mp4`` (1,092,009 files, 5,994 speakers).
The speaker folders are found by search, so ``--raw`` may be the archive root, ``dev``, or
``dev/mp4``; ``dev/aac`` audio and the ``test`` set are ignored (MAE-DFER pre-trains on dev).
Key = ``idXXXXX/<youtube id>/<utterance>``; subject = the speaker number (``id08423`` -> ``8423``);
label -1; split ``pretrain``. The 283 clips MAE-DFER found without a video stream (Appendix A)
go to the rejects as ``protocol:``. Every other file is an entry: probing that it decodes is the
preprocess driver's job (this module reads names only). Clips are decoded with the fixed
upper-centre crop of ``crop_box`` (MAE-DFER ``kinetics.py``: rows 0:160, cols 32:192 at 160).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tqdm import tqdm

from maedfer.errors import MaedferError
from maedfer.manifests.base import ClipEntry, Protocol, RawIndex
from maedfer.manifests.layout import (
    VIDEO_EXTS,
    check_root,
    find_dirs,
    first_file,
    is_debris,
    list_dir,
    no_clips_error,
    norm,
    rel,
)
from maedfer.manifests.registry import register_dataset
from maedfer.manifests.voxceleb2_excluded import EXCLUDED

log = logging.getLogger(__name__)

DEV_CLIPS = 1_092_009
DEV_SPEAKERS = 5_994
FRAME_SIZE = 224
_SPEAKER = re.compile(r"^id\d+$")
_EXPECTED = "dev/mp4/idXXXXX/<youtube id>/NNNNN.mp4 (vox2_dev_mp4 parts, unpacked)"
_REASON = "protocol: one of the 283 dev clips MAE-DFER excludes (no video stream)"


def crop_box(size: int, frame_size: int = FRAME_SIZE) -> tuple[int, int, int, int]:
    """(x, y, w, h) of MAE-DFER's VoxCeleb2 crop: top rows, horizontally centred.

    ``crop_box(160)`` = (32, 0, 160, 160), i.e. ``frame[0:160, 32:192]``; ``crop_box(192)`` =
    (16, 0, 192, 192) (docs/datasets.md).

    Raises:
        MaedferError: ``size`` larger than the 224-pixel frames.
    """
    if not 0 < size <= frame_size:
        raise MaedferError(f"voxceleb2 crop size {size} must be in 1..{frame_size} (frame size)")
    return ((frame_size - size) // 2, 0, size, size)


def _holds_videos(parent: Path) -> bool:
    """Whether the speaker folders under ``parent`` hold videos (``dev/mp4``), not ``dev/aac``."""
    for spk in [d for d in list_dir(parent)[0] if _SPEAKER.match(d)][:3]:
        for yt in list_dir(parent / spk)[0][:2]:
            if first_file(parent / spk / yt, VIDEO_EXTS):
                return True
    return False


def _speaker_parents(root: Path, warnings: list[str]) -> list[Path]:
    """Folders holding ``idXXXXX`` speaker folders with videos; dev preferred over test."""
    if any(_SPEAKER.match(d) for d in list_dir(root)[0]):
        candidates = [root]
    else:
        found = find_dirs(root, _SPEAKER.match, max_depth=5)
        candidates = sorted({p.parent for p in found}, key=lambda p: (len(p.parts), str(p)))
    parents = [p for p in candidates if _holds_videos(p)]
    dev = [p for p in parents if "dev" in {norm(x) for x in p.relative_to(root).parts}]
    if dev:
        for p in parents:
            if p not in dev:
                warnings.append(f"voxceleb2: ignored {rel(p, root)} (MAE-DFER pre-trains on dev)")
        return dev
    test = [p for p in parents if "test" in {norm(x) for x in p.relative_to(root).parts}]
    for p in test:
        warnings.append(f"voxceleb2: {rel(p, root)} looks like the test set; MAE-DFER uses dev")
    return parents


def _scan(parent: Path, prefix: str) -> list[tuple[str, str]]:
    """(key, source) of every video under ``parent/idXXXXX/<yt>/`` (os.scandir: 1M files)."""
    out = []
    speakers = [d for d in list_dir(parent)[0] if _SPEAKER.match(d)]
    for spk in tqdm(speakers, desc="voxceleb2 index", unit="speaker", disable=len(speakers) < 200):
        for yt in list_dir(parent / spk)[0]:
            try:
                with os.scandir(parent / spk / yt) as it:
                    names = sorted(e.name for e in it if not is_debris(e.name))
            except OSError:
                continue
            for name in names:
                stem, ext = os.path.splitext(name)
                if ext.lower() in VIDEO_EXTS:
                    out.append((f"{spk}/{yt}/{stem}", f"{prefix}{spk}/{yt}/{name}"))
    return out


#: docs/datasets.md's published fingerprints of the full protocol (keys as in
#: ``detailed_fingerprints``): the hash of the 283-key exclusion list (Appendix A).
PUBLISHED_FINGERPRINTS = {
    "excluded": "15c5d7fc0b4e1476",
}


@register_dataset(
    "voxceleb2",
    in_place=True,
    crop="upper-centre",
    media=("videos",),
    published=PUBLISHED_FINGERPRINTS,
)
class VoxCeleb2(Protocol):
    protocol = "mae-dfer:voxceleb2:dev-pretrain"
    classes: list[str] = []
    num_folds = 0

    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index the dev videos under ``raw_root`` (names only; ``from_video`` is ignored)."""
        root = check_root(raw_root, self.name)
        warnings: list[str] = []
        parents = _speaker_parents(root, warnings)
        if not parents:
            raise no_clips_error(self.name, root, _EXPECTED)
        entries, rejects, seen = [], [], set()
        for parent in parents:
            prel = rel(parent, root)
            for key, source in _scan(parent, "" if prel == "." else prel + "/"):
                if key in seen:
                    rejects.append((key, source, "duplicate: same clip found in another folder"))
                    continue
                seen.add(key)
                if key in EXCLUDED:
                    rejects.append((key, source, _REASON))
                    continue
                spk = key.split("/", 1)[0]
                entries.append(
                    ClipEntry(
                        clip_id=key,
                        source=source,
                        kind="video",
                        subject=str(int(spk[2:])),
                        label=-1,
                        label_name="unlabeled",
                        fold=None,
                        split="pretrain",
                    )
                )
        if not entries:
            raise no_clips_error(self.name, root, _EXPECTED, "no videos in the speaker folders")
        entries.sort(key=lambda e: e.clip_id)
        speakers = len({e.subject for e in entries})
        if len(seen) < DEV_CLIPS:
            warnings.append(
                f"voxceleb2: partial download, {len(seen):,} of {DEV_CLIPS:,} dev clips and "
                f"{speakers:,} of {DEV_SPEAKERS:,} speakers found"
            )
        log.info("voxceleb2: %d clips, %d rejects under %s", len(entries), len(rejects), root)
        return RawIndex(
            dataset=self.name,
            protocol=self.protocol,
            raw_root=root,
            classes=[],
            num_folds=0,
            entries=entries,
            rejects=rejects,
            warnings=warnings,
        )
