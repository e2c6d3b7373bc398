"""eNTERFACE'05 (docs/datasets.md): 1,287 clips of 43 subjects, subject-independent 5 folds.

Layout (``project2_database.zip``, root folder name varies): ``subject N/<emotion>/sentence k/
<stem>.avi`` with spaces in folder names. Everything is derived from the folders, never from
file names, which are unreliable: subject 11's files are named ``s12_*``, subject 3 has ``s_3_*``,
``s16_su_3avi.avi`` carries a typo, subject 2's anger sentences 1 and 2 hold each other's stems.
Key = ``subject_N/<emotion>/sentence_k/<stem>`` (MAE-DFER's frame folders: spaces become ``_``,
stem verbatim). Subject 6 (six unsegmented recordings, no sentence folders) is excluded by the
protocol and goes to the rejects. Label = 0 anger, 1 disgust, 2 fear, 3 happiness, 4 sadness,
5 surprise. Fold = the sorted 43 protocol subjects (1-5, 7-44) dealt in blocks 9, 9, 9, 9, 7.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from maedfer.manifests.base import ClipEntry, Protocol, RawIndex
from maedfer.manifests.folds import fold_of_id
from maedfer.manifests.layout import (
    VIDEO_EXTS,
    check_root,
    dedupe,
    no_clips_error,
    norm,
    rel,
    summarize,
    walk_files,
)
from maedfer.manifests.registry import register_dataset

log = logging.getLogger(__name__)

CLASSES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
_CODES = {"an": 0, "di": 1, "fe": 2, "ha": 3, "sa": 4, "su": 5}
EXCLUDED_SUBJECTS = frozenset({6})
SUBJECTS = [s for s in range(1, 45) if s not in EXCLUDED_SUBJECTS]
NUM_FOLDS = 5
SUBJECTS_PER_FOLD = 9
# Clips per subject in the protocol: 6 emotions x 5 sentences; subject 23 lacks happiness 1-3.
CLIPS_PER_SUBJECT = {s: (27 if s == 23 else 30) for s in SUBJECTS}
_SUBJECT_DIR = re.compile(r"^subject[\s_\-]*0*(\d+)$", re.IGNORECASE)
_SENTENCE_DIR = re.compile(r"^sentence[\s_\-]*0*(\d+)$", re.IGNORECASE)
_EXPECTED = "<root>/subject N/<emotion>/sentence k/<file>.avi (project2_database.zip)"


def _emotion(name: str) -> int | None:
    """Label of an emotion folder: ``anger`` .. ``surprise``, by the two-letter code the six
    names start with (so ``Anger``, ``an`` and a misspelt ``hapiness`` are all understood)."""
    return _CODES.get(norm(name)[:2])


def _locate(parts: tuple[str, ...]) -> tuple[int, tuple[str, ...]] | None:
    """(subject, folders below the subject folder) of a file's folder parts, innermost subject."""
    for i in range(len(parts) - 1, -1, -1):
        m = _SUBJECT_DIR.match(parts[i].strip())
        if m:
            return int(m.group(1)), parts[i + 1 :]
    return None


#: docs/datasets.md's published fingerprints of the full protocol (keys as in
#: ``detailed_fingerprints``).
PUBLISHED_FINGERPRINTS = {
    "1": "a15c96a5586b8c47",
    "2": "2469459eacac4654",
    "3": "b341b642539294c9",
    "4": "19442f23dfaa4858",
    "5": "60e3c89b1b2a0309",
    "train:1": "e2b74c26b8075179",
    "train:2": "7c88d9b3b5434e7a",
    "train:3": "ccd9d795a55b6838",
    "train:4": "da313540360b42bb",
    "train:5": "4522499d11c6bbeb",
    "all": "1a6a51dbd82ea031",
}


@register_dataset("enterface05", media=("videos",), published=PUBLISHED_FINGERPRINTS)
class Enterface05(Protocol):
    protocol = "mae-dfer:enterface05:5fold-subject-blocks-9"
    classes = CLASSES
    num_folds = NUM_FOLDS

    def _classify(
        self, subject: int, below: tuple[str, ...], stem: str, source: str
    ) -> ClipEntry | tuple[str, str, str]:
        """The entry of a file ``subject N/<below...>/<stem>``, or its reject row."""
        if subject in EXCLUDED_SUBJECTS:
            return (
                stem,
                source,
                f"protocol: subject {subject} is excluded (unsegmented recordings)",
            )
        if subject not in SUBJECTS:
            return (stem, source, f"unrecognised: subject {subject} not in 1..44")
        label = _emotion(below[0]) if below else None
        sentence = _SENTENCE_DIR.match(below[1].strip()) if len(below) > 1 else None
        if label is None or sentence is None or len(below) != 2:
            return (stem, source, "unexpected place: not in subject N/<emotion>/sentence k/")
        k = int(sentence.group(1))
        return ClipEntry(
            clip_id=f"subject_{subject}/{CLASSES[label]}/sentence_{k}/{stem}",
            source=source,
            kind="video",
            subject=str(subject),
            label=label,
            label_name=CLASSES[label],
            fold=fold_of_id(subject, SUBJECTS, per_fold=SUBJECTS_PER_FOLD, num_folds=NUM_FOLDS),
            split=None,
        )

    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index ``raw_root`` (any root folder name and nesting; ``from_video`` is ignored)."""
        root = check_root(raw_root, self.name)
        entries, rejects, stray = [], [], []
        for folder, fname in walk_files(root):
            stem, ext = os.path.splitext(fname)
            if ext.lower() not in VIDEO_EXTS:
                continue
            source = rel(folder / fname, root)
            found = _locate(Path(os.path.relpath(folder, root)).parts)
            if found is None:
                stray.append(source)
                continue
            result = self._classify(found[0], found[1], stem, source)
            (entries if isinstance(result, ClipEntry) else rejects).append(result)
        if not entries:
            hint = f"{len(stray)} video(s) outside 'subject N' folders" if stray else ""
            raise no_clips_error(self.name, root, _EXPECTED, hint)
        kept, dups = dedupe(entries, rank=lambda e: (not e.source.lower().endswith(".avi"),))
        rejects.extend(dups)
        warnings = _warnings(kept)
        if stray:
            warnings.append(
                f"enterface05: ignored {len(stray)} video(s) outside 'subject N' folders: "
                f"{summarize(stray)}"
            )
        log.info("enterface05: %d clips, %d rejects under %s", len(kept), len(rejects), root)
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


def _warnings(entries: list[ClipEntry]) -> list[str]:
    """Subjects missing, and subjects with fewer clips than the protocol's 30 (27 for 23)."""
    counts: dict[int, int] = {}
    for e in entries:
        counts[int(e.subject)] = counts.get(int(e.subject), 0) + 1
    out = []
    absent = [str(s) for s in SUBJECTS if s not in counts]
    if absent:
        out.append(
            f"enterface05: partial download, subject(s) missing: {summarize(absent, 43)}; "
            "fingerprints will differ from the published ones"
        )
    short = [
        f"{s} ({n}/{CLIPS_PER_SUBJECT[s]})"
        for s, n in sorted(counts.items())
        if n < CLIPS_PER_SUBJECT[s]
    ]
    if short:
        out.append(f"enterface05: subject(s) with clips missing: {summarize(short, 10)}")
    return out
