"""Raw dataset trees in each dataset's download layout, for tests (docs/datasets.md).

Every generator writes the tree as a user gets it after unpacking, irregularities included
(eNTERFACE05's ``s12_*`` files under subject 11, ``s_3_*``, ``s16_su_3avi.avi``, subject 6;
RAVDESS full-AV copies and songs; CREMA-D's never-recorded combinations; both DFEW split-folder
spellings; FERV39k's extra ``2_ClipsforFaceCrop-002`` nesting; macOS debris). Media files are
created by a callback ``write(path, kind)`` with kind ``"video"`` (one clip file) or ``"frame"``
(one image of a frame folder); the default makes an empty file, a caller that needs pixels
passes one that writes real videos or images. ``size="full"`` gives the complete name lists of
RAVDESS (1,440 speech clips), CREMA-D (7,442) and eNTERFACE05 (1,287 + subject 6); ``"mini"`` a
few subjects. DFEW, FERV39k, MAFW and VoxCeleb2 are miniatures with synthetic official split
files, returned in ``RawTree.labels``/``RawTree.assign`` so tests can check the index against
them.

The eNTERFACE05 stems are the names MAE-DFER's split files hold (checked against the published
fold fingerprints), including the swapped stems of subject 2's anger sentences 1 and 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

WriteFn = Callable[[Path, str], None]
Size = Literal["mini", "full"]


def empty_file(path: Path, kind: str) -> None:
    """Default writer: an empty file (``--index-only`` never reads pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _debris(folder: Path, media_name: str) -> None:
    """macOS archive debris next to real files: .DS_Store and an AppleDouble twin."""
    _text(folder / ".DS_Store", "Bud1")
    _text(folder.parent / "__MACOSX" / folder.name / f"._{media_name}", "apple double")


@dataclass
class RawTree:
    """A generated tree: its root and what the protocol should find in it.

    Attributes:
        root: the folder to pass as ``--raw``.
        labels: expected label (0-based, protocol order) per clip key.
        assign: expected fold (int) or split (str) per key, where the generator decided it
            (the synthetic split files of DFEW, FERV39k, MAFW; VoxCeleb2's ``"pretrain"``).
        excluded: keys (or stems) the protocol must leave out (rejects with ``protocol:``).
    """

    root: Path
    labels: dict[str, int] = field(default_factory=dict)
    assign: dict[str, int | str] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- RAVDESS (§7)


def ravdess_names(actor: int, channel: int = 1) -> list[str]:
    """Speech (channel 1, 60 per actor) or song (channel 2, 44 per actor) video-only stems."""
    emotions = range(1, 9) if channel == 1 else (1, 2, 3, 4, 5, 6)
    out = []
    for e in emotions:
        for i in (1,) if e == 1 else (1, 2):
            for s in (1, 2):
                for r in (1, 2):
                    out.append(f"02-{channel:02d}-{e:02d}-{i:02d}-{s:02d}-{r:02d}-{actor:02d}")
    return out


def make_ravdess(
    root: Path,
    *,
    size: Size = "mini",
    write: WriteFn | None = None,
    full_av: bool = True,
    songs: bool = True,
    actors: list[int] | None = None,
) -> RawTree:
    """``Actor_XX/MM-VV-…mp4`` as the per-actor Video_Speech/Video_Song zips unpack.

    Every speech clip is present as video-only (``02``) and, with ``full_av``, also as full-AV
    (``01``), as in the zips; songs (``02-02-…``/``01-02-…``) are not in the protocol.
    """
    write = write or empty_file
    actors = actors or (list(range(1, 25)) if size == "full" else [1, 4, 5, 24])
    tree = RawTree(root)
    for a in actors:
        folder = root / f"Actor_{a:02d}"
        for stem in ravdess_names(a):
            write(folder / f"{stem}.mp4", "video")
            tree.labels[stem] = int(stem[6:8]) - 1
            if full_av:
                write(folder / f"01{stem[2:]}.mp4", "video")
                tree.excluded.add(f"01{stem[2:]}")
        if songs and a != 18:  # the corpus has no song recordings of actor 18
            for stem in ravdess_names(a, channel=2):
                write(folder / f"{stem}.mp4", "video")
                tree.excluded.add(stem)
        _debris(folder, f"{ravdess_names(a)[0]}.mp4")
    return tree


# --------------------------------------------------------------------------- CREMA-D (§6)

CREMA_EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
CREMA_SENTENCES = [
    "IEO",
    "TIE",
    "IOM",
    "IWW",
    "TAI",
    "MTI",
    "IWL",
    "ITH",
    "DFA",
    "ITS",
    "TSI",
    "WSI",
]
CREMA_ABSENT = (
    {"1002_TIE_NEU_XX", "1076_ITS_NEU_XX"}
    | {f"1008_WSI_{e}_XX" for e in CREMA_EMOTIONS}
    | {f"1009_MTI_{e}_XX" for e in CREMA_EMOTIONS}
    | {f"1019_ITH_{e}_XX" for e in CREMA_EMOTIONS}
)


def crema_names(actor: int) -> list[str]:
    """The recorded stems of one actor (82 combinations less the never-recorded ones)."""
    out = []
    for s in CREMA_SENTENCES:
        for e in CREMA_EMOTIONS:
            levels = ("LO", "MD", "HI") if s == "IEO" and e != "NEU" else ("XX",)
            out.extend(f"{actor}_{s}_{e}_{lv}" for lv in levels)
    return [n for n in out if n not in CREMA_ABSENT]


def make_crema_d(
    root: Path,
    *,
    size: Size = "mini",
    write: WriteFn | None = None,
    actors: list[int] | None = None,
    audio: bool | None = None,
) -> RawTree:
    """``VideoFlash/<stem>.flv``, ``AudioWAV/<stem>.wav`` (by default at mini size only), a csv."""
    write = write or empty_file
    actors = actors or (list(range(1001, 1092)) if size == "full" else [1001, 1018, 1019, 1091])
    audio = size == "mini" if audio is None else audio
    tree = RawTree(root)
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    for a in actors:
        for stem in crema_names(a):
            write(root / "VideoFlash" / f"{stem}.flv", "video")
            if audio:
                (root / "AudioWAV" / f"{stem}.wav").write_bytes(b"RIFF")
            tree.labels[stem] = CREMA_EMOTIONS.index(stem.split("_")[2])
    _text(root / "VideoDemographics.csv", "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,,\n")
    _debris(root / "VideoFlash", f"{crema_names(actors[0])[0]}.flv")
    return tree


# --------------------------------------------------------------------------- eNTERFACE05 (§8)

ENT_EMOTIONS = [
    ("anger", "an"),
    ("disgust", "di"),
    ("fear", "fe"),
    ("happiness", "ha"),
    ("sadness", "sa"),
    ("surprise", "su"),
]


def enterface_stem(subject: int, emotion: str, code: str, k: int) -> str:
    """The file stem the archive uses for one utterance, irregularities included."""
    if subject == 2 and emotion == "anger" and k in (1, 2):
        return f"s2_an_{3 - k}"  # sentence 1 holds s2_an_2 and vice versa
    if subject == 3 and (emotion in ("happiness", "sadness", "surprise") or (code, k) == ("fe", 5)):
        return f"s_3_{code}_{k}"
    if subject == 16 and (code, k) == ("su", 3):
        return "s16_su_3avi"  # file s16_su_3avi.avi
    return f"s{12 if subject == 11 else subject}_{code}_{k}"  # subject 11's files say s12


def make_enterface05(
    root: Path,
    *,
    size: Size = "mini",
    write: WriteFn | None = None,
    subjects: list[int] | None = None,
    top: str = "enterface database",
) -> RawTree:
    """``<top>/subject N/<emotion>/sentence k/<stem>.avi``; subject 6 unsegmented, no sentences."""
    write = write or empty_file
    subjects = subjects or (list(range(1, 45)) if size == "full" else [1, 2, 3, 6, 11, 12, 16, 23])
    base = root / top
    tree = RawTree(root)
    for n in subjects:
        for label, (emotion, code) in enumerate(ENT_EMOTIONS):
            folder = base / f"subject {n}" / emotion
            if n == 6:
                write(folder / f"s6_{code}.avi", "video")
                tree.excluded.add(f"s6_{code}")
                continue
            for k in range(1, 6):
                if n == 23 and emotion == "happiness" and k <= 3:
                    continue
                stem = enterface_stem(n, emotion, code, k)
                write(folder / f"sentence {k}" / f"{stem}.avi", "video")
                tree.labels[f"subject_{n}/{emotion}/sentence_{k}/{stem}"] = label
    _text(base / "Thumbs.db", "x")
    return tree


# --------------------------------------------------------------------------- DFEW (§3)

DFEW_CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]


