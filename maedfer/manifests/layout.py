"""Finding things in a raw download by search, not fixed depth (docs/design.md, docs/datasets.md).

Real downloads nest the dataset under folders of varying names (``FERV39k/2_ClipsforFaceCrop-002/
2_ClipsforFaceCrop``), carry macOS debris (``__MACOSX``, ``._*``, ``.DS_Store``), use spaces and odd
case in names. These helpers walk a tree skipping that debris, locate marker folders by name at
any depth (without descending into the huge per-clip frame folders), describe what a folder
holds for error messages, and settle clips found twice.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from maedfer.errors import MaedferError
from maedfer.manifests.base import ClipEntry

VIDEO_EXTS = frozenset({".mp4", ".avi", ".flv", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
# Folders that never hold dataset files: archive and OS debris.
_DEBRIS = frozenset({"__macosx", "@eadir", "$recycle.bin", "system volume information"})
_DIGITS = re.compile(r"^\d+$")


def is_debris(name: str) -> bool:
    """Hidden files/folders, AppleDouble ``._x``, Office lock files ``~$x`` and archive debris."""
    return name.startswith((".", "~$")) or name.lower() in _DEBRIS


def is_digits(name: str) -> bool:
    return bool(_DIGITS.match(name))


def check_root(raw_root: Path | str, dataset: str) -> Path:
    """The absolute raw root; a missing path or a file is a MaedferError naming it."""
    root = Path(raw_root).expanduser()
    if not root.exists():
        raise MaedferError(
            f"{dataset}: raw folder {root} does not exist; pass the unpacked download"
        )
    if not root.is_dir():
        raise MaedferError(
            f"{dataset}: raw path {root} is a file, not a folder; unpack the archive and pass "
            "the folder it creates"
        )
    return root.resolve()


def rel(path: Path | str, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators (the ``source`` column)."""
    return Path(os.path.relpath(path, root)).as_posix()


def list_dir(path: Path) -> tuple[list[str], list[str]]:
    """(sub-folder names, file names) of ``path`` without debris, sorted; unreadable -> empty."""
    dirs, files = [], []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if is_debris(entry.name):
                    continue
                try:
                    (dirs if entry.is_dir() else files).append(entry.name)
                except OSError:
                    continue
    except OSError:
        return [], []
    return sorted(dirs), sorted(files)


def walk_files(
    root: Path, *, prune: Callable[[str], bool] | None = None
) -> Iterator[tuple[Path, str]]:
    """Every (folder, file name) under ``root`` (debris skipped, symlink loops guarded)."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(
            d for d in dirnames if not is_debris(d) and not (prune is not None and prune(d))
        )
        folder = Path(dirpath)
        for name in sorted(filenames):
            if not is_debris(name):
                yield folder, name


def find_dirs(
    root: Path,
    match: Callable[[str], bool],
    *,
    max_depth: int = 7,
    prune: Callable[[str], bool] | None = None,
    descend: bool = False,
    max_visits: int = 50_000,
) -> list[Path]:
    """Folders whose name satisfies ``match``, breadth first, shallowest first.

    A matched folder is searched further only with ``descend`` (for markers an unzip may nest
    in a same-named folder; their content can be large otherwise). Folders for which ``prune``
    is true, all-digit folders (per-clip frame folders) and debris are never entered, so the
    search stays cheap on trees with millions of frames.
    """
    found: list[Path] = []
    queue: deque[tuple[Path, int]] = deque([(root, 0)])
    visits = 0
    seen: set[str] = set()
    while queue and visits < max_visits:
        folder, depth = queue.popleft()
        visits += 1
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        for name in list_dir(folder)[0]:
            child = folder / name
            matched = match(name)
            if matched:
                found.append(child)
            if (not matched or descend) and depth + 1 < max_depth and not is_digits(name):
                if prune is None or not prune(name):
                    queue.append((child, depth + 1))
    return found


def first_file(folder: Path, exts: frozenset[str]) -> str | None:
    """Name of one file in ``folder`` with an extension in ``exts`` (stops at the first)."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if not is_debris(entry.name) and os.path.splitext(entry.name)[1].lower() in exts:
                    return entry.name
    except OSError:
        return None
    return None


