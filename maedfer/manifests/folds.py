"""Fold rules shared by the subject-independent protocols (DATASETS.md §6-§8).

CREMA-D, RAVDESS and eNTERFACE05 deal the sorted subject ids of the full corpus into consecutive
blocks; the last fold takes the remainder. The blocks are fixed by the full id list, not by the
subjects a (partial) download happens to hold, so a clip's fold never depends on what else was
downloaded. DFEW, MAFW (official split files) and FERV39k (fixed split) read their folds from the
dataset's own files in their modules.
"""

from __future__ import annotations

from collections.abc import Sequence


def block_fold(position: int, *, per_fold: int, num_folds: int) -> int:
    """Fold (1..K) of the id at 0-based ``position`` in the sorted id list.

    Consecutive blocks of ``per_fold`` ids; the last fold takes whatever remains. CREMA-D's 91
    actors with 18 per fold: positions 0-17 -> 1, ..., 72-90 -> 5 (19 actors).

    Raises:
        ValueError: a negative position or non-positive sizes (internal misuse).
    """
    if position < 0 or per_fold < 1 or num_folds < 1:
        raise ValueError(f"block_fold({position}, per_fold={per_fold}, num_folds={num_folds})")
    return min(position // per_fold + 1, num_folds)


def fold_of_id(subject: int, ids: Sequence[int], *, per_fold: int, num_folds: int) -> int | None:
    """Fold of ``subject`` within the protocol's sorted full id list; None if not in it.

    eNTERFACE05: ids 1-5, 7-44 (43), 9 per fold -> blocks 9, 9, 9, 9, 7 (subject 10 -> fold 1,
    subject 11 -> fold 2).
    """
    ordered = sorted(ids)
    try:
        position = ordered.index(subject)
    except ValueError:
        return None
    return block_fold(position, per_fold=per_fold, num_folds=num_folds)


def fold_sizes(folds: Sequence[int | None], num_folds: int) -> dict[int, int]:
    """Test-set size per fold 1..K (folds absent from ``folds`` count 0)."""
    sizes = dict.fromkeys(range(1, num_folds + 1), 0)
    for f in folds:
        if f is not None and f in sizes:
            sizes[f] += 1
    return sizes
