"""RAVDESS (docs/datasets.md): speech video clips, subject-independent 6 folds of 4 actors.

Layout (Zenodo 1188976, per-actor ``Video_Speech_Actor_XX.zip``):
``Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4``: modality MM (01 full-AV, 02 video-only, 03 audio-only),
vocal channel VV (01 speech, 02 song), emotion EE (01..08), intensity, statement, repetition,
actor AA. The protocol is the 1,440 speech clips keyed by their video-only stem ``02-01-…``; a
zip holds both the full-AV and the video-only copy of each clip, so a clip found twice is indexed
once, from the ``02`` file (the ``01`` copy goes to the rejects as ``protocol:``), and a clip
present only as ``01`` keeps the ``02-…`` key. Songs are not part of the protocol.
Label = emotion code - 1. Fold = (actor - 1) // 4 + 1, the MSAF blocks of sorted actors [MSAF];
fixed by the actor id, so a partial download keeps its folds. Subject = the actor number of the
``Actor_XX`` folder holding the file (the filename's field when it is in no such folder).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from maedfer.manifests.base import ClipEntry, Protocol, RawIndex
from maedfer.manifests.folds import block_fold
from maedfer.manifests.layout import (
    VIDEO_EXTS,
    check_root,
    dedupe,
    is_lfs_pointer,
    no_clips_error,
    rel,
    summarize,
    walk_files,
)
from maedfer.manifests.registry import register_dataset

log = logging.getLogger(__name__)

CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
ACTORS = range(1, 25)
NUM_FOLDS = 6
ACTORS_PER_FOLD = 4
_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_ACTOR_DIR = re.compile(r"^actor[\s_\-]*(\d+)$", re.IGNORECASE)
_EXPECTED = "Actor_XX/02-01-EE-II-SS-RR-AA.mp4 (the Video_Speech_Actor_XX.zip files)"


def expected_keys(actors: range | list[int] = ACTORS) -> list[str]:
    """The protocol's 60 speech keys per actor: neutral has normal intensity only (4 clips)."""
    keys = []
    for actor in actors:
        for emotion in range(1, 9):
            for intensity in (1,) if emotion == 1 else (1, 2):
                for statement in (1, 2):
                    for rep in (1, 2):
                        keys.append(
                            f"02-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{rep:02d}-{actor:02d}"
                        )
    return keys


def _folder_actor(folder: Path, root: Path) -> int | None:
    """Actor number of the nearest ``Actor_XX`` folder between ``root`` and the file."""
    for part in reversed(Path(os.path.relpath(folder, root)).parts):
        m = _ACTOR_DIR.match(part)
        if m:
            return int(m.group(1))
    return None


#: docs/datasets.md's published fingerprints of the full protocol (keys as in
#: ``detailed_fingerprints``).
PUBLISHED_FINGERPRINTS = {
    "1": "24875c4990b33976",
    "2": "f40c3dc14da79292",
    "3": "ccc6f928d1d8975f",
    "4": "7f7e72df6d2bde7e",
    "5": "4270dcff118d8655",
    "6": "286e545df89ee4ee",
    "train:1": "ea26fa74a4e7550f",
    "train:2": "42d263a73211334d",
    "train:3": "49942dd667a915c7",
    "train:4": "f51ab4fb7a6f156c",
    "train:5": "cf3daeb612504536",
    "train:6": "fe64f20f7c23e4f3",
    "all": "4cb0c18f72154b16",
}


