"""Conversations chained by id / parent_id (H2O LLM Studio's multi-turn rows), and H2O's options around them.

Each row holds one turn (a prompt and its answer) and names the row of the previous turn in ``parent_id_column``.
By default every row is one example: its chain of parent turns, then its own turn. ``limit_chained_samples`` keeps
only whole conversations (the rows no other row continues). The ``augmentation`` section's
``skip_parent_probability`` and ``random_parent_probability`` reshape *training* conversations (validation rows stay
as they are): earlier turns are left out, or an unrelated turn is put first. The draws come from a generator seeded
by ``dataset.split_seed``, so a split is rebuilt (and cached) identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from tunelab.config import RunConfig
from tunelab.data.readers import Record

# (parent key or None, prompt, answer) of one row, by the row's key.
Chains = dict[str, tuple[str | None, str, str]]
Message = dict[str, str]


def chain_key(value: Any) -> str | None:
    """An id or parent-id cell as a lookup key: None when empty, null or NaN; ``3.0`` and ``3`` are the same id."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        if value.is_integer():
            return str(int(value))
    return str(value).strip() if isinstance(value, str) else str(value)


def row_key(record: Record, cfg: RunConfig) -> str:
    """The id of a chained row.

    Raises:
        DataError: when the id column is missing or empty.
    """
    column = cfg.dataset.id_column
    if column not in record.data:
        raise record.error(
            f"column '{column}' not found (columns are: {', '.join(list(record.data)[:12])})",
            field=column,
            hint="rows chained by parent id need an id column: set dataset.id_column",
        )
    key = chain_key(record.data[column])
    if key is None:
        raise record.error("the row has no id", field=column, hint="every chained row needs a unique id")
    return key


def build_chains(
    records: Iterable[Record], cfg: RunConfig, turn_of: Callable[[Record, RunConfig], dict[str, Any]]
) -> Chains:
    """Every row's parent key and own turn, by its key.

    Args:
        records: the rows of the source.
        cfg: the run config (id and parent-id columns).
        turn_of: reads a row's own turn as an example whose messages end with the user and the assistant turn.
    """
    chains: Chains = {}
    for record in records:
        turn = turn_of(record, cfg)["messages"]
        parent = chain_key(record.data.get(cfg.dataset.parent_id_column))
        chains[row_key(record, cfg)] = (parent, turn[-2]["content"], turn[-1]["content"])
    return chains


def chain_messages(record: Record, cfg: RunConfig, chains: Chains) -> list[Message]:
    """The user and assistant turns of a row's conversation: its parents' turns from the first on, then its own.

    Raises:
        DataError: for a parent id that no row has, or a chain that loops.
    """
    field = cfg.dataset.parent_id_column
    messages: list[Message] = []
    key: str | None = row_key(record, cfg)
    seen: set[str] = set()
    while key is not None:
        if key in seen:
            raise record.error("the parent_id chain loops back on itself", field=field)
        seen.add(key)
        if key not in chains:
            raise record.error(f"parent id '{key}' does not exist", field=field)
        parent, prompt, answer = chains[key]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}] + messages
        key = parent
    return messages


def parent_keys(records: Iterable[Record], cfg: RunConfig) -> set[str]:
    """Every key some row names as its parent."""
    keys = (chain_key(record.data.get(cfg.dataset.parent_id_column)) for record in records)
    return {key for key in keys if key is not None}


def keep_conversation_ends(reader: Any) -> Iterator[tuple[Record, dict[str, Any]]]:
    """The (record, example) pairs of an ``ExampleReader``; with ``dataset.limit_chained_samples`` on chained rows,
    only the rows that end a conversation (no other row names them as parent)."""
    cfg = reader.cfg
    parents: set[str] | None = None
    for record, example in reader:
        if reader.format == "h2o_multiturn" and cfg.dataset.limit_chained_samples:
            if parents is None:
                parents = parent_keys(reader.records(), cfg)
            if row_key(record, cfg) in parents:
                continue
        yield record, example


def augments_parents(cfg: RunConfig) -> bool:
    """Whether training conversations are reshaped (skip / random parent probabilities above 0)."""
    return bool(cfg.augmentation.skip_parent_probability or cfg.augmentation.random_parent_probability)


class ParentAugmenter:
    """Reshapes training conversations as H2O LLM Studio's skip / random parent augmentation does.

    Each earlier turn is left out with ``skip_parent_probability`` (each on its own draw); then, with
    ``random_parent_probability``, the turn of a random training row is put before the conversation. The row's own
    (last) turn and the system message always stay.

    Args:
        cfg: the run config.
        pool: the own turns (user message, assistant message) of the training rows, to draw random parents from.
    """

    def __init__(self, cfg: RunConfig, pool: list[list[Message]]):
        self.skip = cfg.augmentation.skip_parent_probability
        self.random = cfg.augmentation.random_parent_probability
        self.pool = pool
        self.rng = np.random.default_rng([cfg.dataset.split_seed, 20230531])

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        messages = example.get("messages")
        if not messages or messages[-1]["role"] != "assistant":
            return example  # not a conversation to train on (e.g. prompts for rl)
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = messages[len(head) :]
        pairs = [turns[i : i + 2] for i in range(0, len(turns), 2)]
        earlier, last = pairs[:-1], pairs[-1]
        if self.skip:
            earlier = [pair for pair in earlier if self.rng.random() >= self.skip]
        if self.random and self.pool and self.rng.random() < self.random:
            earlier = [self.pool[int(self.rng.integers(len(self.pool)))], *earlier]
        return {**example, "messages": [*head, *(m for pair in earlier for m in pair), *last]}
