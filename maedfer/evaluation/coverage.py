"""Whether a test set was scored whole: the test clips expected, those scored, those missing.

The loaders replace a clip whose file is missing or cannot be decoded by another sample (training
must go on), so such a test clip never reaches the predictions. Without a count, a test set that
shrank would be scored as if complete, perhaps with a class gone from the UAR. The fine-tuning
recipe writes the counts into ``report.json`` (``clips_expected``, ``clips_scored``,
``missing_clips``, ``complete``) and prints them; ``maedfer evaluate`` reads them back and flags
the run.

Documented in docs/runs.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Clip ids named in a printed line; ``report.json`` lists every one.
SHOWN = 5


def coverage_keys(expected: Sequence[str], scored: Iterable[str]) -> dict[str, Any]:
    """The coverage keys of ``report.json`` for one test run.

    Args:
        expected: the test clip ids the manifest selects (fold or split), all ranks.
        scored: the clip ids that made it into the predictions.

    Returns:
        ``clips_expected``, ``clips_scored``, ``missing_clips`` (sorted, complete) and
        ``complete`` (nothing missing).
    """
    expected_ids, scored_ids = set(expected), set(scored)
    missing = sorted(expected_ids - scored_ids)
    return {
        "clips_expected": len(expected_ids),
        "clips_scored": len(scored_ids),
        "missing_clips": missing,
        "complete": not missing,
    }


def run_coverage(report: Mapping[str, Any], num_scored: int) -> dict[str, Any]:
    """Coverage of a finished run from its ``report.json`` and its predictions' row count.

    ``complete`` is ``None`` when the report does not say how many clips were expected (a run
    written before these keys existed, or by another tool). The predictions are the truth for
    what was scored: a report listing no missing clip but more expected than scored is
    incomplete all the same.
    """
    expected = report.get("clips_expected")
    if expected is None:
        return {
            "complete": None,
            "clips_expected": None,
            "clips_scored": num_scored,
            "missing_clips": None,
            "num_missing": None,
        }
    missing = [str(c) for c in report.get("missing_clips") or []]
    num_missing = max(len(missing), int(expected) - num_scored)
    return {
        "complete": num_missing == 0,
        "clips_expected": int(expected),
        "clips_scored": num_scored,
        "missing_clips": missing,
        "num_missing": num_missing,
    }


def describe_missing(num_missing: int, expected: int, missing: Sequence[str] = ()) -> str:
    """One phrase, e.g. ``40 of 160 test clips were not scored (files missing or undecodable):
    c0_01, c0_03, c1_00, c1_07, c2_02 and 35 more``."""
    text = f"{num_missing} of {expected} test clips were not scored (files missing or undecodable)"
    if missing:
        shown = ", ".join(missing[:SHOWN])
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        text += f": {shown}{more}"
    return text
