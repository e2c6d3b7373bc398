"""The training clips a run found missing or undecodable: ``RUN/bad_clips.json``.

A faulty training clip is replaced by another sample (the loaders' contract,
:mod:`maedfer.pipelines.backend`) and counted; the run records every one it met here, with its
reason, at the end of each epoch and when it stops for too many of them (``data.max_bad_share``,
:class:`maedfer.pipelines.loader.TooManyBadClips`). A resumed run adds to the same file, so the
count in ``report.json`` (``bad_train_clips``) and in the summary covers the whole run.

Documented in docs/runs.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maedfer.atomic import write_text

BAD_CLIPS = "bad_clips.json"


def read(run_dir: Path) -> dict[str, str]:
    """The faulty clips recorded so far (file -> reason); empty when none."""
    try:
        data = json.loads((Path(run_dir) / BAD_CLIPS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    clips = data.get("clips") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in clips.items()} if isinstance(clips, dict) else {}


def record(
    run_dir: Path,
    found: Mapping[str, str],
    *,
    train_clips: int,
    max_bad_share: float | None,
    stopped: bool = False,
) -> Path | None:
    """Add ``found`` (file -> reason) to ``RUN/bad_clips.json``; None when nothing is to say."""
    clips = read(run_dir)
    if not found and not clips:
        return None
    new = {k: v for k, v in found.items() if k not in clips}
    if not new and not stopped:
        return Path(run_dir) / BAD_CLIPS
    clips.update(new)
    document: dict[str, Any] = {
        "bad_clips": len(clips),
        "train_clips": int(train_clips),
        "share": round(len(clips) / max(int(train_clips), 1), 6),
        "max_bad_share": max_bad_share,
        "stopped": bool(stopped),
        "clips": dict(sorted(clips.items())),
    }
    path = Path(run_dir) / BAD_CLIPS
    write_text(path, json.dumps(document, indent=2) + "\n")
    return path


def count(run_dir: Path) -> int:
    return len(read(run_dir))


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The summary's line on faulty training clips (none when there were none)."""
    n = result.get("bad_train_clips") or 0
    if not n:
        return []
    return [
        f"  faulty training clips: {n} replaced by other samples (listed in "
        f"{Path(result['out']) / BAD_CLIPS})"
    ]
