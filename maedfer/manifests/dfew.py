"""DFEW (docs/datasets.md): 11,697 single-labeled clips, official 5-fold cross-validation.

Layout: ``EmoLabel_DataSplit/{train,test}(single-labeled)/set_{1..5}.csv`` (the README spells
them ``single_labeled``: both accepted) with ``video_name,label`` rows, and the official aligned
face frames ``Clip/clip_224x224/<%05d>/*.jpg`` (MAE-DFER renamed the folder ``jpg_256``: both
accepted; NOT ``clip_224x224_16f``, the time-normalised variant [I#14]). Every folder is located
by search, at any depth, and frame folders spread over several ``clip_224x224`` parts are merged.
Key = ``%05d`` id; label = csv label - 1 (0 happy .. 6 fear); fold k = the clips of
``test(...)/set_k.csv``. ``from_video`` points at ``Clip/original/<id>.mp4`` instead.
The train csvs, when present, are checked to be the complement of the test sets.
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
    rel,
    summarize,
    walk_files,
)
from maedfer.manifests.registry import register_dataset
from maedfer.manifests.splitfiles import clip_number, read_rows

log = logging.getLogger(__name__)

#: MAE-DFER's published DFEW figures (percent): the mean of the per-fold UAR and WAR over the
#: 5 folds, which the MAE-DFER README's per-fold rows reproduce (mean 63.408, 74.428).
PUBLISHED_RESULTS = {
    "uar": 63.41,
    "war": 74.43,
    "aggregation": "mean over 5 folds",
    "source": "MAE-DFER (Sun et al., ACM MM 2023), DFEW table",
}

CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
NUM_FOLDS = 5
FRAME_DIRS = ("clip_224x224", "jpg_256")
_SPLIT_DIR = re.compile(r"^(train|test)[\s_\-(]*single[\s_\-]*labell?ed[\s)]*$", re.IGNORECASE)
_SET_FILE = re.compile(r"^set[\s_\-]*(\d+)\.csv$", re.IGNORECASE)
_EXPECTED_SPLIT = "EmoLabel_DataSplit/test(single-labeled)/set_1..5.csv (or single_labeled)"
_EXPECTED_FRAMES = "the face frames Clip/clip_224x224/<00001..16372>/ (or Clip/jpg_256)"


def _set_files(folder: Path) -> dict[int, Path]:
    return {int(m.group(1)): folder / f for f in list_dir(folder)[1] if (m := _SET_FILE.match(f))}


def _parse_row(fields: list[str]) -> tuple[int, int]:
    vid, label = clip_number(fields[0]), int(fields[1])
    if not 1 <= label <= len(CLASSES):
        raise ValueError(label)
    return vid, label - 1


def _split_sets(root: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """(test set files, train set files) by fold, from the best-filled split folders found."""
    found = find_dirs(root, lambda n: bool(_SPLIT_DIR.match(n)), descend=True)
    best: dict[str, dict[int, Path]] = {"train": {}, "test": {}}
    for folder in found:
        part = _SPLIT_DIR.match(folder.name).group(1).lower()
        sets = _set_files(folder)
        if len(sets) > len(best[part]):
            best[part] = sets
    if not best["test"]:
        hint = f"split folders found: {', '.join(rel(f, root) for f in found)}" if found else ""
        raise no_clips_error("dfew", root, _EXPECTED_SPLIT, hint)
    missing = [str(k) for k in range(1, NUM_FOLDS + 1) if k not in best["test"]]
    if missing:
        folder = next(iter(best["test"].values())).parent
        raise MaedferError(
            f"dfew: split file(s) set_{', set_'.join(missing)}.csv missing in {folder}; "
            f"expected set_1..set_{NUM_FOLDS}.csv"
        )
    return best["test"], best["train"]


def _read_folds(test: dict[int, Path], train: dict[int, Path]) -> tuple[dict, list[str]]:
    """id -> (label, fold) from the test sets; warnings where the train sets disagree."""
    expected = "'video_name,label' with label 1..7"
    labels: dict[int, tuple[int, int]] = {}
    warnings = []
    for k in range(1, NUM_FOLDS + 1):
        rows = read_rows(test[k], _parse_row, expected)
        if not rows:
            warnings.append(f"dfew: {test[k]} lists no clips; fold {k} has an empty test set")
        for vid, label in rows:
            if vid in labels and labels[vid][1] != k:
                raise MaedferError(
                    f"dfew: clip {vid:05d} is in the test sets of folds {labels[vid][1]} and {k} "
                    f"({test[k]}); the official test sets are disjoint"
                )
            labels[vid] = (label, k)
    absent = [f"set_{k}.csv" for k in range(1, NUM_FOLDS + 1) if k not in train]
    if absent:
        warnings.append(f"dfew: train split file(s) {', '.join(absent)} not found; not checked")
    for k in range(1, NUM_FOLDS + 1):
        if k not in train:
            continue
        rows = read_rows(train[k], _parse_row, expected)
        want = {v for v, (_, f) in labels.items() if f != k}
        got = {v for v, _ in rows}
        if got != want:
            warnings.append(
                f"dfew: {train[k]} is not the complement of test set_{k}.csv "
                f"({len(got - want)} extra, {len(want - got)} absent); folds follow the test sets"
            )
    return labels, warnings


def _frame_dirs(root: Path) -> dict[int, Path]:
    """id -> frame folder, merged over every ``clip_224x224``/``jpg_256`` folder found."""
    out: dict[int, Path] = {}
    for top in find_dirs(root, lambda n: n.lower() in FRAME_DIRS):
        stack = [(top, 0)]
        while stack:  # ids directly under it, or one or two levels down (per-part folders)
            folder, depth = stack.pop()
            dirs = list_dir(folder)[0]
            for d in dirs:
                if is_digits(d):
                    out.setdefault(int(d), folder / d)
                elif depth < 2:
                    stack.append((folder / d, depth + 1))
    return out


def _videos(root: Path) -> dict[int, Path]:
    """id -> original clip ``<id>.mp4`` (any depth; frame folders not entered)."""
    out: dict[int, Path] = {}

    def prune(name: str) -> bool:
        return is_digits(name) or norm(name).startswith(FRAME_DIRS)

    for folder, name in walk_files(root, prune=prune):
        stem, ext = os.path.splitext(name)
        if ext.lower() in VIDEO_EXTS and stem.isdigit():
            out.setdefault(int(stem), folder / name)
    return out


#: docs/datasets.md's published fingerprints of the full protocol (keys as in
#: ``detailed_fingerprints``).
PUBLISHED_FINGERPRINTS = {
    "1": "b0000e8bfb9f5f70",
    "2": "7ccc76996c59a474",
    "3": "2cee5da42a3efdc2",
    "4": "4d18c81ebe482962",
    "5": "659a48d729044683",
    "train:1": "0b395009e597406f",
    "train:2": "93a2261d4f05f816",
    "train:3": "320211e4189eed15",
    "train:4": "e1a7463ae5f11b37",
    "train:5": "710baa790821275f",
    "all": "1e1f2b2f3314a8e2",
}


@register_dataset(
    "dfew", media=("frames", "videos"), published=PUBLISHED_FINGERPRINTS, results=PUBLISHED_RESULTS
)
class Dfew(Protocol):
    protocol = "mae-dfer:dfew:official-5fold-single-labeled"
    classes = CLASSES
    num_folds = NUM_FOLDS

    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index the official splits against the face frames (or ``from_video``: the clips)."""
        root = check_root(raw_root, self.name)
        test, train = _split_sets(root)
        labels, warnings = _read_folds(test, train)
        media = _videos(root) if from_video else _frame_dirs(root)
        if not media and from_video:
            raise no_clips_error(self.name, root, "the original clips Clip/original/<id>.mp4")
        if not media:
            hint = "--from-video uses Clip/original instead"
            if find_dirs(root, lambda n: n.lower().startswith("clip_224x224_16f")):
                hint = (
                    "clip_224x224_16f is the 16-frame variant; MAE-DFER uses variable-length frames"
                )
            raise no_clips_error(self.name, root, _EXPECTED_FRAMES, hint)
        entries, rejects, missing = numbered_fold_entries(
            labels, media, root, CLASSES, from_video=from_video
        )
        if not entries:
            raise no_clips_error(self.name, root, _EXPECTED_FRAMES, "no split clip has media")
        if missing:
            what = "clips" if from_video else "frame folders"
            warnings.append(
                f"dfew: {len(missing)} of {len(labels)} split clips have no {what} (partial "
                f"download?): {summarize(missing)}; fingerprints will differ from the published"
            )
        log.info("dfew: %d clips, %d rejects under %s", len(entries), len(rejects), root)
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
