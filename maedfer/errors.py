"""The one exception type the library raises for bad input; the command line turns it into one
line (:func:`maedfer.cli.common.failures`).

Documented in docs/design.md, "Wings".
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path


class MaedferError(Exception):
    """A user-facing error with a one-line message: what was wrong, the value, what is allowed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, ``timeout``), raised like Ctrl-C so that the same clean-up runs
    (workers stopped, finished work kept); the command line exits 143 on it."""


# Failures of the machine rather than of the input: a re-run may succeed once they are fixed, so
# they are never recorded as a verdict on a clip (prepare retries them; docs/design.md).
ENVIRONMENTAL_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC",
        "EDQUOT",
        "EACCES",
        "EPERM",
        "EROFS",
        "EIO",
        "ENOMEM",
        "EMFILE",
        "ENFILE",
        "EAGAIN",
        "EBUSY",
        "ETIMEDOUT",
        "ESTALE",
        "ENOLCK",
        "EINTR",
    )
    if hasattr(errno, name)
)


def is_environmental(exc: BaseException) -> bool:
    """True for an OS error of the environment (full disk, permission, I/O, memory, ...)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENTAL_ERRNOS


def os_error_line(exc: OSError) -> str:
    """``cannot write /x/y: Permission denied`` style: the file and the OS's reason, one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename if exc.filename is not None else ""
    return f"{name}: {reason}" if name else reason


# ---------------------------------------------------------------- the CLI's one-line funnel
# Everything below turns a failure that is not a MaedferError into the one line the command
# line prints (maedfer.cli.common.failures): the file, the reason, what to do. The library
# raises what it meets; the wording lives here, once.

_NO_SPACE = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT") if hasattr(errno, n))
_NO_PERMISSION = frozenset(
    getattr(errno, n) for n in ("EACCES", "EPERM", "EROFS") if hasattr(errno, n)
)
# Texts of writers that report a failed write as a RuntimeError or their own error type:
# torch's zip writer ("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534",
# "PytorchStreamWriter failed writing file data/0: file write failed"), safetensors' Rust I/O
# error ("Error while serializing: I/O error: No space left on device (os error 28)").
_IO_TEXTS = (
    "inline_container",
    "PytorchStreamWriter",
    "PytorchStreamReader",
    "file write failed",
    "unexpected pos",
    "I/O error",
    "IoError",
    "os error",
)
_OS_ERROR = re.compile(r"(?:I/O error: |message: \")([^\"(]+?)\s*(?:\(os error (\d+)\)|\")")


class OutputError(MaedferError, OSError):
    """A file that could not be written, named by its final path (never a temporary name).

    It is an ``OSError`` with the errno of the failure where one is known, so code that tells
    a failure of the machine from bad input (``is_environmental``) reads it as before.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, err: int | None = None) -> None:
        OSError.__init__(self, err, reason, str(path))
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}; {what_to_do(self.errno)}"


def what_to_do(err: int | None) -> str:
    """The advice that ends a line about a failure of the machine, by its errno."""
    if err in _NO_SPACE:
        return (
            "free space on that disk (or choose another folder), then run the same command "
            "again: finished work is kept"
        )
    if err in (errno.EEXIST, errno.ENOTDIR):
        return "choose a folder whose path runs through folders only"
    if err in _NO_PERMISSION:
        return (
            "make that folder writable for you (or choose another one), then run the same "
            "command again"
        )
    return "check that disk and folder, then run the same command again: finished work is kept"


def io_failure(exc: BaseException) -> tuple[str, int | None] | None:
    """``(reason, errno)`` when ``exc`` is a failed read or write in any of the forms libraries
    raise it (OSError, torch's RuntimeError, SafetensorError); None for anything else."""
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc) or type(exc).__name__), exc.errno
    if not (isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError"):
        return None
    text = str(exc)
    if not any(marker in text for marker in _IO_TEXTS):
        return None
    found = _OS_ERROR.search(text)
    if found:
        err = int(found.group(2)) if found.group(2) else None
        return found.group(1).strip(), err
    return "the write failed part-way (a full disk or a lost file system?)", None


def output_failure(path: str | os.PathLike[str], exc: BaseException) -> OutputError | None:
    """``exc`` met while writing ``path`` as an :class:`OutputError` naming ``path``; None when
    ``exc`` is not an I/O failure (a bug or bad input: raised as it is)."""
    if isinstance(exc, OutputError):
        return exc
    found = io_failure(exc)
    if found is None:
        return None
    reason, err = found
    if err is None and _disk_full(Path(path)):
        reason, err = "No space left on device", errno.ENOSPC
    if err in (errno.EEXIST, errno.ENOTDIR):  # a folder could not be made: say what is there
        in_the_way = next((p for p in Path(path).parents if p.exists()), None)
        if in_the_way is not None and not in_the_way.is_dir():
            reason = f"{in_the_way} is a file, not a folder"
    return OutputError(path, reason, err)


def _disk_full(path: Path) -> bool:
    """Less than 1 MiB left on the file system of ``path`` (a writer that said nothing more
    than "unexpected pos" ran out of room)."""
    for folder in (path.parent, *path.parents):
        try:
            return shutil.disk_usage(folder).free < 1 << 20
        except OSError:
            continue
    return False


_WORKER_CAUGHT = re.compile(r"Caught (\w+) in DataLoader worker process \d+")
_WORKER_DIED = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) "
    r"(?:is killed by signal: ([^.]+)|exited unexpectedly)"
)


def worker_failure(exc: BaseException) -> str | None:
    """One line for a failure inside a data loader's worker process, or None.

    torch re-raises a worker's exception in the main process with the worker's whole traceback
    in its message; the last line of it is what went wrong. A worker that was killed (out of
    memory) is said so, with what to change.
    """
    text = str(exc)
    caught = _WORKER_CAUGHT.search(text)
    if caught:
        last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
        name = caught.group(1)
        message = last.split(f"{name}: ", 1)[-1] if f"{name}: " in last else last
        if isinstance(exc, MaedferError) or name in _maedfer_errors():
            return message  # (one whose constructor takes other arguments comes as a
            # RuntimeError: known by its name)
        if isinstance(exc, OSError):  # re-raised without its errno: read it from the text
            code = re.match(r"\[Errno (\d+)\]", message)
            return f"{message}; {what_to_do(int(code.group(1)) if code else None)}"
        return None  # a bug in a worker: reported as unexpected, with its traceback kept
    died = _WORKER_DIED.search(text)
    if died:
        how = f"was killed ({died.group(2)})" if died.group(2) else "exited unexpectedly"
        pid = died.group(1).strip()
        return (
            f"a data loader worker process (pid {pid}) {how}, most likely out of "
            "memory: lower data.workers or data.batch_size (--set KEY=VALUE), then run "
            "the same command again (it resumes from the last checkpoint)"
        )
    return None


def _maedfer_errors() -> set[str]:
    names, todo = set(), [MaedferError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def one_line(exc: BaseException) -> str | None:
    """The one line the command line prints for ``exc`` when it is a failure of the machine,
    of a worker or of a write (see the functions above); None for anything else."""
    if isinstance(exc, OutputError):
        return str(exc)
    worker = worker_failure(exc)
    if worker is not None:
        return worker
    found = io_failure(exc)
    if found is None:
        return None
    reason, err = found
    name = getattr(exc, "filename", None)
    where = f"{name}: " if name else ""
    return f"{where}{reason}; {what_to_do(err)}"