def make_dfew(
    root: Path,
    *,
    write: WriteFn | None = None,
    spelling: Literal["-", "_"] = "-",
    frames_dir: Literal["clip_224x224", "jpg_256"] = "clip_224x224",
    n_clips: int = 20,
    frames_per_clip: int = 2,
    originals: bool = True,
) -> RawTree:
    """``Clip/{original,<frames_dir>,clip_224x224_16f}`` and ``EmoLabel_DataSplit`` csvs.

    Clip i (1-based, ids spaced by 3 so they are not contiguous) has csv label ``i % 7 + 1`` and
    is in the test set of fold ``i % 5 + 1``; ``spelling`` picks ``train(single-labeled)`` or
    ``train(single_labeled)``. The 16-frame variant holds the first clip only (a distractor).
    """
    write = write or empty_file
    tree = RawTree(root)
    ids = [3 * i + 1 for i in range(n_clips)]
    for i, vid in enumerate(ids):
        key = f"{vid:05d}"
        tree.labels[key] = i % 7
        tree.assign[key] = i % 5 + 1
        for f in range(1, frames_per_clip + 1):
            write(root / "Clip" / frames_dir / key / f"{key}_{f:05d}.jpg", "frame")
        if originals:
            write(root / "Clip" / "original" / f"{key}.mp4", "video")
    write(root / "Clip" / "clip_224x224_16f" / f"{ids[0]:05d}" / "1.jpg", "frame")
    split = root / "EmoLabel_DataSplit"
    for k in range(1, 6):
        for part, member in (("train", False), ("test", True)):
            rows = [
                f"{vid},{tree.labels[f'{vid:05d}'] + 1}"
                for vid in ids
                if (tree.assign[f"{vid:05d}"] == k) == member
            ]
            text = "video_name,label\n" + "\n".join(rows) + "\n"
            _text(split / f"{part}(single{spelling}labeled)" / f"set_{k}.csv", text)
    write(root / "Annotation" / "annotation.xlsx", "other")
    _debris(root / "Clip" / frames_dir, f"{ids[0]:05d}")
    return tree


