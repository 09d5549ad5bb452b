"""Formats: turn a raw record into the canonical example of a problem type.

Canonical examples are plain dicts (their *kind*, see ``data/shapes.py``):

- conversation: ``{"messages": [{"role", "content", ...}], "tools": [...]?}`` (see ``data/messages.py``)
- text (continued pre-training): ``{"text": str}``
- segments (Axolotl input_output): ``{"segments": [{"text": str, "train": bool}, ...]}``
- labelled (classification): ``{"text": str, "label": str | [str, ...]}``, plus ``"text_pair"`` for sentence pairs
- pair / unpaired / stepwise: see ``data/preference_formats.py``
- prompt (online RL, prediction): ``{"messages": [...], "reference": str | None}``

The format is detected from a sample of rows (``dataset.format: auto``, ``data/shapes.py``) or set explicitly. Every
problem is a ``DataError`` naming the file, row and field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from tunelab.config import RunConfig
from tunelab.data.cells import cell_text, conversation_messages, system_messages, with_default_system
from tunelab.data.messages import is_trained, json_cell, normalise_messages, tools_cell
from tunelab.data.preference_formats import (  # noqa: F401  (parse_hh_dialogue, split_shared_prefix: re-exported)
    parse_hh_dialogue,
    preference_example,
    prompt_messages,
    split_shared_prefix,
    stepwise_example,
    unpaired_example,
)
from tunelab.data.readers import Record, iter_records
from tunelab.data.shapes import FORMAT_KINDS, KIND_TITLES, SAMPLE_ROWS, Detection, detect_shape
from tunelab.errors import DataError

# Spellings of a missing value in label cells (pandas, R, SQL and JSON exports).
MISSING_LABELS = frozenset({"", "nan", "none", "null", "na", "n/a", "<na>"})
CONVERSATION_FORMATS = ("columns", "alpaca", "messages", "sharegpt", "h2o_multiturn")
_system = system_messages  # the name the parent-id chaining uses


# ---------------------------------------------------------------------------------------------------------- formats
def columns_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Prompt column(s) and an answer column as one user turn and one assistant turn; TRL's conversational
    prompt/completion (message lists in both cells) as the whole conversation."""
    ds = cfg.dataset
    first = record.data.get(ds.prompt_column[0])
    answer = record.data.get(ds.answer_column)
    if isinstance(json_cell(record, ds.prompt_column[0], first), list) and ds.answer_column in record.data:
        prompt = normalise_messages(record, ds.prompt_column[0], first)
        completion = normalise_messages(record, ds.answer_column, answer)
        return _conversation(record, cfg, ds.answer_column, [*system_messages(record, cfg), *prompt, *completion])
    prompt_text = "\n".join(cell_text(record, column) for column in ds.prompt_column)
    return {
        "messages": [
            *system_messages(record, cfg),
            {"role": "user", "content": prompt_text},
            {"role": "assistant", "content": cell_text(record, ds.answer_column)},
        ]
    }


def alpaca_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Alpaca: instruction (+ input) -> output, with optional system and history of [user, assistant] pairs."""
    instruction = cell_text(record, "instruction")
    extra = cell_text(record, "input", required=False) if "input" in record.data else ""
    messages = system_messages(record, cfg)
    history = json_cell(record, "history", record.data.get("history")) or []
    if not isinstance(history, list):
        raise record.error("history must be a list of [question, answer] pairs", field="history")
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise record.error("history must be a list of [question, answer] pairs", field="history")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": cell_text(record, "output")}]
    return {"messages": messages}


def _conversation(record: Record, cfg: RunConfig, field: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    if not any(is_trained(m) for m in messages):
        what = "an assistant turn" if any(m["role"] == "assistant" for m in messages) else "no assistant turn"
        raise record.error(
            f"the conversation has {what} to learn from"
            if what.startswith("no")
            else "every assistant turn has weight 0: nothing to learn from",
            field=field,
        )
    while not is_trained(messages[-1]):  # turns after the last learned answer teach nothing
        messages = messages[:-1]
    example: dict[str, Any] = {"messages": with_default_system(messages, cfg)}
    tools = tools_cell(record, cfg.dataset.tools_column)
    if tools:
        example["tools"] = tools
    return example


def messages_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """OpenAI chat format and its relatives: ``messages`` = [{"role", "content"}, ...], tools and weights."""
    return _conversation(record, cfg, cfg.dataset.messages_column, conversation_messages(record, cfg))


def sharegpt_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """ShareGPT: ``conversations`` = [{"from": "human"|"gpt"|"system"|"function_call"|"observation", "value"}]."""
    if "conversations" not in record.data:
        raise record.error("column 'conversations' not found", field="conversations")
    return _conversation(record, cfg, "conversations", conversation_messages(record, cfg))


def text_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Raw text for continued pre-training: every token is trained."""
    return {"text": cell_text(record, cfg.dataset.text_column)}


