"""Tokenised splits stored as flat arrays (one buffer of ids, one of labels, offsets per row).

Flat arrays keep memory small, save and load as a single file, and make batching a few numpy slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class EncodedSplit:
    """Token ids (and per-token labels or one target per row) of every row of a split.

    Args:
        input_ids: all rows' ids concatenated.
        offsets: ``offsets[i]:offsets[i+1]`` is row i.
        labels: per-token labels aligned with ``input_ids`` (causal LM), or None.
        targets: one class index per row (classification), or None.
        rows: each row's number in its source file (for reports).
    """

    def __init__(
        self,
        input_ids: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ):
        self.input_ids = input_ids
        self.offsets = offsets
        self.labels = labels
        self.targets = targets
        self.rows = rows if rows is not None else np.arange(1, len(offsets))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """Tokens per row."""
        return np.diff(self.offsets)

    def ids(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    def token_labels(self, i: int) -> np.ndarray:
        assert self.labels is not None
        return self.labels[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, indices: Sequence[int]) -> EncodedSplit:
        """A new split holding only ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        parts = [self.ids(i) for i in indices]
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        labels = None
        if self.labels is not None:
            labels = np.concatenate([self.token_labels(i) for i in indices]) if parts else np.zeros(0, np.int32)
        targets = None if self.targets is None else self.targets[indices]
        return EncodedSplit(ids, offsets, labels, targets, self.rows[indices])

    def save(self, path: str | Path) -> None:
        """Write to one ``.npz`` file (callers write to a temporary path and rename)."""
        arrays = {"input_ids": self.input_ids, "offsets": self.offsets, "rows": self.rows}
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.targets is not None:
            arrays["targets"] = self.targets
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> EncodedSplit:
        with np.load(path) as data:
            return cls(data["input_ids"], data["offsets"], data.get("labels"), data.get("targets"), data["rows"])


class SplitBuilder:
    """Collects rows one at a time, then builds an ``EncodedSplit``."""

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._targets: list[int] = []
        self._rows: list[int] = []

    def add(
        self, input_ids: Sequence[int], row: int, labels: Sequence[int] | None = None, target: int | None = None
    ) -> None:
        self._ids.append(np.asarray(input_ids, dtype=np.int32))
        if labels is not None:
            self._labels.append(np.asarray(labels, dtype=np.int32))
        if target is not None:
            self._targets.append(target)
        self._rows.append(row)

    def build(self) -> EncodedSplit:
        lengths = np.array([len(x) for x in self._ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=np.int32)
        labels = np.concatenate(self._labels) if self._labels else None
        targets = np.asarray(self._targets, dtype=np.int64) if self._targets else None
        return EncodedSplit(ids, offsets, labels, targets, np.asarray(self._rows, dtype=np.int64))
