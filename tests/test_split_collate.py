"""Splits and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunelab.data.collate import batch_length, pad_causal, pad_classification, pad_left
from tunelab.data.prompts import IGNORE_INDEX
from tunelab.data.split import split_indices, validation_count
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.errors import DataError


def test_validation_count_is_fraction_or_rows_and_at_least_one():
    assert validation_count(1000, 0.01) == 10
    assert validation_count(50, 0.001) == 1
    assert validation_count(50, 7) == 7
    assert validation_count(5, 100) == 4  # always leaves a training row


def test_split_is_deterministic_and_disjoint():
    a_train, a_val = split_indices(100, 0.2, seed=3)
    b_train, b_val = split_indices(100, 0.2, seed=3)
    assert (a_val == b_val).all() and (a_train == b_train).all()
    assert len(a_val) == 20 and not set(a_val) & set(a_train)
    _, c_val = split_indices(100, 0.2, seed=4)
    assert set(c_val) != set(a_val)


def test_stratified_split_keeps_class_shares():
    labels = ["a"] * 90 + ["b"] * 10
    _, val = split_indices(100, 0.2, seed=0, labels=labels)
    picked = [labels[i] for i in val]
    assert picked.count("a") == 18 and picked.count("b") == 2


def test_split_needs_two_rows():
    with pytest.raises(DataError):
        split_indices(1, 0.5, seed=0)


def make_split(seqs, labels=None, targets=None):
    builder = SplitBuilder()
    for i, seq in enumerate(seqs):
        builder.add(
            seq, i + 1, labels=None if labels is None else labels[i], target=None if targets is None else targets[i]
        )
    return builder.build()


def test_encoded_split_round_trip(tmp_path):
    split = make_split([[1, 2, 3], [4, 5]], labels=[[-100, 2, 3], [-100, 5]])
    path = tmp_path / "s.npz"
    split.save(path)
    loaded = EncodedSplit.load(path)
    assert loaded.ids(1).tolist() == [4, 5] and loaded.token_labels(0).tolist() == [-100, 2, 3]
    sub = loaded.subset([1])
    assert len(sub) == 1 and sub.ids(0).tolist() == [4, 5] and sub.rows.tolist() == [2]


def test_pad_causal_right_pads_and_counts_trained_tokens():
    split = make_split([[1, 2, 3, 4], [5, 6]], labels=[[-100, -100, 3, 4], [-100, 6]])
    batch = pad_causal(split, [0, 1], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]
    assert int(batch["num_trained"]) == 3


def test_padding_quantile_cuts_long_rows_from_the_left():
    assert batch_length([2, 4, 10], 1.0) == 10
    split = make_split(
        [[1] * 2, [2] * 3, [3, 4, 5, 6, 7, 8, 9, 10]], labels=[[1] * 2, [2] * 3, [3, 4, 5, 6, 7, 8, 9, 10]]
    )
    batch = pad_causal(split, [0, 1, 2], pad_id=0, quantile=0.5)
    assert batch["input_ids"].shape[1] == 3
    assert batch["input_ids"][2].tolist() == [8, 9, 10]  # the end (the answer) survives


def test_token_masking_touches_only_prompt_tokens():
    seq = list(range(1, 41))
    labels = [IGNORE_INDEX] * 20 + seq[20:]
    split = make_split([seq], labels=[labels])
    batch = pad_causal(
        split, [0], pad_id=0, mask_probability=0.5, mask_id=99, generator=torch.Generator().manual_seed(0)
    )
    ids = batch["input_ids"][0].tolist()
    assert ids[20:] == seq[20:]
    masked = sum(1 for x in ids[:20] if x == 99)
    assert 3 <= masked <= 17


def test_pad_classification_and_left_padding():
    split = make_split([[1, 2, 3], [4]], targets=[1, 0])
    batch = pad_classification(split, [0, 1], pad_id=0)
    assert batch["labels"].tolist() == [1, 0] and batch["input_ids"][1].tolist() == [4, 0, 0]
    left = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert left["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert np.isclose(float(batch["num_trained"]), 2)