def describe(folder: Path, limit: int = 8) -> str:
    """A short account of what ``folder`` holds, for 'expected X, found Y' messages."""
    dirs, files = list_dir(folder)
    names = [d + "/" for d in dirs] + files
    if not names:
        return "an empty folder"
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{len(dirs)} folder(s) and {len(files)} file(s): {shown}"


def is_lfs_pointer(path: Path) -> bool:
    """A git-LFS pointer stub instead of the media (CREMA-D's plain zip download;
    docs/datasets.md)."""
    try:
        if path.stat().st_size > 512:
            return False
        with open(path, "rb") as fh:
            return fh.read(64).startswith(b"version https://git-lfs")
    except OSError:
        return False


def norm(name: str) -> str:
    """Case- and separator-insensitive form of a folder name (``Subject 1`` ~ ``subject_1``)."""
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def dedupe(
    entries: list[ClipEntry], rank: Callable[[ClipEntry], tuple] | None = None
) -> tuple[list[ClipEntry], list[tuple[str, str, str]]]:
    """One entry per ``clip_id`` (the best by ``rank``, then shortest source); others rejected.

    Returns:
        (entries sorted by clip_id, reject rows ``(clip_id, source, "duplicate: ...")``).
    """
    by_id: dict[str, list[ClipEntry]] = {}
    for e in entries:
        by_id.setdefault(e.clip_id, []).append(e)
    kept, rejects = [], []
    for clip_id in sorted(by_id):
        group = by_id[clip_id]
        if len(group) > 1:
            group.sort(key=lambda e: ((rank(e) if rank else ()), len(e.source), e.source))
            reason = f"duplicate: same clip as {group[0].source}"
            rejects.extend((clip_id, other.source, reason) for other in group[1:])
        kept.append(group[0])
    return kept, rejects


def summarize(items: list[str], limit: int = 6) -> str:
    """``a, b, c, ... (+N more)`` for warnings that name what is missing."""
    head = ", ".join(items[:limit])
    return head + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def no_clips_error(dataset: str, root: Path, expected: str, hint: str = "") -> MaedferError:
    """The one-line refusal of a tree without the dataset's layout (docs/design.md)."""
    tail = f"; {hint}" if hint else ""
    return MaedferError(
        f"{dataset}: {root} does not look like {dataset}: expected {expected}; "
        f"found {describe(root)}{tail}"
    )


def numbered_fold_entries(
    labels: dict[int, tuple[int, int]],
    media: dict[int, Path],
    root: Path,
    classes: list[str],
    *,
    from_video: bool,
) -> tuple[list[ClipEntry], list[tuple[str, str, str]], list[str]]:
    """Join split-file labels ``{clip number: (label, fold)}`` with the clips found on disk.

    For the datasets whose clips are numbered folders or files (DFEW, MAFW). Returns the
    entries (clip id = the number, 5 digits), the rejects (a frame folder without images) and
    the ids of split clips with no media (a partial download).
    """
    entries, rejects, missing = [], [], []
    for vid in sorted(labels):
        label, fold = labels[vid]
        key = f"{vid:05d}"
        if vid not in media:
            missing.append(key)
            continue
        source = rel(media[vid], root)
        if not from_video and first_file(media[vid], IMAGE_EXTS) is None:
            rejects.append((key, source, "no frames: the frame folder holds no images"))
            continue
        entries.append(
            ClipEntry(
                clip_id=key,
                source=source,
                kind="video" if from_video else "frames",
                subject=None,
                label=label,
                label_name=classes[label],
                fold=fold,
                split=None,
            )
        )
    return entries, rejects, missing