def segments_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Axolotl's input_output: ``segments`` = [{"text": ..., "label": true|false}], trained where label is true."""
    segments = json_cell(record, "segments", record.data.get("segments"))
    if not isinstance(segments, list) or not segments:
        raise record.error("segments must be a non-empty list of {text, label} objects", field="segments")
    out = []
    for i, segment in enumerate(segments, start=1):
        if not (isinstance(segment, dict) and isinstance(segment.get("text"), str)):
            raise record.error(f"segment {i} needs a 'text'", field="segments")
        out.append({"text": segment["text"], "train": bool(segment.get("label", True))})
    if not any(s["train"] for s in out):
        raise record.error("no segment has label true: nothing to learn from", field="segments")
    return {"segments": out}


def classification_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """Text column(s) and the label(s) as text; two text columns are a sentence pair.

    A list in the label column, or a string split by ``dataset.label_delimiter``, makes a multi-label row.
    """
    ds = cfg.dataset
    texts = [cell_text(record, column) for column in ds.prompt_column]
    example: dict[str, Any] = {"text": texts[0] if len(texts) == 2 else "\n".join(texts)}
    if len(texts) == 2:
        example["text_pair"] = texts[1]
    if ds.label_column in record.data and isinstance(record.data[ds.label_column], list):
        labels = [str(v).strip() for v in record.data[ds.label_column] if str(v).strip()]
        return example | {"label": sorted(set(labels))}
    label = cell_text(record, ds.label_column).strip()
    if ds.label_delimiter:
        return example | {"label": sorted({p.strip() for p in label.split(ds.label_delimiter) if p.strip()})}
    if not label:
        raise record.error("label is empty", field=ds.label_column, hint="every row needs a label")
    return example | {"label": label}


def is_missing_label(value: Any) -> bool:
    """Whether a label cell holds no label (null, NaN, or a missing-value spelling such as 'NaN', 'None', 'NA')."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and value.strip().lower() in MISSING_LABELS


def prompt_example(record: Record, cfg: RunConfig) -> dict[str, Any]:
    """TRL's prompt-only rows: the prompt, as text or messages, and no answer."""
    messages = prompt_messages(record, cfg)
    if not messages:
        raise record.error("the row has no prompt", field=cfg.dataset.prompt_column[0])
    return {"messages": with_default_system(messages, cfg), "reference": None}


BUILDERS: dict[str, Callable[[Record, RunConfig], dict[str, Any]]] = {
    "columns": columns_example,
    "alpaca": alpaca_example,
    "messages": messages_example,
    "sharegpt": sharegpt_example,
    "text": text_example,
    "input_output": segments_example,
    "classification": classification_example,
    "preference": preference_example,
    "unpaired_preference": unpaired_example,
    "prompt_only": prompt_example,
    "stepwise": stepwise_example,
}


# ---------------------------------------------------------------------------------------------------------- detection
def detect_format(record: Record, cfg: RunConfig) -> str:
    """The format of one record (``dataset.format: auto``); files are detected from a sample (``detect_source``)."""
    return _for_problem(detect_shape([record], cfg), cfg).format


def _for_problem(detection: Detection, cfg: RunConfig) -> Detection:
    """Problem types that train on labelled rows read every file as text and label columns."""
    if cfg.spec.labelled and detection.format != "classification":
        return Detection("classification", "text and label columns")
    return detection


def row_config(record: Record, cfg: RunConfig) -> tuple[RunConfig, str]:
    """The format of one row and a config with the columns it implies (the given config when it names them)."""
    if cfg.dataset.format != "auto":
        return cfg, cfg.dataset.format
    detection = _for_problem(detect_shape([record], cfg), cfg)
    columns = {k: v for k, v in detection.columns.items() if _is_default(cfg, k)}
    if columns:
        cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update=columns)})
    return cfg, detection.format


