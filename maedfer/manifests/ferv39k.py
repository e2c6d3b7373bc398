"""FERV39k (docs/datasets.md): 31,088 train + 7,847 test clips, one fixed split, 7 classes.

Layout: ``4_setups/All_scenes/{train_All,test_All}.csv`` (no header, ``Action/Sad/0010 Sad``) and
the official face crops ``2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/*.jpg``. Downloads nest
these differently (``2_ClipsforFaceCrop-002/2_ClipsforFaceCrop/``, split files elsewhere), so
both are found by search. Key = ``Scene/Emotion/clip`` as the split file writes it; label = the
split file's word in DFEW order (0 Happy .. 6 Fear); split = ``train``/``test`` (no folds).
``from_video`` points at original videos ``<Scene>/<Emotion>/<clip>.<ext>`` found anywhere
outside the frame folders (their folder name in the download is unverified).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from maedfer.errors import MaedferError
from maedfer.manifests.base import ClipEntry, Protocol, RawIndex
from maedfer.manifests.layout import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    check_root,
    find_dirs,
    first_file,
    is_digits,
    list_dir,
    no_clips_error,
    norm,
    rel,
    summarize,
    walk_files,
)
from maedfer.manifests.registry import register_dataset
from maedfer.manifests.splitfiles import read_rows

log = logging.getLogger(__name__)

#: MAE-DFER's published FERV39k figures (percent) on the fixed test split.
PUBLISHED_RESULTS = {
    "uar": 43.12,
    "war": 52.07,
    "aggregation": "fixed test split",
    "source": "MAE-DFER (Sun et al., ACM MM 2023), FERV39k table",
}

CLASSES = ["Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"]
SPLITS = ("train", "test")
_LOWER = [c.lower() for c in CLASSES]
_CROP = "2_clipsforfacecrop"
_EXPECTED_SPLIT = "4_setups/All_scenes/train_All.csv and test_All.csv"
_EXPECTED_FRAMES = "the face crops 2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/*.jpg"


def _parse_row(fields: list[str]) -> tuple[str, int]:
    parts = [p for p in fields[0].replace("\\", "/").split("/") if p]
    if len(parts) < 3:
        raise ValueError(fields[0])
    return "/".join(parts[-3:]), _LOWER.index(fields[1].lower())


def _split_files(root: Path) -> dict[str, Path]:
    """split -> ``{split}_All.csv``, both from one folder (``All_scenes`` preferred)."""
    by_folder: dict[Path, dict[str, Path]] = {}
    for folder, name in walk_files(root, prune=is_digits):
        low = name.lower()
        for split in SPLITS:
            if low == f"{split}_all.csv":
                by_folder.setdefault(folder, {})[split] = folder / name
    if not by_folder:
        raise no_clips_error("ferv39k", root, _EXPECTED_SPLIT)
    ranked = sorted(
        by_folder.items(),
        key=lambda kv: (-len(kv[1]), norm(kv[0].name) != "all_scenes", len(kv[0].parts)),
    )
    folder, files = ranked[0]
    if len(files) < 2:
        absent = [f"{s}_All.csv" for s in SPLITS if s not in files]
        raise MaedferError(
            f"ferv39k: {', '.join(absent)} missing in {folder}; expected {_EXPECTED_SPLIT}"
        )
    return files


def _read_split(files: dict[str, Path]) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """key -> (label, split); warnings where the label word and the Emotion folder differ."""
    expected = f"'Scene/Emotion/clip Word' with a word of {', '.join(CLASSES)}"
    out: dict[str, tuple[int, str]] = {}
    odd = []
    warnings = []
    for split in SPLITS:
        rows = read_rows(files[split], _parse_row, expected)
        if not rows:
            warnings.append(f"ferv39k: {files[split]} lists no clips")
        for key, label in rows:
            if key in out and out[key][1] != split:
                raise MaedferError(f"ferv39k: clip {key} is in both train_All.csv and test_All.csv")
            out[key] = (label, split)
            if key.split("/")[1].lower() != _LOWER[label]:
                odd.append(key)
    if odd:
        warnings.append(
            f"ferv39k: {len(odd)} clip(s) whose label word differs from their Emotion folder "
            f"(the split file's word is used): {summarize(odd)}"
        )
    return out, warnings


def _crop_roots(root: Path) -> list[Path]:
    """Every ``2_ClipsforFaceCrop`` folder, stepping into a same-named folder nested in it."""
    out = []
    for top in find_dirs(root, lambda n: norm(n) == _CROP):
        while True:
            inner = [d for d in list_dir(top)[0] if norm(d) == _CROP]
            if not inner:
                break
            top = top / inner[0]
        out.append(top)
    return out


def _frame_dirs(root: Path) -> dict[str, Path]:
    """lower-case ``scene/emotion/clip`` -> frame folder."""
    out: dict[str, Path] = {}
    for top in _crop_roots(root):
        for scene in list_dir(top)[0]:
            for emotion in list_dir(top / scene)[0]:
                for clip in list_dir(top / scene / emotion)[0]:
                    out.setdefault(
                        f"{scene}/{emotion}/{clip}".lower(), top / scene / emotion / clip
                    )
    return out


def _videos(root: Path) -> dict[str, Path]:
    """lower-case ``scene/emotion/clip`` -> original video, outside the frame folders."""
    out: dict[str, Path] = {}

    def prune(name: str) -> bool:
        return is_digits(name) or norm(name).startswith((_CROP, "3_clipsforscenimages"))

    for folder, name in walk_files(root, prune=prune):
        stem, ext = os.path.splitext(name)
        if ext.lower() in VIDEO_EXTS and len(folder.parts) >= 2:
            out.setdefault(f"{folder.parent.name}/{folder.name}/{stem}".lower(), folder / name)
    return out


#: docs/datasets.md's published fingerprints of the full protocol (keys as in
#: ``detailed_fingerprints``).
PUBLISHED_FINGERPRINTS = {
    "train": "a4446aefa2b01136",
    "test": "08c4ca3da2efa547",
    "all": "05084336445ce5e3",
}


@register_dataset(
    "ferv39k",
    media=("frames", "videos"),
    published=PUBLISHED_FINGERPRINTS,
    results=PUBLISHED_RESULTS,
)
class Ferv39k(Protocol):
    protocol = "mae-dfer:ferv39k:all-scenes-train-test"
    classes = CLASSES
    num_folds = 0

    def index(self, raw_root: Path, *, from_video: bool = False) -> RawIndex:
        """Index the official split against the face crops (or ``from_video``: the videos)."""
        root = check_root(raw_root, self.name)
        labels, warnings = _read_split(_split_files(root))
        media = _videos(root) if from_video else _frame_dirs(root)
        expected = "videos <Scene>/<Emotion>/<clip>.mp4" if from_video else _EXPECTED_FRAMES
        if not media:
            raise no_clips_error(self.name, root, expected)
        entries, rejects, missing = [], [], []
        for key in sorted(labels):
            label, split = labels[key]
            path = media.get(key.lower())
            if path is None:
                missing.append(key)
                continue
            source = rel(path, root)
            if not from_video and first_file(path, IMAGE_EXTS) is None:
                rejects.append((key, source, "no frames: the frame folder holds no images"))
                continue
            entries.append(
                ClipEntry(
                    clip_id=key,
                    source=source,
                    kind="video" if from_video else "frames",
                    subject=None,
                    label=label,
                    label_name=CLASSES[label],
                    fold=None,
                    split=split,
                )
            )
        if not entries:
            raise no_clips_error(self.name, root, expected, "no split clip has media")
        if missing:
            warnings.append(
                f"ferv39k: {len(missing)} of {len(labels)} split clips not found (partial "
                f"download?): {summarize(missing)}; fingerprints will differ from the published"
            )
        log.info("ferv39k: %d clips, %d rejects under %s", len(entries), len(rejects), root)
        return RawIndex(
            dataset=self.name,
            protocol=self.protocol,
            raw_root=root,
            classes=list(CLASSES),
            num_folds=0,
            entries=entries,
            rejects=rejects,
            warnings=warnings,
        )
