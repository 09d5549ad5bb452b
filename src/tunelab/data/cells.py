"""Reading single cells of a record: text, the system prompt, a row's message list."""

from __future__ import annotations

from typing import Any

from tunelab.config import RunConfig
from tunelab.data.messages import json_cell, normalise_messages
from tunelab.data.readers import Record


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
            hint="set the right column name in the dataset section of the config, or leave the column fields at "
            "their defaults so that `tunelab data inspect FILE` can detect them",
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


def system_messages(record: Record, cfg: RunConfig) -> list[dict[str, str]]:
    """The row's system prompt (``system_column``, or a ``system`` column) or ``dataset.system_prompt``."""
    ds = cfg.dataset
    text = ""
    for column in (ds.system_column, "system"):
        if column and column in record.data and record.data[column] is not None:
            text = cell_text(record, column, required=False)
            break
    text = text or ds.system_prompt
    return [{"role": "system", "content": text}] if text else []


def with_default_system(messages: list[dict[str, Any]], cfg: RunConfig) -> list[dict[str, Any]]:
    """Prepend ``dataset.system_prompt`` when the conversation has no system message."""
    if cfg.dataset.system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": cfg.dataset.system_prompt}, *messages]
    return messages


def conversation_messages(record: Record, cfg: RunConfig) -> list[dict[str, Any]]:
    """The messages of a 'messages' (role/content) or 'conversations' (from/value or role/content) row, with a
    ``system`` column of the row put first (LLaMA-Factory's sharegpt keeps the system prompt there)."""
    field = cfg.dataset.messages_column if cfg.dataset.messages_column in record.data else "conversations"
    if field not in record.data:
        raise record.error(f"column '{cfg.dataset.messages_column}' not found", field=cfg.dataset.messages_column)
    items = json_cell(record, field, record.data[field])
    first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    role_key, content_key = ("from", "value") if "from" in first else ("role", "content")
    messages = normalise_messages(record, field, items, role_key, content_key)
    if messages[0]["role"] != "system":
        messages = system_messages(record, cfg) + messages
    return messages