def _is_default(cfg: RunConfig, name: str) -> bool:
    """Whether a dataset field still has its default value: detection may fill it in; a chosen value is kept."""
    field = type(cfg.dataset).model_fields[name]
    return getattr(cfg.dataset, name) == field.get_default(call_default_factory=True)


def detect_source(source: Any, cfg: RunConfig) -> Detection:
    """The shape of a data source, from its first rows."""
    sample = list(islice(iter_records(source, text_mode=cfg.dataset.text_mode), SAMPLE_ROWS))
    return _for_problem(detect_shape(sample, cfg), cfg)


def apply_detection(detection: Detection, cfg: RunConfig) -> list[str]:
    """Set the columns detection picked on ``cfg.dataset`` (so the run records them); the notes to show."""
    detection.columns = {k: v for k, v in detection.columns.items() if _is_default(cfg, k)}
    for name, value in detection.columns.items():
        setattr(cfg.dataset, name, value)
    if not detection.columns:
        return []
    fields = ", ".join(f"dataset.{k}" for k in detection.columns)
    return [f"detected {detection.title}: using {detection.describe_columns()} (set {fields} to choose others)"]


def unsuitable(detection: Detection, cfg: RunConfig) -> str | None:
    """Why ``cfg.problem_type`` cannot train on data of this shape, or None when it can."""
    if detection.kind in cfg.spec.data_kinds:
        return None
    suits = detection.problem_types()
    what = f"this data is {detection.title} ({KIND_TITLES[detection.kind]})"
    if not suits:
        return (
            f"{what}, which no problem type trains on yet: it needs a preference loss that takes unpaired data (KTO)"
            if detection.kind == "unpaired"
            else f"{what}, which no problem type trains on yet (stepwise supervision trains process reward models)"
        )
    return f"{what}, which {cfg.problem_type} cannot train on; it suits problem_type {' or '.join(suits)}"


def resolve_data(cfg: RunConfig) -> list[str]:
    """Before any data work: detect the training data's shape, fill in undetermined columns, and use a saved
    DatasetDict's validation (or test) split for validation. Returns the notes to show the user."""
    from tunelab.data.readers import saved_dataset_splits

    ds, notes = cfg.dataset, []
    source = ds.train_dataframe
    if isinstance(source, str) and ds.validation_strategy == "automatic" and not ds.validation_dataframe:
        splits = saved_dataset_splits(source)
        held = next((s for s in ("validation", "valid", "dev", "test") if s in splits), None)
        if splits and held:
            train = "train" if "train" in splits else splits[0]
            ds.train_dataframe = f"{source}@{train}"
            ds.validation_strategy, ds.validation_dataframe = "custom", f"{source}@{held}"
            notes.append(f"{source} is a saved DatasetDict: training on its '{train}' split, validating on '{held}'")
    if ds.format == "auto" and ds.train_dataframe:
        notes += apply_detection(detect_source(ds.train_dataframe, cfg), cfg)
    return notes


