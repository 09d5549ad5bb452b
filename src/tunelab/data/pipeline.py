"""The data flow of a run: read -> normalise -> split -> render -> tokenise, cached on disk.

The tokenised splits are cached under the user cache folder, keyed by the data files' contents, every dataset and
tokenizer setting, and the tokenizer itself: a second run with the same data and settings skips tokenisation.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.config import RunConfig
from tunelab.data.chains import ParentAugmenter, augments_parents, keep_conversation_ends
from tunelab.data.formats import ExampleReader, resolve_data
from tunelab.data.personalize import personalize_example
from tunelab.data.readers import Record, expand_sources, iter_records
from tunelab.data.split import sample_indices, split_indices
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.errors import DataError
from tunelab.io import atomic_dir, user_cache_dir

CACHE_VERSION = "1"


@dataclass
class DataSplits:
    """Tokenised splits, plus the validation (and test) examples for reports and generation."""

    train: EncodedSplit
    validation: EncodedSplit
    validation_examples: list[dict[str, Any]]
    test: EncodedSplit | None = None
    test_examples: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def source_name(source: str | list[str]) -> str:
    """A data source as text for messages."""
    return source if isinstance(source, str) else ", ".join(source)


def iter_examples(source: Any, problem: Any) -> Iterator[tuple[Record, dict[str, Any]]]:
    """Each record of ``source`` with its canonical example, in the config's (or the detected) format.

    With ``limit_chained_samples``, chained rows that do not end a conversation are left out; ``personalize``
    renames the assistant.
    """
    ds = problem.cfg.dataset
    for record, example in keep_conversation_ends(ExampleReader(problem.cfg, source)):
        if ds.personalize:
            example = personalize_example(example, ds.chatbot_name, ds.chatbot_author)
        yield record, example


@dataclass
class SplitPlan:
    """Which rows of the training source go where (0-based indices in reading order)."""

    train: set[int] | None  # None = every row not held out
    validation: set[int]  # the validation rows: held_out, or a sample of it (data_sample_choice 'validation')
    format: str
    held_out: set[int] = field(default_factory=set)  # every row kept out of training
    notes: list[str] = field(default_factory=list)  # what reading the rows left out, for the user


def plan_split(cfg: RunConfig, problem: Any, fit: bool = True) -> SplitPlan:
    """Read the training data once: count rows, collect labels, fit the problem, pick validation and sample rows.

    Raises:
        DataError: for unreadable rows, or a split that leaves nothing to train on.
    """
    ds = cfg.dataset
    labels: list[Any] = []
    reader = ExampleReader(cfg, ds.train_dataframe)
    n_rows = 0
    for _, example in keep_conversation_ends(reader):
        n_rows += 1
        label = problem.label_of(example)
        if label is not None:
            labels.append(label)
    if fit:
        problem.fit(labels, source_name(ds.train_dataframe))
    if ds.validation_strategy == "custom":
        train_idx, val_idx = np.arange(n_rows), np.array([], dtype=np.int64)
    else:
        stratify = labels and getattr(problem, "stratify", True)
        strata = [json.dumps(label) for label in labels] if stratify else None
        train_idx, val_idx = split_indices(
            n_rows, ds.validation_size, ds.split_seed, strata, source_name(ds.train_dataframe)
        )
    sampled = ds.data_sample != 1.0
    train = None
    if sampled and "train" in ds.data_sample_choice:
        train = sample_indices(train_idx, ds.data_sample, ds.split_seed + 1)
    held_out = set(val_idx.tolist())
    validation = held_out
    if sampled and "validation" in ds.data_sample_choice and held_out:
        validation = sample_indices(val_idx, ds.data_sample, ds.split_seed + 2)
    return SplitPlan(train, validation, reader.format, held_out, reader.notes)


def example_key(example: dict[str, Any]) -> str:
    """A content hash of a canonical example, to find rows that occur in two splits."""
    return hashlib.sha1(json.dumps(example, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def encode_source(
    source: Any,
    problem: Any,
    keep: set[int] | None = None,
    skip: set[int] | None = None,
    examples: list[dict[str, Any]] | None = None,
    exclude: set[str] | None = None,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[EncodedSplit, int]:
    """Tokenise the rows of ``source`` (only ``keep`` / all but ``skip``, by 0-based index).

    Args:
        source: the data source.
        problem: encodes each example.
        keep: indices to encode (None = all).
        skip: indices not to encode.
        examples: when a list, the canonical examples of the encoded rows are appended to it.
        exclude: content hashes of examples to leave out (rows already in another split).
        transform: applied to each example that is encoded (training-time augmentation).

    Returns:
        (the split, how many rows ``exclude`` removed).
    """
    builder = SplitBuilder()
    removed = 0
    for i, (record, example) in enumerate(iter_examples(source, problem)):
        if (keep is not None and i not in keep) or (skip is not None and i in skip):
            continue
        if exclude is not None and example_key(example) in exclude:
            removed += 1
            continue
        if transform is not None:
            example = transform(example)
        problem.encode(example, builder, record.position, record)
        if examples is not None:
            examples.append(example)
    return builder.build(), removed


def encode_validation(
    cfg: RunConfig, problem: Any, plan: SplitPlan | None, examples: list[dict[str, Any]]
) -> EncodedSplit:
    """The validation split: the held-out rows of ``plan`` (automatic; planned here when None) or the validation
    file (custom, sampled when ``data_sample_choice`` has 'validation'); the examples are appended to ``examples``."""
    ds = cfg.dataset
    if ds.validation_strategy != "custom":
        plan = plan or plan_split(cfg, problem, fit=False)
        return encode_source(ds.train_dataframe, problem, keep=plan.validation, examples=examples)[0]
    keep = None
    if ds.data_sample != 1.0 and "validation" in ds.data_sample_choice:
        n_rows = sum(1 for _ in iter_examples(ds.validation_dataframe, problem))
        keep = sample_indices(np.arange(n_rows), ds.data_sample, ds.split_seed + 2)
    return encode_source(ds.validation_dataframe, problem, keep=keep, examples=examples)[0]


def training_augmenter(cfg: RunConfig, problem: Any, plan: SplitPlan) -> ParentAugmenter | None:
    """The skip / random parent augmentation of chained training conversations; None when it is off."""
    if plan.format != "h2o_multiturn" or not augments_parents(cfg):
        return None
    pool = [
        example["messages"][-2:]
        for i, (_, example) in enumerate(iter_examples(cfg.dataset.train_dataframe, problem))
        if (plan.train is None or i in plan.train) and i not in plan.held_out and "messages" in example
    ]
    return ParentAugmenter(cfg, pool)


def build_splits(cfg: RunConfig, problem: Any, use_cache: bool = True) -> DataSplits:
    """Read, check, split and tokenise the configured data (or load the same from the cache).

    The training data is streamed (twice: count/labels, then encode), so no file is ever held whole in memory; only
    validation and test examples are kept as Python objects. Rows of the training data that also occur in the
    validation data are dropped from training and counted in ``info["deduplicated"]``.

    Raises:
        DataError: for unreadable data and rows that do not fit the config.
    """
    ds = cfg.dataset
    if not ds.train_dataframe:
        raise DataError(
            "no training data set",
            field="dataset.train_dataframe",
            hint="set dataset.train_dataframe to a CSV/JSONL/Parquet file",
        )
    # Detection first: the columns it picks are part of the cache key and of the run's recorded config.
    notes = resolve_data(cfg)
    key = cache_key(cfg, problem.tokenizer) if use_cache else None
    if key is not None:
        cached = load_cached(key, problem)
        if cached is not None:
            cached.info["notes"] = notes
            return cached
    started = time.perf_counter()
    plan = plan_split(cfg, problem)
    val_examples: list[dict[str, Any]] = []
    validation = encode_validation(cfg, problem, plan, val_examples)
    held_out = {example_key(ex) for ex in val_examples}
    augment = training_augmenter(cfg, problem, plan)
    train, removed = encode_source(
        ds.train_dataframe, problem, keep=plan.train, skip=plan.held_out, exclude=held_out, transform=augment
    )
    if len(train) == 0:
        raise DataError(
            "no training rows are left after the validation split",
            file=source_name(ds.train_dataframe),
            hint="lower dataset.validation_size, or check for rows repeated in the validation data",
        )
    if len(validation) == 0:
        raise DataError(
            "the validation data has no rows", file=source_name(ds.validation_dataframe or ds.train_dataframe)
        )
    test, test_examples = None, []
    if ds.test_dataframe:
        test, _ = encode_source(ds.test_dataframe, problem, examples=test_examples)
    info: dict[str, Any] = {
        "format": plan.format,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "train_tokens": int(train.lengths().sum()),
        "deduplicated": removed,
        "tokenize_seconds": round(time.perf_counter() - started, 3),
        "cached": False,
        "notes": notes,
        "data_notes": plan.notes,  # cached with the splits: what reading the rows left out
    }
    if test is not None:
        info["test_rows"] = len(test)
    if getattr(problem, "target_stats", None):
        info["target_stats"] = list(problem.target_stats)
    if getattr(problem, "classes", None):
        info["classes"] = list(problem.classes)
        info["multi_label"] = bool(getattr(problem, "multi_label", False))
    splits = DataSplits(train, validation, val_examples, test, test_examples, info)
    if key is not None:
        save_cached(key, splits)
    return splits


# ---------------------------------------------------------------------------------------------------------- cache
def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (or of a saved-dataset folder's files)."""
    digest = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        digest.update(str(f.relative_to(p) if p.is_dir() else "").encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _sources_digest(source: Any) -> str | None:
    """Digest of every file of a source; None for a hub dataset (not cached: it can change upstream)."""
    if not source:
        return ""
    parts = []
    for name in expand_sources(source):
        if not Path(name).exists():
            return None
        parts.append(file_digest(name))
    return "|".join(parts)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What about a tokenizer changes the ids it produces."""
    parts = [
        type(tokenizer).__name__,
        str(len(tokenizer)),
        str(tokenizer.chat_template),
        str(tokenizer.all_special_tokens),
    ]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts.append(backend.to_str())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_key(cfg: RunConfig, tokenizer: Any) -> str | None:
    """The cache key of a config's tokenised data, or None when the data can't be fingerprinted."""
    # The installed version, not tunelab.__version__: the package root imports the API, which sits above data.
    from importlib.metadata import version

    ds = cfg.dataset
    digests = [_sources_digest(s) for s in (ds.train_dataframe, ds.validation_dataframe, ds.test_dataframe)]
    if any(d is None for d in digests):
        return None
    material = {
        "v": CACHE_VERSION,
        "tunelab": version("tunelab"),
        "problem": cfg.problem_type,
        "data": digests,
        "dataset": ds.model_dump(mode="json"),
        "tokenizer_cfg": cfg.tokenizer.model_dump(mode="json"),
        "parents": [cfg.augmentation.skip_parent_probability, cfg.augmentation.random_parent_probability],
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def cache_dir(key: str) -> Path:
    return user_cache_dir() / "data" / key


def save_cached(key: str, splits: DataSplits) -> None:
    """Write the splits to the cache atomically (a private folder renamed into place)."""
    target = cache_dir(key)
    if target.exists():
        return
    with atomic_dir(target, replace=False) as work:  # another run caching the same data first wins
        splits.train.save(work / "train.npz")
        splits.validation.save(work / "validation.npz")
        if splits.test is not None:
            splits.test.save(work / "test.npz")
        (work / "examples.json").write_text(
            json.dumps({"validation": splits.validation_examples, "test": splits.test_examples}), encoding="utf-8"
        )
        (work / "info.json").write_text(json.dumps(splits.info), encoding="utf-8")


def load_cached(key: str, problem: Any) -> DataSplits | None:
    """The cached splits for ``key`` (restoring what the problem learned from the data), or None."""
    target = cache_dir(key)
    if not (target / "info.json").is_file():
        return None
    started = time.perf_counter()
    info = json.loads((target / "info.json").read_text(encoding="utf-8"))
    examples = json.loads((target / "examples.json").read_text(encoding="utf-8"))
    if info.get("target_stats"):
        problem.target_stats = tuple(info["target_stats"])
    if info.get("classes"):
        # Refit from the saved classes: one multi-label row holding them all, or each class once.
        problem.fit([info["classes"]] if info.get("multi_label") else info["classes"], "cache")
    test = EncodedSplit.load(target / "test.npz") if (target / "test.npz").is_file() else None
    splits = DataSplits(
        EncodedSplit.load(target / "train.npz"),
        EncodedSplit.load(target / "validation.npz"),
        examples["validation"],
        test,
        examples["test"],
        info,
    )
    splits.info.update(cached=True, load_seconds=round(time.perf_counter() - started, 3))
    return splits


# ---------------------------------------------------------------------------------------------------------- reuse
def validation_data(cfg: RunConfig, problem: Any, path: str | None = None) -> tuple[EncodedSplit, list[dict]]:
    """The validation split of a finished run (or every row of ``path``), for re-evaluation."""
    examples: list[dict[str, Any]] = []
    if path is not None:
        return encode_source(path, problem, examples=examples)[0], examples
    return encode_validation(cfg, problem, None, examples), examples


def read_prompts(path: str, cfg: RunConfig) -> tuple[list[Record], list[dict[str, Any]]]:
    """Records and prompt-only examples for prediction (answer/label used as reference when present).

    Each row's shape is detected on its own (``dataset.format: auto``): a file to predict on may mix prompt-only
    rows, prompt/answer rows and pairs."""
    from tunelab.data.formats import prompt_only_example, row_config

    records = list(iter_records(path, text_mode=cfg.dataset.text_mode))
    examples = []
    for record in records:
        row_cfg, fmt = row_config(record, cfg)
        examples.append(prompt_only_example(record, row_cfg, fmt))
    return records, examples
