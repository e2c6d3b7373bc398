"""Helper processes that end with the process they work for, however it ends.

``prepare --workers N`` runs its clips in processes forked from a fork server, and Python's
resource tracker watches them. When the main process is killed (SIGKILL, the OOM killer, a
plain ``kill PID``: Python does not clean up on SIGTERM), nothing tells those helpers: they
used to stay, forever. Each helper therefore holds a *lifeline* on the main process:

- :func:`die_with` (in every worker, from its initializer): a daemon thread waits on a pidfd
  of the main process (Linux 5.3+; elsewhere it polls twice a second) and ends the helper the
  moment the main process is gone; the worker also asks the kernel for SIGKILL when its parent,
  the fork server, goes (``PR_SET_PDEATHSIG``);
- the fork server imports this module first (``preload``): with :data:`ENV` naming its
  parent, the import alone starts the same watch there;
- the resource tracker reads a pipe that only these processes hold open: when they are gone
  it reaches end-of-file and exits by itself.

A forked process keeps no thread of its parent, so the watch runs where it was started only.

Documented in docs/design.md, "Wings".
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading
import time
from collections.abc import Iterator

from maedfer.errors import Terminated

#: Set by the process that starts a fork server to its own pid; read by this module when the
#: fork server imports it.
ENV = "MAEDFER_LIFELINE_PID"
_PR_SET_PDEATHSIG = 1
_EXIT = 128 + signal.SIGTERM  # as if terminated with its parent


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _watch(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(_EXIT)
    except (OSError, AttributeError):  # an older kernel or another OS: poll
        while not _gone(pid):
            time.sleep(0.5)
        os._exit(_EXIT)
    select.select([fd], [], [])  # readable once the process has ended
    os._exit(_EXIT)


def die_with(pid: int, *, parent_too: bool = True) -> None:
    """End this process (at once, no clean-up: it works for ``pid`` only) when ``pid`` ends.

    Args:
        pid: the process this one works for.
        parent_too: also ask the kernel for SIGKILL when this process's parent thread ends
            (``PR_SET_PDEATHSIG``; a fork server's children, whose parent is the server).
    """
    if pid == os.getpid():
        return
    if parent_too:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if _gone(pid):
        os._exit(_EXIT)
    threading.Thread(target=_watch, args=(pid,), name="maedfer-lifeline", daemon=True).start()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block (main thread), SIGTERM raises :class:`maedfer.errors.Terminated`, so a
    ``kill PID`` stops the helpers and keeps finished work as Ctrl-C does, where Python's
    default would end the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _from_environment() -> None:
    """In a fork server started by the process :data:`ENV` names: hold a lifeline on it."""
    text = os.environ.get(ENV, "")
    if text.isdigit() and int(text) != os.getpid() and os.getppid() == int(text):
        die_with(int(text), parent_too=False)  # its parent thread may be a short-lived one


_from_environment()