# --------------------------------------------------------------------------- FERV39k (§4)

FERV_CLASSES = ["Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"]
FERV_SCENES = ["Action", "DailyLife", "Interview", "OfficialEvent"]


def make_ferv39k(
    root: Path,
    *,
    write: WriteFn | None = None,
    n_clips: int = 16,
    frames_per_clip: int = 2,
    originals: bool = True,
) -> RawTree:
    """``2_ClipsforFaceCrop-002/2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/*.jpg`` + setups.

    Clip i is ``<scene i%4>/<emotion i%7>/<4-digit>``, in ``test`` when i % 4 == 0. Original
    videos (``--from-video``) go to ``0_7_LabelClips/<Scene>/<Emotion>/<clip>.mp4``; that folder
    name is this generator's choice (the real one is unverified, docs/datasets.md).
    """
    write = write or empty_file
    tree = RawTree(root)
    crop = root / "2_ClipsforFaceCrop-002" / "2_ClipsforFaceCrop"
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for i in range(n_clips):
        scene, emotion = FERV_SCENES[i % 4], FERV_CLASSES[i % 7]
        key = f"{scene}/{emotion}/{10 * i + 7:04d}"
        split = "test" if i % 4 == 0 else "train"
        tree.labels[key], tree.assign[key] = i % 7, split
        lines[split].append(f"{key} {emotion}")
        for f in range(1, frames_per_clip + 1):
            write(crop / key / f"{f:05d}.jpg", "frame")
        if originals:
            write(root / "0_7_LabelClips" / f"{key}.mp4", "video")
    setups = root / "4_setups" / "All_scenes"
    _text(setups / "train_All.csv", "\n".join(lines["train"]) + "\n")
    _text(setups / "test_All.csv", "\n".join(lines["test"]) + "\n")
    _text(root / "4_setups" / "22_scenes" / "Action" / "train_Action.csv", lines["train"][0])
    _debris(crop, FERV_SCENES[0])
    return tree


