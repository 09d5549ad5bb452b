"""Formats: turn a raw record into the canonical example of a problem type.

Canonical examples are plain dicts:

- conversation (causal LM): ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- raw text (continued pre-training): ``{"text": str}``
- classification: ``{"text": str, "label": str}``, or ``{"text": str, "label": [str, ...]}`` for multi-label
- preference: ``{"prompt": [messages], "chosen": str, "rejected": str}``

Formats are detected from the first record (``dataset.format: auto``) or set explicitly. Every problem is a
``DataError`` naming the file, row and field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from tunelab.config import RunConfig
from tunelab.data.readers import Record, iter_records
from tunelab.errors import DataError

CONVERSATION_FORMATS = ("columns", "alpaca", "messages", "sharegpt", "h2o_multiturn")
ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


# ---------------------------------------------------------------------------------------------------------- cells
def cell_text(record: Record, column: str, *, required: bool = True) -> str:
    """The text in ``record[column]``, with numbers turned into text.

    Raises:
        DataError: when the column is missing, null (if required) or holds a list/object.
    """
    data = record.data
    if column not in data:
        columns = ", ".join(list(data)[:12])
        raise record.error(
            f"column '{column}' not found (columns are: {columns})",
            field=column,
            hint="set the right column name in the dataset section of the config",
        )
    value = data[column]
    if value is None:
        if required:
            raise record.error("value is empty (null)", field=column, hint="fill in or drop this row")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        kind = type(value).__name__
        raise record.error(
            f"expected text, got a {kind}",
            field=column,
            hint="this column must hold plain text; nested data needs a format such as 'messages'",
        )
    return str(value)


def _system(record: Record, cfg: RunConfig) -> list[dict[str, str]]:
    ds = cfg.dataset
    text = ""
    if ds.system_column and ds.system_column in record.data:
        text = cell_text(record, ds.system_column, required=False)
    text = text or ds.system_prompt
    return [{"role": "system", "content": text}] if text else []


def with_default_system(messages: list[dict[str, str]], cfg: RunConfig) -> list[dict[str, str]]:
    """Prepend ``dataset.system_prompt`` when the conversation has no system message."""
    if cfg.dataset.system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": cfg.dataset.system_prompt}, *messages]
    return messages


# ---------------------------------------------------------------------------------------------------------- formats
def columns_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Prompt column(s) and an answer column as one user turn and one assistant turn."""
    ds = cfg.dataset
    prompt = "\n".join(cell_text(record, column) for column in ds.prompt_column)
    answer = cell_text(record, ds.answer_column)
    return {
        "messages": [
            *_system(record, cfg),
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    }


def alpaca_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Alpaca: instruction (+ input) -> output, with optional system and history of [user, assistant] pairs."""
    instruction = cell_text(record, "instruction")
    extra = cell_text(record, "input", required=False) if "input" in record.data else ""
    messages = _system(record, cfg)
    if "system" in record.data and not messages:
        system = cell_text(record, "system", required=False)
        messages = [{"role": "system", "content": system}] if system else []
    history = record.data.get("history") or []
    if not isinstance(history, list):
        raise record.error("history must be a list of [question, answer] pairs", field="history")
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise record.error("history must be a list of [question, answer] pairs", field="history")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": cell_text(record, "output")}]
    return {"messages": messages}


def _message_list(record: Record, field: str, items: Any, role_key: str, content_key: str) -> list[dict[str, str]]:
    if isinstance(items, str) and items.lstrip().startswith("["):
        # A CSV export holds the list as JSON text.
        try:
            items = json.loads(items)
        except json.JSONDecodeError:
            raise record.error("the message list is not valid JSON", field=field) from None
    if not isinstance(items, list) or not items:
        raise record.error("expected a non-empty list of messages", field=field)
    out = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict) or role_key not in item or content_key not in item:
            raise record.error(f"message {i} needs '{role_key}' and '{content_key}'", field=field)
        role = ROLES.get(str(item[role_key]).lower())
        if role is None:
            raise record.error(
                f"message {i} has unknown role '{item[role_key]}'",
                field=field,
                hint="roles are system, user and assistant",
            )
        content = item[content_key]
        if not isinstance(content, str):
            raise record.error(f"message {i} content must be text", field=field)
        out.append({"role": role, "content": content})
    return out


def _conversation(record: Record, cfg: RunConfig, field: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    if not any(m["role"] == "assistant" for m in messages):
        raise record.error("the conversation has no assistant turn to learn from", field=field)
    while messages[-1]["role"] != "assistant":  # a trailing user turn has no answer to train on
        messages = messages[:-1]
    return {"messages": with_default_system(messages, cfg)}


def messages_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """OpenAI chat format: ``messages`` = [{"role", "content"}, ...], system prompts and many turns."""
    field = cfg.dataset.messages_column
    if field not in record.data:
        raise record.error(f"column '{field}' not found", field=field)
    return _conversation(record, cfg, field, _message_list(record, field, record.data[field], "role", "content"))


def sharegpt_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """ShareGPT: ``conversations`` = [{"from": "human"|"gpt"|"system", "value"}, ...]."""
    field = "conversations"
    if field not in record.data:
        raise record.error(f"column '{field}' not found", field=field)
    return _conversation(record, cfg, field, _message_list(record, field, record.data[field], "from", "value"))


def text_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Raw text for continued pre-training: every token is trained."""
    return {"text": cell_text(record, cfg.dataset.text_column)}


def classification_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Text column(s) joined by newlines, and the label(s) as text.

    A list in the label column, or a string split by ``dataset.label_delimiter``, makes a multi-label row.
    """
    ds = cfg.dataset
    text = "\n".join(cell_text(record, column) for column in ds.prompt_column)
    if ds.label_column in record.data and isinstance(record.data[ds.label_column], list):
        labels = [str(v).strip() for v in record.data[ds.label_column] if str(v).strip()]
        return {"text": text, "label": sorted(set(labels))}
    label = cell_text(record, ds.label_column).strip()
    if ds.label_delimiter:
        return {"text": text, "label": sorted({p.strip() for p in label.split(ds.label_delimiter) if p.strip()})}
    if not label:
        raise record.error("label is empty", field=ds.label_column, hint="every row needs a label")
    return {"text": text, "label": label}


# ---------------------------------------------------------------------------------------------------------- preference
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh_dialogue(text: str) -> list[dict[str, str]]:
    """Messages of an Anthropic HH dialogue ``\\n\\nHuman: ...\\n\\nAssistant: ...``."""
    parts = HH_TURN.split(text)
    messages = []
    for i in range(1, len(parts) - 1, 2):
        messages.append({"role": "user" if parts[i] == "Human" else "assistant", "content": parts[i + 1].strip()})
    return messages


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """HH style: two whole dialogues sharing everything up to the last assistant turn.

    Returns:
        (shared prompt ending with "Assistant:", chosen answer, rejected answer), or None when they share no
        assistant marker.
    """
    marker = "\n\nAssistant:"
    cut = chosen.rfind(marker)
    while cut != -1:
        prefix = chosen[: cut + len(marker)]
        if rejected.startswith(prefix):
            return prefix, chosen[len(prefix) :].strip(), rejected[len(prefix) :].strip()
        cut = chosen.rfind(marker, 0, cut)
    return None


def preference_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Preference pairs: prompt/chosen/rejected as strings or message lists, or HH whole dialogues."""
    ds = cfg.dataset
    for column in (ds.chosen_column, ds.rejected_column):
        if column not in record.data:
            raise record.error(f"column '{column}' not found", field=column)
    chosen, rejected = record.data[ds.chosen_column], record.data[ds.rejected_column]
    if isinstance(chosen, list) and isinstance(rejected, list):
        c = _message_list(record, ds.chosen_column, chosen, "role", "content")
        r = _message_list(record, ds.rejected_column, rejected, "role", "content")
        if ds.prompt_column[0] in record.data and record.data[ds.prompt_column[0]] is not None:
            prompt = _prompt_messages(record, cfg)
        else:  # whole conversations: the shared leading turns are the prompt
            shared = 0
            while shared < min(len(c), len(r)) - 1 and c[shared] == r[shared]:
                shared += 1
            prompt = c[:shared]
            c, r = c[shared:], r[shared:]
        return _pair(
            record,
            cfg,
            prompt,
            _last_assistant(record, ds.chosen_column, c),
            _last_assistant(record, ds.rejected_column, r),
        )
    chosen_text = cell_text(record, ds.chosen_column)
    rejected_text = cell_text(record, ds.rejected_column)
    if ds.prompt_column[0] in record.data and record.data[ds.prompt_column[0]] is not None:
        return _pair(record, cfg, _prompt_messages(record, cfg), chosen_text, rejected_text)
    split = split_shared_prefix(chosen_text, rejected_text)
    if split is None:
        raise record.error(
            "chosen and rejected share no prompt and there is no prompt column",
            field=ds.prompt_column[0],
            hint="give a prompt column, or whole dialogues that differ only in the last answer",
        )
    prefix, chosen_answer, rejected_answer = split
    prompt = parse_hh_dialogue(prefix + " ")
    if prompt and prompt[-1]["role"] == "assistant" and not prompt[-1]["content"]:
        prompt = prompt[:-1]
    return _pair(record, cfg, prompt, chosen_answer, rejected_answer)


def _prompt_messages(record: Record, cfg: RunConfig) -> list[dict[str, str]]:
    value = record.data[cfg.dataset.prompt_column[0]]
    if isinstance(value, list):
        return _message_list(record, cfg.dataset.prompt_column[0], value, "role", "content")
    return [*_system(record, cfg), {"role": "user", "content": cell_text(record, cfg.dataset.prompt_column[0])}]


def _last_assistant(record: Record, field: str, messages: list[dict[str, str]]) -> str:
    if not messages or messages[-1]["role"] != "assistant":
        raise record.error("must end with an assistant message", field=field)
    return messages[-1]["content"]


def _pair(record: Record, cfg: RunConfig, prompt: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, Any]:
    if not prompt:
        raise record.error("the preference pair has no prompt", field=cfg.dataset.prompt_column[0])
    return {"prompt": with_default_system(prompt, cfg), "chosen": chosen, "rejected": rejected}


# ---------------------------------------------------------------------------------------------------------- detection
def detect_format(record: Record, cfg: RunConfig) -> str:
    """The format of a record, from its fields (``dataset.format: auto``)."""
    keys = set(record.data)
    ds = cfg.dataset
    if cfg.problem_type in ("classification", "regression"):
        return "classification"
    if ds.chosen_column in keys and ds.rejected_column in keys:
        return "preference"
    if ds.messages_column in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {ds.id_column, ds.parent_id_column} <= keys:
        return "h2o_multiturn"
    configured = set(ds.prompt_column) | {ds.answer_column}
    if {"instruction", "output"} <= keys and ("input" in keys or not configured <= keys):
        return "alpaca"
    if configured <= keys:
        return "columns"
    if ds.text_column in keys and ds.answer_column not in keys:
        return "text"
    return "columns"  # reading the row will name the missing column


BUILDERS: dict[str, Callable[[Record, RunConfig], dict[str, Any]]] = {
    "columns": columns_example,
    "alpaca": alpaca_example,
    "messages": messages_example,
    "sharegpt": sharegpt_example,
    "text": text_example,
    "classification": classification_example,
    "preference": preference_example,
}


class ExampleReader:
    """Reads a data source as canonical examples of one format (detected from the first record when 'auto').

    Args:
        cfg: the run config.
        source: the data source (a path, glob, list or hub name).
    """

    def __init__(self, cfg: RunConfig, source: Any):
        self.cfg = cfg
        self.source = source
        self.format = cfg.dataset.format
        self._chains: dict[str, tuple[str | None, str, str]] | None = None

    def records(self) -> Iterator[Record]:
        return iter_records(self.source, text_mode=self.cfg.dataset.text_mode)

    def __iter__(self) -> Iterator[tuple[Record, dict[str, Any]]]:
        for record in self.records():
            if self.format == "auto":
                self.format = detect_format(record, self.cfg)
                self._check_pairs(record)
            yield record, self.example(record)

    def _check_pairs(self, record: Record) -> None:
        """Reward models and DPO train on preference pairs: other data is refused naming the columns it has."""
        cfg, ds = self.cfg, self.cfg.dataset
        if cfg.problem_type in ("reward", "dpo") and self.format != "preference":
            raise record.error(
                f"{cfg.problem_type} trains on preference pairs, and this row has no '{ds.chosen_column}' and "
                f"'{ds.rejected_column}' columns (columns are: {', '.join(list(record.data)[:12])})",
                field=ds.chosen_column,
                hint="set dataset.chosen_column and dataset.rejected_column",
            )

    def example(self, record: Record) -> dict[str, Any]:
        if self.cfg.problem_type == "rl":  # online RL samples its own answers: prompts (and references) only
            return prompt_only_example(record, self.cfg)
        if self.format == "h2o_multiturn":
            return self._chained(record)
        example = BUILDERS[self.format](record, self.cfg)
        if self.format == "preference" and self.cfg.problem_type == "causal_lm":
            # Supervised fine-tuning on preference data trains on the chosen answers (the first step of RLHF).
            return {"messages": [*example["prompt"], {"role": "assistant", "content": example["chosen"]}]}
        return example

    def _chained(self, record: Record) -> dict[str, Any]:
        """H2O multi-turn: each row's conversation is its chain of parents (by id / parent_id), then its own turn."""
        from tunelab.data.chains import build_chains, chain_messages  # the chain logic and its options live there

        if self._chains is None:
            self._chains = build_chains(self.records(), self.cfg, columns_example)
        return {"messages": [*_system(record, self.cfg), *chain_messages(record, self.cfg, self._chains)]}


def check_file(source: Any, cfg: RunConfig) -> tuple[int, str]:
    """Read every row of ``source`` as the config says to.

    Returns:
        (row count, format used).

    Raises:
        DataError: naming the first bad row and field.
    """
    reader = ExampleReader(cfg, source)
    count = sum(1 for _ in reader)
    return count, reader.format


def prompt_only_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """A record for prediction: the prompt (all turns before the answer); the answer/label as reference if present."""
    ds = cfg.dataset
    if cfg.problem_type in ("classification", "regression"):
        text = "\n".join(cell_text(record, column) for column in ds.prompt_column)
        reference = cell_text(record, ds.label_column, required=False) if ds.label_column in record.data else None
        return {"text": text, "reference": reference}
    fmt = ds.format if ds.format != "auto" else detect_format(record, cfg)
    if fmt == "preference":
        pair = preference_example(record, cfg)
        if cfg.problem_type == "reward":  # score both answers
            return pair
        return {"messages": pair["prompt"], "reference": pair["chosen"]}
    if cfg.problem_type == "reward":  # a prompt and one answer to score
        if fmt not in BUILDERS or fmt in ("text", "h2o_multiturn"):
            raise record.error(
                "a reward model scores a prompt and an answer, or a preference pair",
                field=ds.answer_column,
                hint="give prompt_column and answer_column, messages, or chosen/rejected columns",
            )
        messages = BUILDERS[fmt](record, cfg)["messages"]
        return {"prompt": messages[:-1], "answer": messages[-1]["content"], "reference": None}
    if fmt in ("messages", "sharegpt", "alpaca") or (fmt == "columns" and ds.answer_column in record.data):
        messages = BUILDERS[fmt](record, cfg)["messages"]
        return {"messages": messages[:-1], "reference": messages[-1]["content"]}
    prompt = "\n".join(cell_text(record, column) for column in ds.prompt_column)
    return {"messages": [*_system(record, cfg), {"role": "user", "content": prompt}], "reference": None}


def require(condition: bool, what: str, **where: Any) -> None:
    """Raise a DataError with ``what`` unless ``condition``."""
    if not condition:
        raise DataError(what, **where)
