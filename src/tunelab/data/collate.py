"""Batching: dynamic padding per batch, padding trimmed to a length quantile, prompt-token masking."""

from __future__ import annotations

from collections.abc import Sequence

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
