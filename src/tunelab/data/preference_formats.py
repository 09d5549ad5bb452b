"""Preference-shaped rows: pairs (explicit or implicit prompt, alpaca and sharegpt preference, Anthropic HH dialogues),
unpaired preference (one answer with a good/bad label) and TRL's stepwise supervision.

A pair becomes ``{"prompt": [messages], "chosen": str, "rejected": str}``; an unpaired row
``{"prompt": [messages], "completion": str, "label": bool}``; a stepwise row
``{"prompt": [messages], "completions": [str], "labels": [bool]}``.
"""

from __future__ import annotations

import re
from typing import Any

from tunelab.config import RunConfig
from tunelab.data.cells import cell_text, conversation_messages, system_messages, with_default_system
from tunelab.data.messages import json_cell, normalise_messages
from tunelab.data.readers import Record

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


def _is_message_cell(value: Any) -> bool:
    value = json_cell(Record({}, ""), "", value) if isinstance(value, str) and value.lstrip()[:1] in "[{" else value
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and isinstance(value[0], dict))


def prompt_messages(record: Record, cfg: RunConfig) -> list[dict[str, Any]] | None:
    """The prompt of a preference-like row: a prompt column (text or messages), alpaca instruction/input, or
    sharegpt conversations; None when the row has none (the prompt is then implicit in chosen/rejected)."""
    ds = cfg.dataset
    column = ds.prompt_column[0]
    if column in record.data and record.data[column] is not None:
        value = record.data[column]
        if _is_message_cell(value):
            return normalise_messages(record, column, value)
        text = "\n".join(cell_text(record, c) for c in ds.prompt_column if c in record.data)
        return [*system_messages(record, cfg), {"role": "user", "content": text}]
    if "conversations" in record.data:
        items = json_cell(record, "conversations", record.data["conversations"])
        role_key = "from" if items and isinstance(items, list) and "from" in items[0] else "role"
        content_key = "value" if role_key == "from" else "content"
        return [
            *system_messages(record, cfg),
            *normalise_messages(record, "conversations", items, role_key, content_key),
        ]
    if "instruction" in record.data:
        text = cell_text(record, "instruction")
        extra = cell_text(record, "input", required=False) if "input" in record.data else ""
        return [*system_messages(record, cfg), {"role": "user", "content": f"{text}\n\n{extra}" if extra else text}]
    return None


def _answer_messages(record: Record, column: str) -> list[dict[str, Any]]:
    value = json_cell(record, column, record.data[column])
    first = value if isinstance(value, dict) else value[0]
    role_key, content_key = ("from", "value") if "from" in first else ("role", "content")
    return normalise_messages(record, column, value, role_key, content_key)


def preference_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Preference pairs: prompt/chosen/rejected as strings or message lists, or HH whole dialogues."""
    ds = cfg.dataset
    for column in (ds.chosen_column, ds.rejected_column):
        if column not in record.data:
            raise record.error(f"column '{column}' not found", field=column)
    prompt = prompt_messages(record, cfg)
    chosen, rejected = record.data[ds.chosen_column], record.data[ds.rejected_column]
    if _is_message_cell(chosen) and _is_message_cell(rejected):
        c = _answer_messages(record, ds.chosen_column)
        r = _answer_messages(record, ds.rejected_column)
        if prompt is None:  # whole conversations: the shared leading turns are the prompt
            shared = 0
            while shared < min(len(c), len(r)) - 1 and c[shared] == r[shared]:
                shared += 1
            prompt, c, r = c[:shared], c[shared:], r[shared:]
        return _pair(
            record,
            cfg,
            prompt,
            _last_assistant(record, ds.chosen_column, c),
            _last_assistant(record, ds.rejected_column, r),
        )
    chosen_text = cell_text(record, ds.chosen_column)
    rejected_text = cell_text(record, ds.rejected_column)
    if prompt is not None:
        return _pair(record, cfg, prompt, chosen_text, rejected_text)
    split = split_shared_prefix(chosen_text, rejected_text)
    if split is not None:  # Anthropic HH dialogues
        prefix, chosen_answer, rejected_answer = split
        messages = parse_hh_dialogue(prefix + " ")
        if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages = messages[:-1]
        return _pair(record, cfg, messages, chosen_answer, rejected_answer)
    prefix = common_text_prefix(chosen_text, rejected_text)
    if not prefix.strip():
        raise record.error(
            "chosen and rejected share no prompt and there is no prompt column",
            field=ds.prompt_column[0],
            hint="give a prompt column, or whole texts that share their beginning (the prompt) and differ after it",
        )
    answers = chosen_text[len(prefix) :].strip(), rejected_text[len(prefix) :].strip()
    return _pair(record, cfg, [{"role": "user", "content": prefix.strip()}], *answers)


def common_text_prefix(a: str, b: str) -> str:
    """TRL's implicit prompt of two plain texts: their common beginning, cut back to a word boundary."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n < min(len(a), len(b)) and not a[n - 1 : n].isspace():
        n = a.rfind(" ", 0, n) + 1
    return a[:n]


def _last_assistant(record: Record, field: str, messages: list[dict[str, Any]]) -> str:
    if not messages or messages[-1]["role"] != "assistant":
        raise record.error("must end with an assistant message", field=field)
    return messages[-1]["content"]


def _pair(record: Record, cfg: RunConfig, prompt: list[dict[str, Any]], chosen: str, rejected: str) -> dict[str, Any]:
    if not prompt:
        raise record.error("the preference pair has no prompt", field=cfg.dataset.prompt_column[0])
    return {"prompt": with_default_system(prompt, cfg), "chosen": chosen, "rejected": rejected}


def _bool(record: Record, field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise record.error(f"expected true or false, got {value!r}", field=field)


def unpaired_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """TRL's unpaired preference (prompt, completion, label) or LLaMA-Factory's KTO rows (messages + label)."""
    label = _bool(record, "label", record.data.get("label"))
    if "completion" in record.data:
        prompt = prompt_messages(record, cfg) or []
        value = record.data["completion"]
        completion = (
            _last_assistant(record, "completion", _answer_messages(record, "completion"))
            if _is_message_cell(value)
            else cell_text(record, "completion")
        )
    else:
        messages = conversation_messages(record, cfg)
        prompt, completion = messages[:-1], _last_assistant(record, cfg.dataset.messages_column, messages)
    if not prompt:
        raise record.error("the row has no prompt", field=cfg.dataset.prompt_column[0])
    return {"prompt": prompt, "completion": completion, "label": label}


def stepwise_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """TRL's stepwise supervision: a prompt, its reasoning steps (``completions``) and one label per step."""
    steps = json_cell(record, "completions", record.data.get("completions"))
    labels = json_cell(record, "labels", record.data.get("labels"))
    if not (isinstance(steps, list) and steps and all(isinstance(s, str) for s in steps)):
        raise record.error("completions must be a non-empty list of step texts", field="completions")
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise record.error(f"labels must be a list with one label per step ({len(steps)})", field="labels")
    prompt = prompt_messages(record, cfg)
    if not prompt:
        raise record.error("the row has no prompt", field="prompt")
    return {"prompt": prompt, "completions": steps, "labels": [_bool(record, "labels", v) for v in labels]}
