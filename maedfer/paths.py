"""The one path rule of every table and manifest: inside its root, normalised, never user text.

A labels table (``prepare folder --labels``) names videos relative to ``--raw``; a manifest
names clips relative to its folder; ``prepare`` writes clips under ``--out``. Every one of
those paths goes through this module:

- :func:`under_root` turns what a table or manifest says into a normalised path relative to
  its root (``P1/./a.mp4`` and ``P1/x/../a.mp4`` are ``P1/a.mp4``, so one file is one row), and
  refuses one that leaves the root (``../raw/P2/v2.mp4``, ``/etc/passwd``). The test is on the
  path as written, not on where symlinks lead: a file symlinked into the root is inside it,
  as a symlinked raw folder is.
- :func:`output_path` is where an output goes under ``--out``: from a clip *key* that was
  itself derived from a normalised path, checked again to stay under ``--out`` before anything
  is written (a key is never joined as user text).

Documented in docs/design.md, "Wings".
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath

from maedfer.errors import MaedferError


class OutsideRoot(MaedferError):
    """A path that leaves the folder it must stay in."""


def _normal(text: str) -> str:
    """``text`` with ``/`` separators, ``.`` and ``x/..`` folded; ``..`` left at the front."""
    return posixpath.normpath(text.replace("\\", "/"))


def under_root(value: str | os.PathLike[str], root: Path, *, what: str) -> str:
    """``value`` as a normalised POSIX path relative to ``root``.

    Args:
        value: a relative path (to ``root``) or an absolute one (that must lie under ``root``,
            as written or through the real path of its folder).
        root: the folder the path must stay in.
        what: how the error names the value (``labels.csv line 3: path``).

    Raises:
        OutsideRoot: the path leaves ``root`` or is empty.
    """
    text = os.fspath(value).strip()
    if not text:
        raise OutsideRoot(f"{what} is empty")
    if os.path.isabs(text):
        rel = _relative_absolute(Path(text), Path(root))
        if rel is None:
            raise OutsideRoot(
                f"{what} {text} is not under {root}; give a path inside it "
                "(relative to it, or absolute below it)"
            )
        return rel
    rel = _normal(text)
    if rel == "." or rel == ".." or rel.startswith("../"):
        raise OutsideRoot(
            f"{what} {text} leads outside {root}; paths must stay inside it (no '..' above it)"
        )
    return rel


def _relative_absolute(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` as written (both normalised, symlinks not followed), or
    through the real path of ``path``'s folder and ``root``'s (a root reached by a symlink);
    None when it is under neither. The file itself is never resolved: a symlink to a file
    elsewhere, placed in the root, is in the root."""
    candidates = [(Path(_normal(str(path))), Path(_normal(str(root.absolute()))))]
    real_root = Path(os.path.realpath(root))
    candidates.append((Path(os.path.realpath(path.parent)) / path.name, real_root))
    for candidate, base in candidates:
        try:
            rel = candidate.relative_to(base).as_posix()
        except ValueError:
            continue
        if rel not in ("", "."):
            return rel
    return None


def output_path(out: Path, relative: str, *, what: str = "output") -> Path:
    """``out / relative`` after checking that it stays under ``out``.

    Raises:
        OutsideRoot: ``relative`` is absolute or climbs out of ``out`` (a key that was not
            derived from a normalised path: a bug upstream, refused before writing).
    """
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise OutsideRoot(
            f"{what} {relative!r} would be written outside {out}; nothing was written"
        )
    return Path(out) / Path(*pure.parts)
