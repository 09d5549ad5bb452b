"""The data flow of a run: read -> normalise -> split -> render -> tokenise."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.config import RunConfig
from tunelab.data.readers import Record, iter_records
from tunelab.data.split import split_indices
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.errors import DataError


@dataclass
class DataSplits:
    """Tokenised training and validation splits, plus the validation examples for reports and generation."""

    train: EncodedSplit
    validation: EncodedSplit
    validation_examples: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def iter_examples(path: str, problem: Any) -> Iterator[tuple[Record, dict[str, Any]]]:
    """Each record of ``path`` with its canonical example (validated)."""
    for record in iter_records(path):
        yield record, problem.example(record)


@dataclass
class SplitPlan:
    """Which rows of the training file go where (0-based indices in file order)."""

    train: set[int] | None  # None = every row not held out
    validation: set[int]


def plan_split(cfg: RunConfig, problem: Any, fit: bool = True) -> SplitPlan:
    """Read the training file once: count rows, collect labels, fit the problem, pick validation and sample rows.

    Raises:
        DataError: for unreadable rows, or a split that leaves nothing to train on.
    """
    ds = cfg.dataset
    labels: list[str] = []
    n_rows = 0
    for _, example in iter_examples(ds.train_dataframe, problem):
        n_rows += 1
        label = problem.label_of(example)
        if label is not None:
            labels.append(label)
    if fit:
        problem.fit(labels, ds.train_dataframe)
    if ds.validation_strategy == "custom":
        train_idx, val_idx = np.arange(n_rows), np.array([], dtype=np.int64)
    else:
        train_idx, val_idx = split_indices(
            n_rows, ds.validation_size, ds.split_seed, labels or None, ds.train_dataframe
        )
    train = None
    if ds.data_sample != 1.0:
        keep = int(ds.data_sample) if ds.data_sample > 1 else max(int(round(len(train_idx) * ds.data_sample)), 1)
        rng = np.random.default_rng(ds.split_seed + 1)
        train = set(rng.permutation(train_idx)[:keep].tolist())
    return SplitPlan(train, set(val_idx.tolist()))


def encode_file(
    path: str,
    problem: Any,
    keep: set[int] | None = None,
    skip: set[int] | None = None,
    examples: list[dict[str, Any]] | None = None,
) -> EncodedSplit:
    """Tokenise the rows of ``path`` (only ``keep`` / all but ``skip``, by 0-based index).

    When ``examples`` is a list, the canonical examples of the encoded rows are appended to it.
    """
    builder = SplitBuilder()
    for i, (record, example) in enumerate(iter_examples(path, problem)):
        if (keep is not None and i not in keep) or (skip is not None and i in skip):
            continue
        problem.encode(example, builder, record.row if record.row is not None else (record.line or 0), record)
        if examples is not None:
            examples.append(example)
    return builder.build()


def build_splits(cfg: RunConfig, problem: Any) -> DataSplits:
    """Read, check, split and tokenise the configured data.

    The training file is streamed twice (count and labels, then encode), so no file is ever held whole in memory;
    only the validation examples are kept as Python objects.

    Raises:
        DataError: for unreadable files and rows that do not fit the config.
    """
    ds = cfg.dataset
    if not ds.train_dataframe:
        raise DataError(
            "no training data set",
            field="dataset.train_dataframe",
            hint="set dataset.train_dataframe to a CSV/JSONL/Parquet file",
        )
    plan = plan_split(cfg, problem)
    val_examples: list[dict[str, Any]] = []
    train = encode_file(ds.train_dataframe, problem, keep=plan.train, skip=plan.validation)
    if ds.validation_strategy == "custom":
        validation = encode_file(ds.validation_dataframe, problem, examples=val_examples)
    else:
        validation = encode_file(ds.train_dataframe, problem, keep=plan.validation, examples=val_examples)
    if len(train) == 0:
        raise DataError(
            "no training rows are left after the validation split",
            file=ds.train_dataframe,
            hint="lower dataset.validation_size",
        )
    info: dict[str, Any] = {
        "train_rows": len(train),
        "validation_rows": len(validation),
        "train_tokens": int(train.lengths().sum()),
    }
    if getattr(problem, "classes", None):
        info["classes"] = list(problem.classes)
    return DataSplits(train, validation, val_examples, info)


def validation_data(cfg: RunConfig, problem: Any, path: str | None = None) -> tuple[EncodedSplit, list[dict]]:
    """The validation split of a finished run (or every row of ``path``), for re-evaluation."""
    examples: list[dict[str, Any]] = []
    if path is not None:
        return encode_file(path, problem, examples=examples), examples
    if cfg.dataset.validation_strategy == "custom":
        return encode_file(cfg.dataset.validation_dataframe, problem, examples=examples), examples
    plan = plan_split(cfg, problem, fit=False)
    return encode_file(cfg.dataset.train_dataframe, problem, keep=plan.validation, examples=examples), examples


def read_prompts(path: str, cfg: RunConfig) -> tuple[list[Record], list[dict[str, Any]]]:
    """Records and prompt-only examples for prediction (answer/label used as reference when present)."""
    from tunelab.data.formats import prompt_only_example

    records = list(iter_records(path))
    return records, [prompt_only_example(record, cfg) for record in records]
