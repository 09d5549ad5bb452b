"""Which shape a data file has, decided from its rows (``dataset.format: auto``).

Detection reads a sample of rows (the first ``SAMPLE_ROWS``) and looks at their field names first, then at their
values where names do not decide (classification data: a label column with few distinct values and a text column with
the longest strings). The order of the rules below is the order of precedence; every other shape that also fits the
rows is reported as an alternative reading, with the ``dataset.format`` value that forces it.

Each shape produces one *kind* of canonical example; problem types declare which kinds they train on
(``ProblemSpec.data_kinds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.config import RunConfig
from tunelab.data.readers import Record
from tunelab.problem_spec import all_specs

SAMPLE_ROWS = 200
# Prompt/answer column names people use, most specific first (a list of prompt columns is joined).
PROMPT_ANSWER_NAMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("context", "question"), "answer"),
    (("question",), "answer"),
    (("question",), "response"),
    (("prompt",), "completion"),
    (("prompt",), "response"),
    (("prompt",), "answer"),
    (("prompt",), "output"),
    (("instruction",), "response"),
    (("instruction",), "output"),
    (("input",), "output"),
    (("query",), "response"),
    (("query",), "answer"),
    (("source",), "target"),
)
LABEL_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "score", "y")
# The kind of canonical example each dataset.format produces.
FORMAT_KINDS = {
    "columns": "conversation",
    "alpaca": "conversation",
    "messages": "conversation",
    "sharegpt": "conversation",
    "h2o_multiturn": "conversation",
    "text": "text",
    "input_output": "segments",
    "preference": "pair",
    "unpaired_preference": "unpaired",
    "prompt_only": "prompt",
    "stepwise": "stepwise",
    "classification": "labelled",
}
KIND_TITLES = {
    "conversation": "conversations (prompt and answer turns)",
    "text": "raw text",
    "segments": "text segments with their own train flags",
    "pair": "preference pairs",
    "unpaired": "unpaired preference (one answer with a good/bad label)",
    "prompt": "prompts without answers",
    "stepwise": "stepwise supervision (reasoning steps with a label each)",
    "labelled": "texts with labels",
}


@dataclass
class Detection:
    """What detection found: the format, a human title, the columns it picked, and other readings."""

    format: str
    title: str
    columns: dict[str, Any] = field(default_factory=dict)  # dataset fields to set, e.g. {"answer_column": "answer"}
    others: list[str] = field(default_factory=list)
    label_counts: dict[str, int] = field(default_factory=dict)
    known: bool = True  # False: no rule matched the field names

    @property
    def kind(self) -> str:
        return FORMAT_KINDS[self.format]

    def problem_types(self) -> list[str]:
        """The problem types that train on this shape (regression only on numeric labels)."""
        numeric = not self.label_counts or all(_is_number(k) for k in self.label_counts)
        return [s.name for s in all_specs() if self.kind in s.data_kinds and (numeric or not s.numeric_labels)]

    def describe_columns(self) -> str:
        return ", ".join(
            f"{k.removesuffix('_column')} {v if isinstance(v, str) else '+'.join(v)}" for k, v in self.columns.items()
        )


def _keys(records: list[Record]) -> set[str]:
    keys: set[str] = set()
    for record in records:
        keys |= set(record.data)
    return keys


def _values(records: list[Record], column: str) -> list[Any]:
    return [r.data.get(column) for r in records if r.data.get(column) is not None]


def _is_messages(values: list[Any], role_key: str = "role") -> bool:
    """Whether cells hold message lists (or one message) with ``role_key``."""
    from tunelab.data.messages import json_cell

    probe = Record({}, "")
    for value in values[:5]:
        try:
            value = json_cell(probe, "", value)
        except Exception:
            return False
        items = [value] if isinstance(value, dict) else value
        if not (isinstance(items, list) and items and isinstance(items[0], dict) and role_key in items[0]):
            return False
    return bool(values)


def _all_bool(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, bool) or str(v).lower() in ("true", "false") for v in values)


def detect_shape(records: list[Record], cfg: RunConfig) -> Detection:
    """The shape of the sampled ``records`` (see the module docstring); the configured columns win."""
    found = _candidates(records, cfg)
    if not found:  # reading a row names the missing column
        return Detection("columns", "no shape tunelab knows", known=False)
    first, *rest = found
    first.others = [d.format for d in rest if d.format != first.format]
    return first


def _candidates(records: list[Record], cfg: RunConfig) -> list[Detection]:
    ds = cfg.dataset
    keys = _keys(records)
    found: list[Detection] = []
    scored = cfg.spec.labelled
    labelled = _labelled(records, cfg, keys, numeric=cfg.spec.numeric_labels)
    if scored and labelled:
        return [labelled]
    if labelled and not (_names_a_label(labelled, ds) or len(keys) == 2):
        labelled = None  # any file has a column with few values: only a named label (or two columns) says 'classes'
    if "segments" in keys:
        found.append(Detection("input_output", "Axolotl input_output (segments with train flags)"))
    if ds.chosen_column in keys and ds.rejected_column in keys:
        found.append(_preference(records, cfg, keys))
    if {"completions", "labels"} <= keys and "prompt" in keys:
        found.append(
            Detection("stepwise", "TRL stepwise supervision (prompt, completions, labels)", _prompt_column(ds, keys))
        )
    if "label" in keys and _all_bool(_values(records, "label")):
        if {"prompt", "completion"} <= keys:
            style = "conversational" if _is_messages(_values(records, "prompt")) else "standard"
            title = f"TRL unpaired preference ({style}: prompt, completion, label)"
            found.append(Detection("unpaired_preference", title, _prompt_column(ds, keys)))
        elif ds.messages_column in keys or "conversations" in keys:
            found.append(Detection("unpaired_preference", "LLaMA-Factory KTO (messages + boolean label)"))
    if ds.messages_column in keys:
        tools = " with tools" if "tools" in keys else ""
        found.append(Detection("messages", f"messages (OpenAI chat / TRL conversational / role-content{tools})"))
    if "conversations" in keys:
        role_key = "from" if _is_messages(_values(records, "conversations"), "from") else "role"
        tools = " with tools" if "tools" in keys else ""
        found.append(
            Detection("sharegpt", f"ShareGPT ({role_key}/{'value' if role_key == 'from' else 'content'}{tools})")
        )
    if {ds.id_column, ds.parent_id_column} <= keys:
        found.append(Detection("h2o_multiturn", "H2O multi-turn (rows chained by id / parent_id)"))
    configured = set(ds.prompt_column) | {ds.answer_column}
    if {"instruction", "output"} <= keys and (configured == {"instruction", "output"} or not configured <= keys):
        extra = [k for k in ("input", "system", "history") if k in keys]
        found.append(Detection("alpaca", "alpaca (instruction" + "".join(f", {k}" for k in extra) + ", output)"))
    columns = _prompt_answer(records, cfg, keys)
    if columns is not None:
        found.append(columns)
    if "prompt" in keys and not columns and ds.chosen_column not in keys:
        style = "conversational" if _is_messages(_values(records, "prompt")) else "standard"
        found.append(Detection("prompt_only", f"TRL prompt-only ({style})", _prompt_column(ds, keys)))
    label_named = labelled is not None and _names_a_label(labelled, ds)
    if labelled and label_named and not scored:
        found.append(labelled)  # a 'text' column beside a 'label' column is classification data, not raw text
    if ds.text_column in keys and not columns:
        found.append(Detection("text", "raw text (TRL language modeling / Axolotl completion)"))
    if labelled and not label_named and not scored:
        found.append(labelled)
    return found


def _names_a_label(detection: Detection, ds: Any) -> bool:
    return str(detection.columns.get("label_column", ds.label_column)).lower() in LABEL_NAMES


def _prompt_column(ds: Any, keys: set[str]) -> dict[str, Any]:
    """TRL's shapes name their prompt 'prompt': use it unless the configured prompt column is there."""
    return {} if ds.prompt_column[0] in keys or "prompt" not in keys else {"prompt_column": ["prompt"]}


