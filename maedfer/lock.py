"""One advisory lock per output folder: one maedfer command writes into a folder at a time.

Every command that writes a folder (``prepare --out``, a training run's folder, ``protocol
--out``, ``export --out``, ``evaluate --checkpoint --out``, ``demo --out``) holds the lock of
that folder for its whole life: a second command into the same folder is refused in one line
naming the holder's host and pid, instead of both writing and the folder ending with one run's
model beside the other's report.

- The lock is ``fcntl.lockf`` on a small hidden file beside the folder,
  ``PARENT/.FOLDER.maedfer.lock``, so the folder itself is not touched (a finished run stays
  byte for byte as it was, an export's folder is replaced whole); inside it,
  ``FOLDER/.maedfer.lock``, where the parent is not writable. POSIX record locks are released
  by the kernel when their process ends, however it ends (a kill, the OOM killer): nothing
  stale is ever left to clean up, and the file stays (removing it would race with the next
  holder). They are not inherited by child processes (loader workers cannot keep a dead run's
  folder locked), and they work over NFS (the kernel's lock manager).
- A file system that refuses locks (``ENOLCK``, ``EOPNOTSUPP``) is said in one warning line:
  the command goes on without the guarantee rather than not at all.
- Shards of ``prepare`` (``--shard i/N``) write one folder together: each holds the folder's
  lock *shared* and its own shard's lock (``.FOLDER.maedfer.shard-i-of-N.lock``) exclusively, so
  shards run side by side while an unsharded run, a merge, or the same shard twice is refused.
- Within one process a folder can be held again (the protocol holds its folder while the
  fold it runs holds the fold's); the lock goes when the outermost holder releases it.

Documented in docs/design.md, "Wings".
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from maedfer.errors import MaedferError, output_failure

log = logging.getLogger(__name__)

LOCK_NAME = ".maedfer.lock"
#: The attribute an exception leaving :func:`hold` carries: the folder it was writing into.
WRITING_INTO = "maedfer_writing_into"
# errnos of a file system that does not do locks (as opposed to one held by someone else)
_NO_LOCKS = frozenset(
    getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOSYS", "EINVAL") if hasattr(errno, n)
)
_HELD = frozenset({errno.EAGAIN, errno.EACCES})


class FolderInUse(MaedferError):
    """Another process holds the folder's lock."""


@dataclass
class _Held:
    handle: object  # the open lock file (closing it releases the lock)
    count: int
    folder: Path


_held: dict[str, _Held] = {}  # lock file (real path) -> what this process holds


def lock_file(folder: Path, *, shard: str | None = None) -> Path:
    """Where the lock of ``folder`` lives: beside it, ``PARENT/.NAME.maedfer.lock`` (the real
    path's, so two spellings of one folder share one lock); inside it, ``FOLDER/.maedfer.lock``,
    where the parent is not writable. ``shard``: that shard's own lock."""
    real = Path(os.path.realpath(folder))
    tail = f".maedfer.{shard}.lock" if shard else LOCK_NAME
    if real.parent != real and os.access(real.parent, os.W_OK):
        return real.parent / f".{real.name}{tail}"
    return real / tail


def _command() -> str:
    """``maedfer finetune``, ``maedfer prepare ravdess``: the command and its first argument."""
    words = ["maedfer"]
    for word in sys.argv[1:3]:
        if word.startswith("-"):
            break
        words.append(word)
    return " ".join(words)


def _holder() -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": _command(),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another maedfer command"
    return (
        f"{info.get('command', 'maedfer')} (pid {info['pid']} on {info.get('host', '?')}, "
        f"since {info.get('since', '?')})"
    )


def _open(path: Path) -> object:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open: the lock lives on it)
    except OSError as exc:
        raise output_failure(path, exc) or exc from exc


def _acquire(path: Path, folder: Path, *, shared: bool, what: str) -> bool:
    """Take the lock in ``path``; False where the file system does not do locks."""
    key = os.path.realpath(path)
    if key in _held:
        _held[key].count += 1
        return True
    handle = _open(path)
    try:
        fcntl.lockf(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _HELD:
            holder = _shared_holders(handle) if not shared else None
            handle.close()
            raise FolderInUse(
                f"{folder} is in use by {holder or _describe_holder(path)}; wait for it to "
                f"end, or {what}"
            ) from None
        handle.close()
        if exc.errno in _NO_LOCKS:
            log.warning(
                "cannot lock %s (its file system does not support locks: %s): make sure "
                "no other maedfer command writes into it at the same time",
                folder,
                exc.strerror,
            )
            return False
        raise output_failure(path, exc) or exc from exc
    if not shared:  # say who holds it, for the one line a second command prints
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder()) + "\n")
        handle.flush()
    _held[key] = _Held(handle, 1, folder)
    return True


def _shared_holders(handle: object) -> str | None:
    """When the lock is held shared (shards of prepare), say so; None when held exclusively."""
    try:
        fcntl.lockf(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return None
    fcntl.lockf(handle, fcntl.LOCK_UN)
    return (
        "shard runs of `maedfer prepare --shard` (their .maedfer.shard-*.lock files beside "
        "the folder)"
    )


def _release(path: Path) -> None:
    key = os.path.realpath(path)
    held = _held.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count == 0:
        del _held[key]
        held.handle.close()  # the kernel drops the lock with the last descriptor


@contextlib.contextmanager
def hold(
    folder: str | os.PathLike[str], *, what: str = "choose another --out", shard: str | None = None
) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (created with its folder if needed).

    Args:
        folder: the output folder.
        what: the other way out, ending the refusal's line (``choose another --out``).
        shard: ``shard-i-of-N``: hold the folder shared and this shard's lock exclusively.

    Raises:
        FolderInUse: another process holds it (one line naming the holder's host and pid).
    """
    folder = Path(folder).expanduser().absolute()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_failure(folder, exc) or exc from exc
    main = lock_file(folder)
    taken = []
    try:
        if _acquire(main, folder, shared=shard is not None, what=what):
            taken.append(main)
        if shard is not None:
            own = lock_file(folder, shard=shard)
            if _acquire(own, folder, shared=False, what=what):
                taken.append(own)
        try:
            yield
        except Exception as exc:
            # the folder being written, for a failure that names no file (a full disk met by
            # a write that kept no name): the command line's one line says where it was
            if getattr(exc, WRITING_INTO, None) is None:
                with contextlib.suppress(AttributeError):
                    setattr(exc, WRITING_INTO, folder)
            raise
    finally:
        for path in reversed(taken):
            _release(path)


class RunLock:
    """:func:`hold` as an object for code that takes and releases it in separate places (a
    recipe's ``setup()`` and ``cleanup()``)."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    def take(self, folder: str | os.PathLike[str], **options: object) -> None:
        if self._stack is not None:
            return
        stack = contextlib.ExitStack()
        stack.enter_context(hold(folder, **options))
        self._stack = stack

    def release(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
