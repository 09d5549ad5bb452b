"""Train/validation splits: deterministic, at least one validation row, stratified for classification."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunelab.errors import DataError


def validation_count(n_rows: int, size: float) -> int:
    """Rows to hold out: ``size`` is a fraction below 1 or a row count; at least 1, at most n_rows - 1."""
    count = int(size) if size >= 1 else int(round(n_rows * size))
    return min(max(count, 1), n_rows - 1)


def split_indices(
    n_rows: int, size: float, seed: int, labels: Sequence[str] | None = None, source: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation rows.

    Args:
        n_rows: rows in the data.
        size: validation share (fraction < 1) or row count (>= 1).
        seed: split seed; the same data and seed always give the same split.
        labels: class labels, to stratify the split (classification).
        source: the data file, for error messages.

    Returns:
        (train indices, validation indices), each sorted.

    Raises:
        DataError: when there are fewer than 2 rows.
    """
    if n_rows < 2:
        raise DataError(
            f"need at least 2 rows to hold out a validation row, got {n_rows}",
            file=source,
            hint="add rows, or give a validation file with validation_strategy: custom",
        )
    count = validation_count(n_rows, size)
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n_rows)
        val = order[:count]
    else:
        val = _stratified(np.asarray(labels), count, rng)
    mask = np.zeros(n_rows, dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _stratified(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``count`` rows keeping each class's share (largest remainders), each class shuffled by ``rng``."""
    classes, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse)
    exact = sizes * count / len(labels)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: count - take.sum()]:
        take[i] += 1
    # Never take every row of a class for validation when the class has more than one row.
    take = np.minimum(take, np.maximum(sizes - 1, 1))
    chosen = []
    for cls_index, k in enumerate(take):
        members = np.flatnonzero(inverse == cls_index)
        chosen.append(rng.permutation(members)[:k])
    picked = np.concatenate(chosen) if chosen else np.array([], dtype=int)
    if len(picked) < count:  # rounding left a gap: fill from the rest at random
        rest = np.setdiff1d(np.arange(len(labels)), picked)
        picked = np.concatenate([picked, rng.permutation(rest)[: count - len(picked)]])
    return picked


def sample_indices(indices: np.ndarray, size: float, seed: int) -> set[int]:
    """A deterministic random part of ``indices``: ``size`` is a fraction up to 1 or a whole row count above 1.

    At least one index is kept; the same indices, size and seed always give the same sample.
    """
    keep = int(size) if size > 1 else max(int(round(len(indices) * size)), 1)
    rng = np.random.default_rng(seed)
    return set(rng.permutation(indices)[:keep].tolist())
