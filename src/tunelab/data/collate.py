"""Batching: dynamic padding per batch, padding trimmed to a length quantile, prompt-token masking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tunelab.data.prompts import IGNORE_INDEX
from tunelab.data.tokenize import EncodedSplit


def batch_length(lengths: Sequence[int], quantile: float) -> int:
    """Padded length of a batch: the ``quantile`` of its row lengths (1.0 = the longest row)."""
    if quantile >= 1.0:
        return int(max(lengths))
    return max(int(np.ceil(np.quantile(np.asarray(lengths), quantile))), 1)


def pad_causal(
    split: EncodedSplit,
    indices: Sequence[int],
    pad_id: int,
    quantile: float = 1.0,
    mask_probability: float = 0.0,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded causal-LM batch with ``input_ids``, ``attention_mask``, ``labels`` and ``num_trained``.

    Rows longer than the batch length are cut from the left, keeping their answers.
    """
    lengths = [int(split.offsets[i + 1] - split.offsets[i]) for i in indices]
    width = batch_length(lengths, quantile)
    ids = np.full((len(indices), width), pad_id, dtype=np.int64)
    labels = np.full((len(indices), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, (i, length) in enumerate(zip(indices, lengths)):
        start = max(length - width, 0)
        seq = split.ids(i)[start:]
        ids[row, : len(seq)] = seq
        labels[row, : len(seq)] = split.token_labels(i)[start:]
        mask[row, : len(seq)] = 1
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
    }
    if mask_probability > 0:
        _mask_prompt_tokens(batch, mask_probability, pad_id if mask_id is None else mask_id, generator)
    # Tokens that carry loss: a label at a position that has a previous token to predict it from.
    batch["num_trained"] = torch.tensor(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
    return batch


def _mask_prompt_tokens(
    batch: dict[str, torch.Tensor], probability: float, mask_id: int, generator: torch.Generator | None
) -> None:
    """Replace a share of the prompt (untrained, non-padding) tokens with ``mask_id``, in place."""
    prompt = (batch["labels"] == IGNORE_INDEX) & (batch["attention_mask"] == 1)
    draw = torch.rand(batch["input_ids"].shape, generator=generator) < probability
    batch["input_ids"] = torch.where(prompt & draw, torch.full_like(batch["input_ids"], mask_id), batch["input_ids"])


def pad_classification(
    split: EncodedSplit, indices: Sequence[int], pad_id: int, quantile: float = 1.0
) -> dict[str, torch.Tensor]:
    """Right-padded classification batch with ``input_ids``, ``attention_mask``, ``labels`` and ``num_trained``."""
    lengths = [int(split.offsets[i + 1] - split.offsets[i]) for i in indices]
    width = batch_length(lengths, quantile)
    ids = np.full((len(indices), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, i in enumerate(indices):
        seq = split.ids(i)[:width]
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    assert split.targets is not None
    targets = torch.from_numpy(split.targets[np.asarray(indices)].astype(np.int64))
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": targets,
        "num_trained": torch.tensor(len(indices)),
    }


def pair_sequences(split: EncodedSplit, i: int) -> tuple[slice, slice]:
    """Where row ``i``'s chosen and rejected sequences lie in the flat arrays of a pairwise split.

    A preference row stores its chosen ids and then its rejected ids back to back; ``meta["chosen_length"]`` says
    where the first ends.
    """
    start, end = int(split.offsets[i]), int(split.offsets[i + 1])
    middle = start + int(split.meta["chosen_length"][i])
    return slice(start, middle), slice(middle, end)


def pad_pairs(
    split: EncodedSplit, indices: Sequence[int], pad_id: int, quantile: float = 1.0
) -> dict[str, torch.Tensor]:
    """A preference batch: the chosen sequence of each row, then the rejected ones, right-padded to one width.

    Returns ``input_ids`` and ``attention_mask`` ``[2 x rows, width]`` (rows ``k`` and ``rows + k`` are the pair of
    ``indices[k]``), ``labels`` when the split has per-token labels, and ``num_trained`` = the number of pairs.
    Sequences longer than the width are cut from the left, keeping their answers.
    """
    places = [pair_sequences(split, i) for i in indices]
    slices = [chosen for chosen, _ in places] + [rejected for _, rejected in places]
    lengths = [s.stop - s.start for s in slices]
    width = max(batch_length(lengths, quantile), 1)
    ids = np.full((len(slices), width), pad_id, dtype=np.int64)
    labels = np.full((len(slices), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(slices), width), dtype=np.int64)
    for row, (where, length) in enumerate(zip(slices, lengths)):
        keep = slice(where.start + max(length - width, 0), where.stop)
        n = keep.stop - keep.start
        ids[row, :n] = split.input_ids[keep]
        mask[row, :n] = 1
        if split.labels is not None:
            labels[row, :n] = split.labels[keep]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if split.labels is not None:
        batch["labels"] = torch.from_numpy(labels)
    batch["num_trained"] = torch.tensor(len(indices))
    return batch


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` of whole token sequences (for scoring)."""
    width = max([len(s) for s in sequences] + [1])
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pack_causal(
    split: EncodedSplit,
    bins: Sequence[Sequence[int]],
    pad_id: int,
    mask_probability: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """A packed causal-LM batch: each bin's rows concatenated into one sequence.

    Position ids restart at 0 for every example and the model gets no attention mask, so attention stays inside
    each example; an example's first token gets no label, so no loss crosses examples either. Bins are right-padded
    to the longest bin; padding forms its own segment and carries no labels. One bin holding a whole batch is the
    padding-free layout of that batch. ``mask_probability`` replaces that share of prompt tokens by ``pad_id``.
    """
    width = max(sum(int(split.offsets[i + 1] - split.offsets[i]) for i in b) for b in bins)
    ids = np.full((len(bins), width), pad_id, dtype=np.int64)
    labels = np.full((len(bins), width), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((len(bins), width), dtype=np.int64)
    mask = np.zeros((len(bins), width), dtype=np.int64)
    for row, members in enumerate(bins):
        at = 0
        for i in members:
            seq, lab = split.ids(i), split.token_labels(i)
            n = len(seq)
            ids[row, at : at + n] = seq
            labels[row, at : at + n] = lab
            labels[row, at] = IGNORE_INDEX  # never predicted from the previous example's last token
            positions[row, at : at + n] = np.arange(n)
            mask[row, at : at + n] = 1
            at += n
        positions[row, at:] = np.arange(width - at)  # padding: a separate segment
    batch = {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(positions),
        "attention_mask": torch.from_numpy(mask),
    }
    if mask_probability > 0:
        _mask_prompt_tokens(batch, mask_probability, pad_id, generator)
    batch["num_trained"] = torch.tensor(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
    return batch


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing of row indices into bins of at most ``capacity`` tokens (O(n log n))."""
    import bisect

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted
    for i in order:
        size = min(int(lengths[i]), capacity)
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
        else:
            room, b = capacity, len(bins)
            bins.append([i])
        if room - size > 0:
            bisect.insort(free, (room - size, b))
    return bins


class TrainBatches:
    """The training batches of one epoch after another: shuffled rows, rows grouped by length, or packed bins.

    Used as a DataLoader ``batch_sampler``. Epoch ``e`` is shuffled by a generator seeded with (seed, e), so the
    batches of any epoch can be rebuilt exactly — which is what makes a resumed run continue with the same batches.
    With several processes each global batch (``batch_size`` × ``world``) is split between them, so N processes
    see the same global batches as one process with an N times larger batch.

    Args:
        lengths: tokens per training row.
        batch_size: rows (packed rows when packing) per batch of this process.
        seed: the run's seed.
        drop_last: drop a last incomplete batch (always done with several processes).
        mode: "shuffle", "group_by_length" or "packing".
        capacity: tokens per packed row (packing only).
        rank: this process's index.
        world: the number of processes.
        repeat: yield every batch this many times in a row (online RL's updates on one batch of samples).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        drop_last: bool,
        mode: str = "shuffle",
        capacity: int = 0,
        rank: int = 0,
        world: int = 1,
        repeat: int = 1,
    ):
        self.lengths = np.asarray(lengths)
        self.repeat = repeat
        self.rank, self.world = rank, world
        self.batch_size = batch_size * world  # the global batch
        self.seed = seed
        self.mode = mode
        self.epoch = 0
        self.skip = 0
        self.bins = pack_bins(self.lengths.tolist(), capacity) if mode == "packing" else None
        self.drop_last = (drop_last or world > 1) and self._units() >= self.batch_size

    def _units(self) -> int:
        return len(self.bins) if self.bins is not None else len(self.lengths)

    def __len__(self) -> int:
        n = self._units()
        return self.repeat * (n // self.batch_size if self.drop_last else -(-n // self.batch_size))

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch ``epoch`` next, starting after its first ``skip`` batches."""
        self.epoch, self.skip = epoch, skip

    def _chunks(self, order: list[Any]) -> list[list[Any]]:
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks = chunks[:-1]
        return chunks

    def epoch_batches(self, epoch: int) -> list[list[Any]]:
        """Every global batch of ``epoch``, in order."""
        batches = self._shuffled(epoch)
        return [batch for batch in batches for _ in range(self.repeat)]

    def _shuffled(self, epoch: int) -> list[list[Any]]:
        generator = torch.Generator().manual_seed(hash((self.seed, epoch)) & 0x7FFFFFFF)
        perm = torch.randperm(self._units(), generator=generator).tolist()
        if self.bins is not None:
            return self._chunks([self.bins[i] for i in perm])
        if self.mode == "group_by_length":
            # Sort within windows of 50 batches so similar lengths share a batch, then shuffle the batches.
            window = 50 * self.batch_size
            order = []
            for start in range(0, len(perm), window):
                order += sorted(perm[start : start + window], key=lambda i: -self.lengths[i])
            chunks = self._chunks(order)
            return [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
        return self._chunks(perm)

    def __iter__(self):
        batches = self.epoch_batches(self.epoch)[self.skip :]
        self.skip = 0
        for batch in batches:
            yield batch[self.rank :: self.world] if self.world > 1 else batch


def padding_share(lengths: np.ndarray, batches: Sequence[Sequence[Any]]) -> float:
    """Share of a padded epoch's tokens that are padding, for the given batches (rows or bins of rows)."""
    real = padded = 0
    for batch in batches:
        sizes = [sum(lengths[i] for i in item) if isinstance(item, (list, tuple)) else lengths[item] for item in batch]
        real += sum(sizes)
        padded += max(sizes) * len(sizes)
    return 1.0 - real / max(padded, 1)
