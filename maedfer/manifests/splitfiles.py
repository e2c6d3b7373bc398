"""Reading official split files robustly (DFEW csvs, MAFW txts, FERV39k csvs; docs/datasets.md).

Split files are the protocol: a line that cannot be read is an error naming the file and line,
never a silently dropped clip. Tolerated: a header line, a UTF-8 byte-order mark, blank lines,
Windows line ends, and ``,``/``;``/tab/space separators (spreadsheet re-saves).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from maedfer.errors import MaedferError

T = TypeVar("T")
_SEP = re.compile(r"[,;\t ]+")


def read_rows(path: Path, parse: Callable[[list[str]], T | None], expected: str) -> list[T]:
    """Parse each non-blank line of ``path`` with ``parse(fields)``.

    ``parse`` returns the row, or raises ``ValueError``/``KeyError``/``IndexError`` for a bad
    line. A first line that does not parse and holds no digit is a header and is skipped.

    Raises:
        MaedferError: the file is unreadable, or a line after the first does not parse
            (``file:line: 'text'; expected ...``).
    """
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise MaedferError(f"cannot read split file {path}: {exc.strerror}") from None
    rows: list[T] = []
    first = True
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip().strip("\ufeff")
        if not line:
            continue
        fields = [f.strip().strip("\"'") for f in _SEP.split(line) if f.strip().strip("\"'")]
        try:
            row = parse(fields)
        except (ValueError, KeyError, IndexError):
            if first and not any(ch.isdigit() for ch in line):
                first = False
                continue
            raise MaedferError(f"{path}:{lineno}: {line[:80]!r}; expected {expected}") from None
        first = False
        if row is not None:
            rows.append(row)
    return rows


def clip_number(token: str) -> int:
    """The integer id of ``00025``, ``25``, ``00025.mp4``; ValueError otherwise."""
    stem = token.rsplit("/", 1)[-1].split(".", 1)[0]
    if not stem.isdigit():
        raise ValueError(token)
    return int(stem)