def _preference(records: list[Record], cfg: RunConfig, keys: set[str]) -> Detection:
    ds = cfg.dataset
    chosen = _values(records, ds.chosen_column)
    style = "conversational" if _is_messages(chosen) else "standard"
    if "conversations" in keys:
        return Detection("preference", "LLaMA-Factory sharegpt preference (conversations + chosen/rejected)")
    if "instruction" in keys:
        return Detection("preference", "LLaMA-Factory alpaca preference (instruction, input, chosen, rejected)")
    if ds.prompt_column[0] in keys or "prompt" in keys:
        return Detection("preference", f"preference with explicit prompt (TRL {style})", _prompt_column(ds, keys))
    if style == "standard" and any("\n\nHuman:" in str(v) for v in chosen[:5]):
        return Detection("preference", "Anthropic HH dialogues (chosen, rejected; implicit prompt)")
    return Detection("preference", f"preference with implicit prompt (TRL {style}: chosen, rejected)")


def _prompt_answer(records: list[Record], cfg: RunConfig, keys: set[str]) -> Detection | None:
    """The configured prompt/answer columns, or a pair of the usual names."""
    ds = cfg.dataset
    if (set(ds.prompt_column) | {ds.answer_column}) <= keys:
        return Detection("columns", "prompt and answer columns (configured)")
    lower = {k.lower(): k for k in keys}
    for prompts, answer in PROMPT_ANSWER_NAMES:
        if all(p in lower for p in prompts) and answer in lower:
            prompt_columns = [lower[p] for p in prompts]
            style = "conversational" if _is_messages(_values(records, prompt_columns[0])) else "standard"
            title = (
                f"TRL prompt-completion ({style})"
                if prompts == ("prompt",) and answer == "completion"
                else f"prompt and answer columns ({'+'.join(prompt_columns)} -> {lower[answer]})"
            )
            return Detection("columns", title, {"prompt_column": prompt_columns, "answer_column": lower[answer]})
    return None


