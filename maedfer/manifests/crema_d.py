"""CREMA-D (docs/datasets.md): 7,442 clips of 91 actors, subject-independent 5 folds.

Layout (git-LFS clone of CheyneyComputerScience/CREMA-D): ``VideoFlash/AAAA_SSS_EEE_LL.flv`` with
actor AAAA (1001-1091), sentence SSS, emotion EEE (ANG, DIS, FEA, HAP, NEU, SAD), level LL. The
videos are found by name anywhere in the tree (``AudioWAV``/``AudioMP3`` hold the same stems as
audio, ignored). Key = the file stem as found; subject = the actor field of the stem.
Label = alphabetical emotion code (0 ANG .. 5 SAD). Fold = HiCMAE's actor partition: sorted actor
ids dealt in blocks of 18, the last fold takes the remaining 19 (1001-1018 -> 1, ..., 1073-1091
-> 5). The 20 combinations the corpus never recorded are not reported as missing; the 4 known-bad
clips are kept (MAE-DFER parity) and named in a warning. A plain "Download ZIP" holds git-LFS
pointer stubs instead of videos: those are rejected, and a tree of stubs only is refused.
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
    norm,
    rel,
    summarize,
    walk_files,
)
from maedfer.manifests.registry import register_dataset

log = logging.getLogger(__name__)

EMOTION_CODES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
CLASSES = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
ACTORS = range(1001, 1092)
NUM_FOLDS = 5
ACTORS_PER_FOLD = 18
SENTENCES = ["IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"]
# Never recorded (docs/datasets.md): 91 x 82 = 7,462 combinations - 20 = 7,442 clips.
ABSENT = frozenset(
    ["1002_TIE_NEU_XX", "1076_ITS_NEU_XX"]
    + [f"1008_WSI_{e}_XX" for e in EMOTION_CODES]
    + [f"1009_MTI_{e}_XX" for e in EMOTION_CODES]
    + [f"1019_ITH_{e}_XX" for e in EMOTION_CODES]
)
KNOWN_BAD = ("1076_MTI_NEU_XX", "1076_MTI_SAD_XX", "1064_TIE_SAD_XX", "1064_IEO_DIS_MD")
_NAME = re.compile(r"^(\d{4})_([A-Za-z]{3})_([A-Za-z]{3})_([A-Za-z]{1,3})$")
_EXPECTED = "VideoFlash/AAAA_SSS_EEE_LL.flv (e.g. VideoFlash/1001_DFA_ANG_XX.flv)"


def expected_keys(actors: range | list[int] = ACTORS) -> list[str]:
    """The recorded clips of ``actors``: IEO has NEU_XX and LO/MD/HI of the 5 other emotions."""
    keys = []
    for actor in actors:
        for sentence in SENTENCES:
            for emotion in EMOTION_CODES:
                levels = ("LO", "MD", "HI") if sentence == "IEO" and emotion != "NEU" else ("XX",)
                keys.extend(f"{actor}_{sentence}_{emotion}_{lv}" for lv in levels)
    return [k for k in keys if k not in ABSENT]


def _entry(stem: str, source: str) -> tuple[ClipEntry | None, str | None]:
    actor_s, _, emotion, _ = _NAME.match(stem).groups()
    actor = int(actor_s)
    if emotion.upper() not in EMOTION_CODES:
        return None, f"unrecognised name: emotion {emotion!r} not in {', '.join(EMOTION_CODES)}"
    if actor not in ACTORS:
        return None, f"unrecognised: actor {actor} not in CREMA-D's 1001..1091"
    label = EMOTION_CODES.index(emotion.upper())
    fold = block_fold(actor - ACTORS.start, per_fold=ACTORS_PER_FOLD, num_folds=NUM_FOLDS)
    entry = ClipEntry(
        clip_id=stem,
        source=source,
        kind="video",
        subject=str(actor),
        label=label,
        label_name=CLASSES[label],
        fold=fold,
        split=None,
    )
    return entry, None


#: docs/datasets.md's published fingerprints of the full protocol (keys as in
#: ``detailed_fingerprints``).
PUBLISHED_FINGERPRINTS = {
    "1": "dd05b4c670f64d58",
    "2": "a6f37e8a3b596892",
    "3": "2ba6e0e138c6ec7a",
    "4": "27e4466a608b5edf",
    "5": "19e855057c9c3c9d",
    "train:1": "385ef99265645f53",
    "train:2": "3761cd172da0fdd9",
    "train:3": "57ba6212c4b0666e",
    "train:4": "d302bff8b40161df",
    "train:5": "ab2798407c3f0100",
    "all": "de84a07ac09a3147",
}


@register_dataset("crema-d", media=("videos",), published=PUBLISHED_FINGERPRINTS)
class CremaD(Protocol):
    protocol = "mae-dfer:crema-d:5fold-actor-blocks-18"
    classes = CLASSES
    num_folds = NUM_FOLDS

    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index ``raw_root`` (any nesting; ``from_video`` is ignored: CREMA-D has only videos)."""
        root = check_root(raw_root, self.name)
        entries, rejects, odd, stubs, audio_only = [], [], [], 0, 0
        for folder, fname in walk_files(root):
            stem, ext = os.path.splitext(fname)
            if not _NAME.match(stem):
                if ext.lower() in VIDEO_EXTS and norm(folder.name) == "videoflash":
                    odd.append(rel(folder / fname, root))
                continue
            if ext.lower() not in VIDEO_EXTS:
                audio_only += ext.lower() in (".wav", ".mp3")
                continue
            source = rel(folder / fname, root)
            if is_lfs_pointer(folder / fname):
                stubs += 1
                rejects.append((stem, source, "unreadable: a git-LFS pointer stub, not the video"))
                continue
            entry, reason = _entry(stem, source)
            if reason:
                rejects.append((stem, source, reason))
            else:
                entries.append(entry)
        if not entries:
            hint = ""
            if stubs:
                hint = f"{stubs} git-LFS pointer stubs: clone with `git lfs` to get the videos"
            elif audio_only:
                hint = f"{audio_only} audio files only (AudioWAV/AudioMP3); the videos are needed"
            raise no_clips_error(self.name, root, _EXPECTED, hint)
        # The original Flash file first when a clip was also converted to another format.
        kept, dups = dedupe(entries, rank=lambda e: (not e.source.lower().endswith(".flv"),))
        rejects.extend(dups)
        warnings = _warnings(kept, stubs)
        if odd:
            warnings.append(
                f"crema-d: ignored {len(odd)} video(s) in VideoFlash whose names are not "
                f"AAAA_SSS_EEE_LL: {summarize(odd)}"
            )
        log.info("crema-d: %d clips, %d rejects under %s", len(kept), len(rejects), root)
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


def _warnings(entries: list[ClipEntry], stubs: int) -> list[str]:
    """Missing actors/clips of a partial download, LFS stubs, the known-bad clips kept."""
    out = []
    have = {e.clip_id.upper() for e in entries}
    actors = sorted({int(e.subject) for e in entries})
    absent_actors = [str(a) for a in ACTORS if a not in actors]
    if absent_actors:
        out.append(
            f"crema-d: partial download, {len(absent_actors)} actor(s) missing: "
            f"{summarize(absent_actors, 12)}; fingerprints will differ from the published ones"
        )
    absent = [k for k in expected_keys(actors) if k not in have]
    if absent:
        out.append(
            f"crema-d: {len(absent)} clip(s) missing from present actors: {summarize(absent)}"
        )
    if stubs:
        out.append(f"crema-d: {stubs} file(s) are git-LFS pointer stubs (rejected); use git lfs")
    bad = [k for k in KNOWN_BAD if k in have]
    if bad:
        out.append(
            f"crema-d: kept for MAE-DFER parity though known-bad (CREMA-D README): {', '.join(bad)}"
        )
    return out
