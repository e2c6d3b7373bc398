"""The one exception type the library raises for bad input; ``cli.py`` turns it into one line."""

from __future__ import annotations

import errno


class MaedferError(Exception):
    """A user-facing error with a one-line message: what was wrong, the value, what is allowed."""


class NotAvailableYet(MaedferError):
    """A command whose implementation has not landed yet (the CLI exits 2 on it)."""


# Failures of the machine rather than of the input: a re-run may succeed once they are fixed, so
# they are never recorded as a verdict on a clip (prepare retries them; DESIGN.md §4).
ENVIRONMENTAL_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EACCES", "EPERM", "EROFS", "EIO", "ENOMEM", "EMFILE",
                 "ENFILE", "EAGAIN", "EBUSY", "ETIMEDOUT", "ESTALE", "ENOLCK", "EINTR")
    if hasattr(errno, name)
)  # fmt: skip


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