# --------------------------------------------------------------------------- MAFW (§5)

MAFW_CLASSES = [
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


def make_mafw(
    root: Path,
    *,
    write: WriteFn | None = None,
    n_clips: int = 22,
    frames_per_clip: int = 2,
    originals: bool = True,
    split_root: str = "Train & Test Set",
) -> RawTree:
    """``data/{clips,frames}`` and ``<split_root>/single/no_caption/set_k/{train,test}.txt``.

    Clip i has id ``19 + 7 i`` (not contiguous), label ``i % 11`` and test fold ``i % 5 + 1``.
    A ``compound`` split with other words sits beside ``single`` as a distractor.
    """
    write = write or empty_file
    tree = RawTree(root)
    ids = [f"{19 + 7 * i:05d}" for i in range(n_clips)]
    for i, key in enumerate(ids):
        tree.labels[key], tree.assign[key] = i % 11, i % 5 + 1
        for f in range(1, frames_per_clip + 1):
            write(root / "data" / "frames" / key / f"{f:05d}.png", "frame")
        if originals:
            write(root / "data" / "clips" / f"{key}.mp4", "video")
    for k in range(1, 6):
        for part, member in (("train", False), ("test", True)):
            rows = [
                f"{c}.mp4 {MAFW_CLASSES[tree.labels[c]]}"
                for c in ids
                if (tree.assign[c] == k) == member
            ]
            _text(
                root / split_root / "single" / "no_caption" / f"set_{k}" / f"{part}.txt",
                "\n".join(rows) + "\n",
            )
            _text(
                root / split_root / "compound" / "no_caption" / f"set_{k}" / f"{part}.txt",
                f"{ids[0]}.mp4 anger_disgust\n",
            )
    _text(root / "Labels" / "single_set.xlsx", "")
    return tree


# --------------------------------------------------------------------------- VoxCeleb2 (§2)

# (speaker, YouTube id, utterances); the first two speakers hold clips of MAE-DFER's broken list.
VOX_CLIPS = [
    ("id00379", "opd2FtUUfi8", ["00055", "00056", "00059"]),
    ("id08423", "oEx3CRfDXMQ", ["00047", "00048", "00049"]),
    ("id00012", "21Uxsk56VDQ", ["00001", "00002"]),
    ("id00012", "_raOc3-IRsw", ["00110"]),
    ("id09272", "u7VNkYraCw0", ["00027"]),
]
VOX_BROKEN = {
    "id00379/opd2FtUUfi8/00055",
    "id00379/opd2FtUUfi8/00056",
    "id08423/oEx3CRfDXMQ/00048",
    "id08423/oEx3CRfDXMQ/00049",
}


def make_voxceleb2(
    root: Path, *, write: WriteFn | None = None, test_set: bool = True, audio: bool = True
) -> RawTree:
    """``dev/mp4/idXXXXX/<youtube id>/NNNNN.mp4`` (+ ``dev/aac`` audio and a ``test/mp4`` set)."""
    write = write or empty_file
    tree = RawTree(root)
    for spk, yt, utts in VOX_CLIPS:
        for u in utts:
            key = f"{spk}/{yt}/{u}"
            write(root / "dev" / "mp4" / spk / yt / f"{u}.mp4", "video")
            if audio:
                _text(root / "dev" / "aac" / spk / yt / f"{u}.m4a", "")
            if key in VOX_BROKEN:
                tree.excluded.add(key)
            else:
                tree.labels[key], tree.assign[key] = -1, "pretrain"
    if test_set:
        write(root / "test" / "mp4" / "id00017" / "01dfn2spqyE" / "00001.mp4", "video")
    _debris(root / "dev" / "mp4", "id00012")
    return tree


MAKERS: dict[str, Callable[..., RawTree]] = {
    "voxceleb2": make_voxceleb2,
    "dfew": make_dfew,
    "ferv39k": make_ferv39k,
    "mafw": make_mafw,
    "crema-d": make_crema_d,
    "ravdess": make_ravdess,
    "enterface05": make_enterface05,
}
