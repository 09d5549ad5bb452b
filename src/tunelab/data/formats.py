"""Formats: turn a raw record into the canonical example of a problem type.

Canonical examples are plain dicts:

- causal LM: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- classification: ``{"text": str, "label": str}``

Every problem is a ``DataError`` naming the file, row and field.
"""

from __future__ import annotations

from typing import Any

from tunelab.config import RunConfig
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


def causal_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """A prompt/answer record as a conversation: optional system, one user turn, one assistant turn."""
    ds = cfg.dataset
    prompt = "\n".join(cell_text(record, column) for column in ds.prompt_column)
    answer = cell_text(record, ds.answer_column)
    messages = []
    if ds.system_column:
        system = cell_text(record, ds.system_column, required=False)
        if system:
            messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def classification_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Text column(s) joined by newlines, and the label as text (classes are inferred from all labels)."""
    ds = cfg.dataset
    text = "\n".join(cell_text(record, column) for column in ds.prompt_column)
    label = cell_text(record, ds.label_column).strip()
    if not label:
        raise record.error("label is empty", field=ds.label_column, hint="every row needs a label")
    return {"text": text, "label": label}


def prompt_only_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """A record for prediction: the prompt columns only (answer/label used as reference when present)."""
    ds = cfg.dataset
    prompt = "\n".join(cell_text(record, column) for column in ds.prompt_column)
    ref_column = ds.label_column if cfg.problem_type == "classification" else ds.answer_column
    reference = cell_text(record, ref_column, required=False) if ref_column in record.data else None
    messages = []
    if ds.system_column and ds.system_column in record.data:
        system = cell_text(record, ds.system_column, required=False)
        if system:
            messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return {"messages": messages, "text": prompt, "reference": reference}


# How each problem type reads a raw record (used to check data without loading a model).
EXAMPLE_BUILDERS = {"causal_lm": causal_example, "classification": classification_example}


def check_file(path: str, cfg: RunConfig) -> int:
    """Read every row of ``path`` as the config says to; returns the row count.

    Raises:
        DataError: naming the first bad row and field.
    """
    from tunelab.data.readers import iter_records

    build = EXAMPLE_BUILDERS[cfg.problem_type]
    count = 0
    for record in iter_records(path):
        build(record, cfg)
        count += 1
    return count