class ExampleReader:
    """Reads a data source as canonical examples of one format (detected from the first rows when 'auto').

    Args:
        cfg: the run config.
        source: the data source (a path, glob, list or hub name).
    """

    def __init__(self, cfg: RunConfig, source: Any):
        self.cfg = cfg
        self.source = source
        self.format = cfg.dataset.format
        self.detection: Detection | None = None
        self.notes: list[str] = []
        self._chains: dict[str, tuple[str | None, str, str]] | None = None

    def records(self) -> Iterator[Record]:
        return iter_records(self.source, text_mode=self.cfg.dataset.text_mode)

    def detect(self) -> Detection:
        """The shape of the source (and the columns it implies, set on the config)."""
        if self.detection is None:
            if self.format == "auto":
                self.detection = detect_source(self.source, self.cfg)
                self.notes = apply_detection(self.detection, self.cfg)
            else:
                self.detection = Detection(self.format, f"dataset.format '{self.format}'")
            self.format = self.detection.format
        return self.detection

    def __iter__(self) -> Iterator[tuple[Record, dict[str, Any]]]:
        checked = False
        missing: list[int] = []
        for record in self.records():
            if not checked:
                if not self.detect().known and not self._configured_columns(record):
                    raise record.error(
                        f"no data shape tunelab knows has the columns {', '.join(list(record.data)[:12]) or '(none)'}",
                        field="dataset.format",
                        hint="name them with dataset.prompt_column and dataset.answer_column (or text_column, "
                        "messages_column, chosen_column/rejected_column), or set dataset.format; "
                        "`tunelab data inspect FILE` shows what each shape looks like",
                    )
                reason = unsuitable(self.detect(), self.cfg)
                if reason:
                    raise record.error(reason, field="problem_type", hint=self._hint())
                checked = True
            # After detection: it may have picked the label column.
            if self.format == "classification" and is_missing_label(record.data.get(self.cfg.dataset.label_column)):
                missing.append(record.position)
                continue
            yield record, self.example(record)
        if missing:
            self._missing_labels(missing)

    def _missing_labels(self, rows: list[int]) -> None:
        """Rows without a label: left out with a note (``drop_missing_labels``), else one error naming them."""
        ds = self.cfg.dataset
        shown = ", ".join(str(r) for r in rows[:10]) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        if ds.drop_missing_labels:
            note = f"left out {len(rows)} rows without a label (dataset.drop_missing_labels): rows {shown}"
            self.notes.append(note)
            return
        raise DataError(
            f"{len(rows)} rows have no label (empty, NaN, None, null or NA): rows {shown}",
            file=str(self.source),
            field=ds.label_column,
            hint="fill them in, or set dataset.drop_missing_labels: true to leave them out",
        )

    def _configured_columns(self, record: Record) -> bool:
        ds = self.cfg.dataset
        return bool(set(ds.prompt_column) & set(record.data)) or ds.answer_column in record.data

    def _hint(self) -> str:
        others = ", ".join(self.detection.others) if self.detection and self.detection.others else ""
        hint = "set problem_type to one that suits the data"
        return hint + (f", or dataset.format to read it as {others}" if others else "")

    def example(self, record: Record) -> dict[str, Any]:
        kind = FORMAT_KINDS.get(self.format, "conversation")
        if "prompt" in self.cfg.spec.data_kinds:  # online RL samples its own answers
            return prompt_only_example(record, self.cfg, self.format)
        if self.format == "h2o_multiturn":
            return self._chained(record)
        example = BUILDERS[self.format](record, self.cfg)
        if kind == "pair" and "conversation" in self.cfg.spec.data_kinds:
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


def prompt_only_example(record: Record, cfg: RunConfig, fmt: str = "auto") -> dict[str, Any]:
    """A record for prediction or online RL: the prompt (every turn before the answer), and the answer or label as
    the reference when the row has one."""
    ds = cfg.dataset
    fmt = fmt if fmt != "auto" else ds.format if ds.format != "auto" else detect_format(record, cfg)
    kind = FORMAT_KINDS.get(fmt, "conversation")
    if kind == "labelled":
        labelled = ds.label_column in record.data and not is_missing_label(record.data[ds.label_column])
        example = classification_example(record, cfg) if labelled else None
        if example is None:
            texts = [cell_text(record, column) for column in ds.prompt_column]
            example = {"text": texts[0], "text_pair": texts[1]} if len(texts) == 2 else {"text": "\n".join(texts)}
        reference = None if is_missing_label(record.data.get(ds.label_column)) else example.pop("label", None)
        example.pop("label", None)
        return example | {"reference": reference if not isinstance(reference, list) else "|".join(reference)}
    if kind == "pair":
        pair = preference_example(record, cfg)
        if cfg.spec.scores_answers:  # a reward model scores both answers
            return pair
        return {"messages": pair["prompt"], "reference": pair["chosen"]}
    if kind in ("prompt", "stepwise", "unpaired"):
        return {"messages": with_default_system(prompt_messages(record, cfg) or [], cfg), "reference": None}
    if cfg.spec.scores_answers:  # a prompt and one answer to score
        if kind != "conversation" or fmt == "h2o_multiturn":
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
    if kind in ("text", "segments"):
        raise record.error("raw text has no prompt to answer", hint="give prompt rows (a prompt column or messages)")
    prompt = "\n".join(cell_text(record, column) for column in ds.prompt_column)
    return {"messages": [*system_messages(record, cfg), {"role": "user", "content": prompt}], "reference": None}


def require(condition: bool, what: str, **where: Any) -> None:
    """Raise a DataError with ``what`` unless ``condition``."""
    if not condition:
        raise DataError(what, **where)
