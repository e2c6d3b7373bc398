"""Atomic file output that honours the umask: the one way maedfer writes a finished file.

A file is written under a temporary name in its own folder and renamed into place when
complete, so a crash or a full disk never leaves a half-written file under the final name. A
write that fails (a full disk, a lost permission: an ``OSError``, torch's ``RuntimeError``, a
``SafetensorError``) is raised as :class:`maedfer.errors.OutputError` naming the final file, never
the temporary one.
``tempfile.mkstemp`` creates its file owner-only (0600) whatever the umask; the file gets the
mode an ordinary ``open(path, "w")`` would give it (0666 minus the umask) before the rename, so
teammates on a shared disk can read what a run wrote.

Documented in docs/design.md, "Wings".
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from maedfer.errors import MaedferError, OutputError, output_failure

_TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (thread-safe on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not atomic, but brief)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it becomes `path`, else it is removed.

    Args:
        path: the final file; its folder is created if needed.
        fsync: flush the file to the disk before the rename (checkpoints: a power cut keeps
            the previous one).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise output_failure(path, exc) from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        failure = output_failure(path, exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str | os.PathLike[str], *, what: str, folder: bool = False) -> None:
    """Fail now, in one line, where ``path`` (a file, or with ``folder`` a folder of files)
    cannot be written: before the work whose results would go there, not after it. Creates
    the folders on the way, as the write would.

    Raises:
        OutputError: the folder cannot be made or written (permission, read-only, full).
        MaedferError: a file is asked for where a folder is, or the other way round.
    """
    path = Path(path)
    where = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise MaedferError(f"{what} {path} is a file; give a folder for several outputs")
    if not folder and path.is_dir():
        raise MaedferError(f"{what} {path} is a folder; give a file name")
    existing = next((p for p in (where, *where.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(path, f"{existing} is a file, not a folder", errno.ENOTDIR)
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".maedfer-check-", dir=where)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputError(path, exc.strerror or str(exc), exc.errno) from None


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_path`)."""
    write_bytes(path, text.encode("utf-8"))


# A temporary name of atomic_path: ".<final name>.<8 random characters>.tmp" (mkstemp).
_STALE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(_TEMP_SUFFIX) + "$")


def remove_stale(folder: str | os.PathLike[str]) -> int:
    """Delete the temporary files a killed writer left in ``folder`` (not below it); the
    caller holds the folder's lock (:mod:`maedfer.lock`), so none of them is being written.

    Returns:
        How many were removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if _STALE.match(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed


# --------------------------------------------------------------------------- whole folders

_PARTIAL, _READY, _OLD = ".partial-", ".ready-", ".old-"
_RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths atomically (Linux 3.15+)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step where the kernel and file system can (False: cannot)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def _siblings(path: Path, mark: str) -> list[Path]:
    prefix = f".{path.name}{mark}"
    try:
        return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


def recover_folder(path: str | os.PathLike[str]) -> None:
    """Settle what a folder swap killed part-way left beside ``path`` (:func:`atomic_folder`):
    a checked new folder that never got its name gets it, an old one set aside comes back
    when nothing took its place, every other leftover is deleted. Needs the folder's lock."""
    path = Path(path)
    if not path.exists():
        for mark in (_READY, _OLD):  # the newest complete content first
            found = _siblings(path, mark)
            if found:
                os.replace(found[-1], path)
                break
    for mark in (_PARTIAL, _READY, _OLD):
        for leftover in _siblings(path, mark):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; when the block ends without an error it
    replaces ``path`` whole, else it is deleted and ``path`` stays as it was.

    For a bundle of files that must match (an export's model and its ``inference.json``): the
    block writes them and runs their checks; nothing of a failed or killed export is ever seen
    under ``path``. The swap is one ``renameat2(RENAME_EXCHANGE)`` where the file system has
    it, else two renames through a name that :func:`recover_folder` (run first, here) settles
    after a kill. The caller holds ``path``'s lock (:mod:`maedfer.lock`).
    """
    path = Path(path)
    recover_folder(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{_PARTIAL}", dir=path.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as exc:
        raise output_failure(path, exc) from exc
    try:
        yield tmp
        ready = tmp.with_name(tmp.name.replace(_PARTIAL, _READY, 1))
        os.replace(tmp, ready)
        if not path.exists():
            os.replace(ready, path)
        elif _exchange(ready, path):
            shutil.rmtree(ready)  # now the old content
        else:
            old = tmp.with_name(tmp.name.replace(_PARTIAL, _OLD, 1))
            os.replace(path, old)
            os.replace(ready, path)
            shutil.rmtree(old)
    except Exception as exc:
        failure = output_failure(path, exc)
        if failure is None:
            raise
        inner = Path(failure.path)
        if inner.is_relative_to(tmp):  # name the file where it was going, not the temporary
            failure = OutputError(path / inner.relative_to(tmp), failure.reason, failure.errno)
        raise failure from exc
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name.replace(_PARTIAL, _READY, 1))):
            if leftover.exists() and leftover != path:
                shutil.rmtree(leftover, ignore_errors=True)