@register_dataset("ravdess", media=("videos",), published=PUBLISHED_FINGERPRINTS)
class Ravdess(Protocol):
    protocol = "mae-dfer:ravdess:speech-video:6fold-actor-blocks"
    classes = CLASSES
    num_folds = NUM_FOLDS

    def _parse(
        self, folder: Path, fname: str, root: Path, moved: list[str]
    ) -> tuple[ClipEntry | None, tuple[str, str, str] | None, int]:
        """(entry, reject, modality) of one ``MM-VV-…`` video file."""
        stem = os.path.splitext(fname)[0]
        source = rel(folder / fname, root)
        fields = [int(g) for g in _NAME.match(stem).groups()]
        modality, channel, emotion, file_actor = fields[0], fields[1], fields[2], fields[6]
        actor = _folder_actor(folder, root)
        if actor is None:
            actor = file_actor
        elif actor != file_actor:
            moved.append(source)
        reason = None
        if channel == 2:
            reason = "protocol: song (vocal channel 02); the protocol uses speech"
        elif modality not in (1, 2):
            reason = f"protocol: modality {modality:02d} is not video"
        elif channel != 1 or not 1 <= emotion <= 8:
            reason = f"unrecognised name: channel {channel:02d}, emotion {emotion:02d}"
        elif actor not in ACTORS:
            reason = f"unrecognised: actor {actor} not in 1..24"
        elif is_lfs_pointer(folder / fname):
            reason = "unreadable: a git-LFS pointer stub, not the video"
        if reason is not None:
            return None, (stem, source, reason), modality
        entry = ClipEntry(
            # the protocol's key is the video-only stem (docs/datasets.md)
            clip_id="02-" + stem[3:],
            source=source,
            kind="video",
            subject=str(actor),
            label=emotion - 1,
            label_name=CLASSES[emotion - 1],
            fold=block_fold(ACTORS.index(actor), per_fold=ACTORS_PER_FOLD, num_folds=NUM_FOLDS),
            split=None,
        )
        return entry, None, modality

    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index ``raw_root`` (any nesting; ``from_video`` is ignored: RAVDESS has only videos)."""
        root = check_root(raw_root, self.name)
        entries, rejects, warnings, moved, odd, modality = [], [], [], [], [], {}
        seen_any, audio = False, 0
        for folder, fname in walk_files(root):
            stem, ext = os.path.splitext(fname)
            if ext.lower() not in VIDEO_EXTS:
                audio += ext.lower() == ".wav" and bool(_NAME.match(stem))
                continue
            if not _NAME.match(stem):
                if _folder_actor(folder, root) is not None:
                    odd.append(rel(folder / fname, root))
                continue
            seen_any = True
            entry, reject, mod = self._parse(folder, fname, root, moved)
            if reject:
                rejects.append(reject)
            else:
                entries.append(entry)
                modality[entry.source] = mod
        if not entries:
            hint = "only songs or non-video files were found" if seen_any else ""
            if audio and not seen_any:
                hint = f"{audio} audio-only .wav files; the protocol needs the video zips"
            raise no_clips_error(self.name, root, _EXPECTED, hint)
        # Video-only (02) first, then .mp4, when a clip is found more than once.
        kept, dups = dedupe(
            entries,
            rank=lambda e: (modality[e.source] != 2, not e.source.lower().endswith(".mp4")),
        )
        kept_by_id = {e.clip_id: e for e in kept}
        for clip_id, source, reason in dups:
            if modality[source] == 1 and modality[kept_by_id[clip_id].source] == 2:
                stem = os.path.splitext(os.path.basename(source))[0]
                reason = f"protocol: full-AV copy of {clip_id}; indexed from the video-only file"
                rejects.append((stem, source, reason))
            else:
                rejects.append((clip_id, source, reason))
        if odd:
            warnings.append(
                f"ravdess: ignored {len(odd)} video(s) in Actor_XX folders whose names are not "
                f"MM-VV-EE-II-SS-RR-AA: {summarize(odd)}"
            )
        if moved:
            warnings.append(
                f"ravdess: {len(moved)} file(s) sit in another actor's Actor_XX folder than their "
                f"name says; subject taken from the folder: {summarize(moved)}"
            )
        warnings.extend(_missing(kept))
        log.info("ravdess: %d clips, %d rejects under %s", len(kept), len(rejects), root)
        return RawIndex(
            dataset=self.name,
            protocol=self.protocol,
            raw_root=root,
            classes=list(CLASSES),
            num_folds=NUM_FOLDS,
            entries=kept,
            rejects=rejects,
            warnings=warnings,
        )


def _missing(entries: list[ClipEntry]) -> list[str]:
    """Warnings naming the actors and clips a partial download lacks."""
    have = {e.clip_id for e in entries}
    actors = sorted({int(e.subject) for e in entries if e.subject})
    out = []
    absent_actors = [a for a in ACTORS if a not in actors]
    if absent_actors:
        names = summarize([f"{a:02d}" for a in absent_actors], 24)
        out.append(
            f"ravdess: partial download, actors missing: {names}; "
            "fingerprints will differ from the published ones"
        )
    absent = sorted(set(expected_keys(actors)) - have)
    if absent:
        out.append(
            f"ravdess: {len(absent)} clip(s) missing from present actors: {summarize(absent)}"
        )
    return out