def _labelled(records: list[Record], cfg: RunConfig, keys: set[str], numeric: bool) -> Detection | None:
    """Classification (or regression) data: a label column and one or two text columns."""
    ds = cfg.dataset
    scalars = [k for k in keys if all(isinstance(v, (str, int, float, bool)) for v in _values(records, k))]
    scalars = [k for k in scalars if _values(records, k)]
    if len(scalars) < 2:
        return None
    configured_label = ds.label_column in keys
    configured_text = set(ds.prompt_column) <= keys
    if configured_label and configured_text:
        return Detection(
            "classification", "text and label columns (configured)", label_counts=_counts(records, ds.label_column)
        )

    def distinct(k: str) -> int:
        return len({str(v).strip() for v in _values(records, k)})

    def mean_length(k: str) -> float:
        values = _values(records, k)
        return sum(len(str(v)) for v in values) / max(len(values), 1)

    n = len(records)
    if configured_label:
        label = ds.label_column
    else:
        named = [k for k in scalars if k.lower() in LABEL_NAMES]
        if numeric:
            pool = [k for k in scalars if all(_is_number(v) for v in _values(records, k))]
        else:
            pool = [k for k in scalars if distinct(k) <= max(2, min(50, n // 3))]
        named = [k for k in named if k in pool]
        if not (named or pool):
            return None
        label = named[0] if named else min(pool, key=lambda k: (distinct(k), mean_length(k)))
    texts = [k for k in scalars if k != label and not all(_is_number(v) for v in _values(records, k))]
    texts = [k for k in texts if k.lower() not in ("id", "idx", "index", ds.id_column)]
    if configured_text:
        text_columns = list(ds.prompt_column)
    else:
        if not texts:
            return None
        texts.sort(key=mean_length, reverse=True)
        long = [k for k in texts if mean_length(k) >= 0.5 * mean_length(texts[0]) and distinct(k) > n // 2]
        text_columns = sorted(long[:2], key=list(records[0].data).index) if len(long) >= 2 else texts[:1]
    columns: dict[str, Any] = {}
    if not configured_text:
        columns["prompt_column"] = text_columns
    if not configured_label:
        columns["label_column"] = label
    pair = " (sentence pairs)" if len(text_columns) == 2 else ""
    title = f"{'regression' if numeric else 'classification'}: text {' + '.join(text_columns)}{pair}, label {label}"
    return Detection("classification", title, columns, label_counts={} if numeric else _counts(records, label))


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _counts(records: list[Record], column: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in _values(records, column):
        counts[str(value).strip()] = counts.get(str(value).strip(), 0) + 1
    return dict(sorted(counts.items()))
