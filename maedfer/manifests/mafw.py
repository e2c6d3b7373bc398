"""MAFW (docs/datasets.md): 9,172 single-expression clips, 11 classes, official 5-fold CV.

Layout: ``Train & Test Set/single/no_caption/set_{1..5}/{train,test}.txt`` (MAE-DFER calls the top
folder ``split``: any name works, the ``single/no_caption`` folders are found by search) with
rows ``00025.mp4 anger``, and the official face frames ``data/frames/<id>/*.png`` (self-extracted
frames cost ~25 UAR points [I#22], so they are the default). Key = 5-digit id; label = the
split file's word in MAE-DFER's order (0 anger .. 10 disappointment, case-insensitive); fold k =
the clips of ``set_k/test.txt``. ``from_video`` points at ``data/clips/<id>.mp4`` instead.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from maedfer.errors import MaedferError
from maedfer.manifests.base import Protocol, RawIndex
from maedfer.manifests.layout import (
    VIDEO_EXTS,
    check_root,
    find_dirs,
    is_digits,
    list_dir,
    no_clips_error,
    norm,
    numbered_fold_entries,
    summarize,
    walk_files,
)
from maedfer.manifests.registry import register_dataset
from maedfer.manifests.splitfiles import clip_number, read_rows

log = logging.getLogger(__name__)

#: MAE-DFER's published MAFW figures (percent, 11 classes), the paper's. The MAE-DFER README's
#: per-fold rows for MAFW average to 42.36 / 55.03 instead (a later run).
PUBLISHED_RESULTS = {
    "uar": 41.62,
    "war": 54.31,
    "aggregation": "mean over 5 folds",
    "source": "MAE-DFER (Sun et al., ACM MM 2023), MAFW table",
}

CLASSES = [
    "anger",
    "disgust",
    "fear",
    "happiness",
    "neutral",
    "sadness",
    "surprise",
    "contempt",
    "anxiety",
    "helplessness",
    "disappointment",
]
NUM_FOLDS = 5
_SET_DIR = re.compile(r"^set[\s_\-]*(\d+)$", re.IGNORECASE)
_EXPECTED_SPLIT = "Train & Test Set/single/no_caption/set_1..5/{train,test}.txt"
_EXPECTED_FRAMES = "the face frames data/frames/<id>/*.png (frames.zip)"


def _parse_row(fields: list[str]) -> tuple[int, int]:
    return clip_number(fields[0]), CLASSES.index(fields[1].lower())


def _split_sets(root: Path) -> dict[int, dict[str, Path]]:
    """fold -> {"train": path, "test": path} from the best-filled ``single/no_caption``."""
    found = [
        d
        for d in find_dirs(root, lambda n: norm(n) == "no_caption", descend=True)
        if norm(d.parent.name) == "single"
    ]
    best: dict[int, dict[str, Path]] = {}
    best_folder = root
    for folder in found:
        sets: dict[int, dict[str, Path]] = {}
        for d in list_dir(folder)[0]:
            if m := _SET_DIR.match(d):
                files = list_dir(folder / d)[1]
                sets[int(m.group(1))] = {
                    os.path.splitext(f)[0].lower(): folder / d / f
                    for f in files
                    if f.lower().endswith(".txt")
                }
        if len(sets) > len(best):
            best, best_folder = sets, folder
    if not found:
        raise no_clips_error("mafw", root, _EXPECTED_SPLIT)
    missing = [
        f"set_{k}/test.txt" for k in range(1, NUM_FOLDS + 1) if "test" not in best.get(k, {})
    ]
    if missing:
        raise MaedferError(
            f"mafw: split file(s) {', '.join(missing)} missing in {best_folder}; "
            f"expected {_EXPECTED_SPLIT}"
        )
    return best


def _read_folds(sets: dict[int, dict[str, Path]]) -> tuple[dict[int, tuple[int, int]], list[str]]:
    expected = f"'<id>.mp4 <word>' with a word of {', '.join(CLASSES)}"
    labels: dict[int, tuple[int, int]] = {}
    warnings = []
    for k in range(1, NUM_FOLDS + 1):
        rows = read_rows(sets[k]["test"], _parse_row, expected)
        if not rows:
            warnings.append(f"mafw: set_{k}/test.txt lists no clips; fold {k} is empty")
        for vid, label in rows:
            if vid in labels and labels[vid][1] != k:
                raise MaedferError(
                    f"mafw: clip {vid:05d} is in the test sets of folds {labels[vid][1]} and {k}; "
                    "the official test sets are disjoint"
                )
            labels[vid] = (label, k)
    absent = [f"set_{k}/train.txt" for k in range(1, NUM_FOLDS + 1) if "train" not in sets[k]]
    if absent:
        warnings.append(f"mafw: {', '.join(absent)} not found; not checked against the test sets")
    for k in range(1, NUM_FOLDS + 1):
        if "train" not in sets[k]:
            continue
        got = {v for v, _ in read_rows(sets[k]["train"], _parse_row, expected)}
        want = {v for v, (_, f) in labels.items() if f != k}
        if got != want:
            warnings.append(
                f"mafw: set_{k}/train.txt is not the complement of set_{k}/test.txt "
                f"({len(got - want)} extra, {len(want - got)} absent); folds follow the test sets"
            )
    return labels, warnings


def _frame_dirs(root: Path) -> dict[int, Path]:
    """id -> frame folder, over every ``frames`` folder holding numbered clip folders."""
    out: dict[int, Path] = {}
    tops = find_dirs(root, lambda n: n.lower() == "frames")
    tops.sort(key=lambda p: (p.parent.name.lower() != "data", len(p.parts)))
    for top in tops:
        for d in list_dir(top)[0]:
            if is_digits(d):
                out.setdefault(int(d), top / d)
    return out


def _videos(root: Path) -> dict[int, Path]:
    """id -> clip ``<id>.mp4`` (any depth; frame folders are not entered)."""
    out: dict[int, Path] = {}

    def prune(name: str) -> bool:
        return is_digits(name) or name.lower() == "frames"

    for folder, name in walk_files(root, prune=prune):
        stem, ext = os.path.splitext(name)
        if ext.lower() in VIDEO_EXTS and stem.isdigit():
            out.setdefault(int(stem), folder / name)
    return out


#: docs/datasets.md's published fingerprints of the full protocol (keys as in
#: ``detailed_fingerprints``).
PUBLISHED_FINGERPRINTS = {
    "1": "5edadc076562197a",
    "2": "574239e566dce339",
    "3": "5214c4725add5431",
    "4": "9ed4303c5fb1f110",
    "5": "637ddf90a1ac49b8",
    "train:1": "2ba3abee90d82a3d",
    "train:2": "dbc9094d5ce9b5a5",
    "train:3": "7be8739eaf326e0e",
    "train:4": "707ea3981d4f530c",
    "train:5": "fd5219e5eadab966",
    "all": "9196c04c9103d536",
}


@register_dataset(
    "mafw", media=("frames", "videos"), published=PUBLISHED_FINGERPRINTS, results=PUBLISHED_RESULTS
)
class Mafw(Protocol):
    protocol = "mae-dfer:mafw:official-5fold-single-no-caption"
    classes = CLASSES
    num_folds = NUM_FOLDS

    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index the official splits against the face frames (or ``from_video``: the clips)."""
        root = check_root(raw_root, self.name)
        labels, warnings = _read_folds(_split_sets(root))
        media = _videos(root) if from_video else _frame_dirs(root)
        expected = "the clips data/clips/<id>.mp4" if from_video else _EXPECTED_FRAMES
        if not media:
            raise no_clips_error(self.name, root, expected)
        entries, rejects, missing = numbered_fold_entries(
            labels, media, root, CLASSES, from_video=from_video
        )
        if not entries:
            raise no_clips_error(self.name, root, expected, "no split clip has media")
        if missing:
            warnings.append(
                f"mafw: {len(missing)} of {len(labels)} split clips not found (partial "
                f"download?): {summarize(missing)}; fingerprints will differ from the published"
            )
        log.info("mafw: %d clips, %d rejects under %s", len(entries), len(rejects), root)
        return RawIndex(
            dataset=self.name,
            protocol=self.protocol,
            raw_root=root,
            classes=list(CLASSES),
            num_folds=NUM_FOLDS,
            entries=entries,
            rejects=rejects,
            warnings=warnings,
        )
