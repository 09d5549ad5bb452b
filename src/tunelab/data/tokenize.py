"""Tokenised splits stored as flat arrays (one buffer of ids, one of labels, offsets per row).

Flat arrays keep memory small, save and load as a single file, and make batching a few numpy slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class EncodedSplit:
    """Token ids (and per-token labels or one target per row) of every row of a split.

    Args:
        input_ids: all rows' ids concatenated.
        offsets: ``offsets[i]:offsets[i+1]`` is row i.
        labels: per-token labels aligned with ``input_ids`` (causal LM), or None.
        targets: one class index (or multi-hot vector) per row (classification), or None.
        rows: each row's number in its source file (for reports).
        meta: per-row statistics for the data check (e.g. ``prompt_length``), arrays of one value per row.
    """

    def __init__(
        self,
        input_ids: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        meta: dict[str, np.ndarray] | None = None,
    ):
        self.input_ids = input_ids
        self.offsets = offsets
        self.labels = labels
        self.targets = targets
        self.rows = rows if rows is not None else np.arange(1, len(offsets))
        self.meta = meta or {}

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

    def trained_counts(self) -> np.ndarray:
        """Tokens that carry loss in each row: a label at a position that has a token before it."""
        if self.labels is None:
            return np.ones(len(self), dtype=np.int64)
        trained = (self.labels != -100).astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(trained)])
        starts, ends = self.offsets[:-1], self.offsets[1:]
        # Skip each row's first token: nothing precedes it, so it is never predicted.
        return np.where(ends > starts, csum[ends] - csum[np.minimum(starts + 1, ends)], 0)

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
        meta = {k: v[indices] for k, v in self.meta.items()}
        return EncodedSplit(ids, offsets, labels, targets, self.rows[indices], meta)

    def save(self, path: str | Path) -> None:
        """Write to one ``.npz`` file (callers write to a temporary path and rename)."""
        arrays = {"input_ids": self.input_ids, "offsets": self.offsets, "rows": self.rows}
        arrays.update({f"meta_{k}": v for k, v in self.meta.items()})
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.targets is not None:
            arrays["targets"] = self.targets
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> EncodedSplit:
        with np.load(path) as data:
            meta = {k.removeprefix("meta_"): data[k] for k in data.files if k.startswith("meta_")}
            get = {k: data[k] for k in data.files if not k.startswith("meta_")}
        return cls(get["input_ids"], get["offsets"], get.get("labels"), get.get("targets"), get["rows"], meta)


class SplitBuilder:
    """Collects rows one at a time, then builds an ``EncodedSplit``."""

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._targets: list[Any] = []
        self._rows: list[int] = []
        self._meta: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(
        self, input_ids: Sequence[int], row: int, labels: Sequence[int] | None = None, target: Any = None, **meta: Any
    ) -> None:
        """Add one row; ``target`` is a class index or a multi-hot vector; ``meta`` holds per-row statistics."""
        self._ids.append(np.asarray(input_ids, dtype=np.int32))
        if labels is not None:
            self._labels.append(np.asarray(labels, dtype=np.int32))
        if target is not None:
            self._targets.append(target)
        self._rows.append(row)
        for key, value in meta.items():
            self._meta.setdefault(key, []).append(value)

    def build(self) -> EncodedSplit:
        lengths = np.array([len(x) for x in self._ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=np.int32)
        labels = np.concatenate(self._labels) if self._labels else None
        targets = None
        if self._targets:
            multi_hot = isinstance(self._targets[0], (list, np.ndarray))
            targets = np.asarray(self._targets, dtype=np.float32 if multi_hot else np.int64)
        meta = {k: np.asarray(v) for k, v in self._meta.items()}
        return EncodedSplit(ids, offsets, labels, targets, np.asarray(self._rows, dtype=np.int64), meta)
