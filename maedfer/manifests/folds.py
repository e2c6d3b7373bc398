"""Fold rules shared by the subject-independent protocols (docs/datasets.md) and ``folder``.

CREMA-D, RAVDESS and eNTERFACE05 deal the sorted subject ids of the full corpus into consecutive
blocks; the last fold takes the remainder. The blocks are fixed by the full id list, not by the
subjects a (partial) download happens to hold, so a clip's fold never depends on what else was
downloaded. DFEW, MAFW (official split files) and FERV39k (fixed split) read their folds from the
dataset's own files in their modules. A ``folder`` dataset without a split builds its folds
with ``subject_folds`` (subject-independent, stratified) or, without subjects,
``stratified_folds``.
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


def subject_folds(
    subjects: Sequence[str],
    labels: Sequence[int],
    *,
    num_folds: int,
    num_classes: int,
    seed: int = 0,
) -> dict[str, int]:
    """Subject-independent, stratified folds: subject -> fold (1..K), every subject in one fold.

    Greedy, like scikit-learn's ``StratifiedGroupKFold``: subjects are taken largest first (a
    permutation drawn from ``seed`` orders subjects of equal size), each into the fold where the
    squared distance of the folds' class counts from their targets (total / K per class) grows
    least; ties go to the fold with fewest clips, then the lowest number. The class proportions
    are then as even as whole subjects allow, and the folds a function of the clips and the
    seed alone. Worked example: subjects with (class 0, class 1) counts a=(4,0), b=(0,4),
    c=(2,2), d=(2,2), taken in that order into 2 folds, targets (4, 4): a -> 1 (a tie, the
    lowest fold), b -> 2 (equal growth, fewer clips), c -> 1, d -> 2: folds (6, 2) and (2, 6).
    Greedy alone is not optimal ({a, b}, {c, d} would be (4, 4) twice): moves of one subject
    and swaps of two then lower the same cost while they can (``_refine``), which finds that
    split here and, on real tables, comes within a subject's clips of every target.

    Args:
        subjects: one subject id per clip; labels: its class index (0..C-1).
        num_folds: K; num_classes: C; seed: orders subjects of equal size.

    Raises:
        ValueError: fewer subjects than folds (the caller words it for the user).
    """
    import numpy as np

    ids = sorted(set(subjects))
    if len(ids) < num_folds:
        raise ValueError(f"{len(ids)} subject(s) for {num_folds} folds")
    position = {s: i for i, s in enumerate(ids)}
    counts = np.zeros((len(ids), num_classes), dtype=np.int64)
    for s, y in zip(subjects, labels, strict=True):
        counts[position[s], y] += 1
    totals = counts.sum(0)
    target = totals / num_folds
    weight = 1.0 / np.maximum(target, 1.0)  # relative errors: rare classes count as much
    order = np.random.default_rng(seed).permutation(len(ids))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    folds = np.zeros((num_folds, num_classes), dtype=np.float64)
    where = np.zeros(len(ids), dtype=np.int64)
    for i in order:
        c = counts[i]
        before = (((folds - target) ** 2) * weight).sum(1)
        after = (((folds + c - target) ** 2) * weight).sum(1)
        growth = after - before
        sizes = folds.sum(1)
        best = min(range(num_folds), key=lambda f: (round(growth[f], 9), sizes[f], f))
        folds[best] += c
        where[i] = best
    _refine(counts, where, folds, target, weight)
    return {ids[i]: int(where[i]) + 1 for i in range(len(ids))}


def _refine(counts, where, folds, target, weight, *, passes: int = 20, max_swaps: int = 2000):
    """Improve greedy folds in place: move one subject to another fold, or swap two subjects
    of different folds, wherever that lowers the cost, in a fixed order, until no change
    helps (or ``passes`` rounds). Swaps are tried for up to ``max_swaps`` subjects (their
    number grows with the square)."""
    import numpy as np

    def cost(row: np.ndarray) -> float:
        return float((((row - target) ** 2) * weight).sum())

    n, k = len(where), len(folds)
    for _ in range(passes):
        changed = False
        for i in range(n):
            a = where[i]
            if (where == a).sum() == 1:
                continue  # a fold keeps at least one subject
            for b in range(k):
                if b == a:
                    continue
                old = cost(folds[a]) + cost(folds[b])
                new = cost(folds[a] - counts[i]) + cost(folds[b] + counts[i])
                if new < old - 1e-9:
                    folds[a] -= counts[i]
                    folds[b] += counts[i]
                    where[i], a, changed = b, b, True
        if n <= max_swaps:
            for i in range(n):
                for j in range(i + 1, n):
                    a, b = where[i], where[j]
                    if a == b:
                        continue
                    d = counts[j] - counts[i]
                    old = cost(folds[a]) + cost(folds[b])
                    new = cost(folds[a] + d) + cost(folds[b] - d)
                    if new < old - 1e-9:
                        folds[a] += d
                        folds[b] -= d
                        where[i], where[j], changed = b, a, True
        if not changed:
            return


def stratified_folds(
    keys: Sequence[str], labels: Sequence[int], *, num_folds: int, seed: int = 0
) -> dict[str, int]:
    """Clip-level stratified folds (no subjects): key -> fold (1..K).

    Each class's keys (sorted, then permuted by ``seed``) are dealt into the folds in turn,
    the deal continuing from class to class, so every fold gets ``n_c / K`` (rounded) clips of
    each class and the fold sizes differ by at most one. Not subject-independent.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {}
    for key, y in sorted(zip(keys, labels, strict=True)):
        by_class.setdefault(int(y), []).append(key)
    out: dict[str, int] = {}
    turn = 0
    for y in sorted(by_class):
        members = by_class[y]
        for j in rng.permutation(len(members)):
            out[members[j]] = turn % num_folds + 1
            turn += 1
    return out
