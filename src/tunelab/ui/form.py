"""The experiment form, generated from the config schema: every field of every section, its description as help text,
its choices from its ``Literal`` type, and validation errors by field path.

The browser sends each field as the text the user typed (``{"training.learning_rate": "2e-4"}``); this module turns
those texts into config data the way ``--set`` does, validates them, and names the field of every problem.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from tunelab.config import SECTIONS, RunConfig, _describe_error, option_fields
from tunelab.errors import ConfigError
from tunelab.problem_spec import problem_types, spec_of, starter_config

# Set by the studio itself (every run goes into the studio's output directory).
HIDDEN = ("output_directory",)


def _args(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    return typing.get_origin(annotation), typing.get_args(annotation)


def _literals(annotation: Any) -> list[Any]:
    """The allowed values of a Literal (or of the Literal members of a union)."""
    origin, args = _args(annotation)
    if origin is Literal:
        return list(args)
    if origin in (typing.Union, types.UnionType):
        return [value for arg in args for value in _literals(arg)]
    return []


def field_kind(annotation: Any) -> tuple[str, list[str]]:
    """How a field is edited: (kind, choices).

    Kinds: bool, choice, number, text, list, text_or_list, open_choice, and yaml (a mapping or any other type: the
    text is read as YAML, e.g. ``{top_k: 3}``).
    """
    origin, args = _args(annotation)
    if annotation is bool:
        return "bool", []
    if annotation in (int, float):
        return "number", []
    if annotation is str:
        return "text", []
    if origin is Literal:
        return "choice", [str(a) for a in args]
    if origin in (list, tuple):
        return "list", [str(a) for a in _literals(args[0])]
    if origin in (typing.Union, types.UnionType):
        literals = [str(a) for a in _literals(annotation)]
        if bool in args:
            return "choice", literals + ["true", "false"]
        if str in args:
            return "text_or_list", []
        return "open_choice", literals  # e.g. int | 'auto'
    return "yaml", []


def _bounds(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"), ("min_length", "at least")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}")
    return ", ".join(parts)


def value_text(value: Any) -> str:
    """A config value as the text shown in its form field."""
    if isinstance(value, dict):
        return json.dumps(value)  # JSON is YAML: it reads back as the same mapping
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
        return json.dumps(list(value)) if any("," in v for v in items) else ", ".join(items)
    return "" if value is None else str(value)


def _field(path: str, field: Any) -> dict[str, Any]:
    kind, choices = field_kind(field.annotation)
    if path == "problem_type":  # a str checked against the problem-type registry: offer what is registered
        kind, choices = "choice", problem_types()
    default = field.get_default(call_default_factory=True)
    return {
        "path": path,
        "name": path.split(".")[-1],
        "kind": kind,
        "choices": choices,
        "default": value_text(default),
        "description": field.description or "",
        "bounds": _bounds(field),
    }


def form_schema() -> dict[str, Any]:
    """Every editable field, grouped: the top-level fields first, then one group per config section."""
    from tunelab.models.load import BUILTIN_MODELS

    top = [_field(name, f) for name, f in RunConfig.model_fields.items() if name not in SECTIONS and name not in HIDDEN]
    groups = [{"name": "basics", "description": "What is trained, on which model, under which name.", "fields": top}]
    for section, model in SECTIONS.items():
        fields = [_field(f"{section}.{name}", f) for name, f in model.model_fields.items()]
        if section == "training":  # each problem type's own fields, shown for that type only
            fields += _option_rows()
        groups.append({"name": section, "description": RunConfig.model_fields[section].description, "fields": fields})
    return {
        "groups": groups,
        "problem_types": problem_types(),
        "backbones": [{"name": name, "description": spec.description} for name, spec in BUILTIN_MODELS.items()],
    }


def _option_rows() -> list[dict[str, Any]]:
    """The problem types' own fields (``ProblemSpec.options``), each with ``problem_types``: those that declare it."""
    rows: dict[str, dict[str, Any]] = {}
    for owner, name, f in option_fields():
        row = rows.setdefault(name, {**_field(f"training.{name}", f), "problem_types": []})
        row["problem_types"].append(owner)
    return list(rows.values())


def _annotations() -> dict[str, Any]:
    out = {name: f.annotation for name, f in RunConfig.model_fields.items() if name not in SECTIONS}
    for section, model in SECTIONS.items():
        out.update({f"{section}.{name}": f.annotation for name, f in model.model_fields.items()})
    out.update({f"training.{name}": f.annotation for _, name, f in option_fields()})
    return out


def _other_types_options(values: dict[str, str]) -> set[str]:
    """The option fields of problem types other than the form's: hidden in the form, so not sent to the config."""
    try:
        spec = spec_of(str(values.get("problem_type") or RunConfig.model_fields["problem_type"].default))
    except ConfigError:
        return set()  # an unknown problem type is reported on its own
    own = spec.options.model_fields if spec.options is not None else {}
    return {f"training.{name}" for _, name, _ in option_fields() if name not in own}


def parse_text(text: str, annotation: Any) -> Any:
    """The value a field's text stands for: strings stay as typed, everything else is read as YAML (like --set)."""
    kind, _ = field_kind(annotation)
    text = text.strip() if kind != "text" else text
    if kind == "text":
        return text
    if kind == "list":
        if text.startswith("["):
            return _yaml(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == "text_or_list":
        return _yaml(text) if text.startswith("[") else text
    if kind == "choice" and bool not in _args(annotation)[1]:
        return text
    return _yaml(text)


def _yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text  # the validator then says what the field expects


def values_to_data(values: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Nested config data from field texts; unknown field paths are reported, not dropped silently."""
    annotations = _annotations()
    hidden = _other_types_options(values)
    data: dict[str, Any] = {}
    unknown = []
    for path, text in values.items():
        if path in hidden:
            continue
        if path not in annotations or path in HIDDEN:
            unknown.append({"field": path, "message": "not a config field"})
            continue
        value = parse_text(str(text), annotations[path])
        section, _, name = path.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    return data, unknown


def check_values(
    values: dict[str, str], output_directory: str, require_data: bool = False
) -> tuple[RunConfig | None, list[dict[str, str]]]:
    """Validate the form: the config, or every problem as ``{"field": dotted path, "message": ...}``.

    Args:
        values: field path -> the text in its form field.
        output_directory: where the studio keeps runs (the form does not choose it).
        require_data: also demand a training file (to plan or start a run; the schema allows none).
    """
    data, problems = values_to_data(values)
    data["output_directory"] = output_directory
    if require_data and not (data.get("dataset") or {}).get("train_dataframe"):
        problems.append({"field": "dataset.train_dataframe", "message": "choose the training data (see Datasets)"})
    if problems:
        return None, problems
    try:
        return RunConfig.model_validate(data), []
    except ValidationError as exc:
        return None, validation_problems(exc)


def validation_problems(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as field paths and messages; the cross-field rules arrive as one 'path: message' per line."""
    out = []
    for err in exc.errors():
        path, message = _describe_error(err)
        if path:
            out.append({"field": path, "message": message})
            continue
        for part in message.split("\n"):
            field, sep, msg = part.partition(": ")
            out.append({"field": field, "message": msg} if sep else {"field": "", "message": field})
    return out


def config_values(data: dict[str, Any]) -> dict[str, str]:
    """Form texts of config data (e.g. a previous run's config.yaml); fields the schema no longer has are left out."""
    annotations = _annotations()
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in SECTIONS:
            out.update({f"{key}.{k}": value_text(v) for k, v in value.items() if f"{key}.{k}" in annotations})
        elif key in annotations and key not in HIDDEN:
            out[key] = value_text(value)
    return out


def default_values(problem_type: str) -> dict[str, str]:
    """The form of a new experiment of ``problem_type``: the schema's defaults, with what ``tunelab config init`` puts
    in for that type (classification and regression read a text and a label column, on the built-in encoder)."""
    try:
        base = starter_config(problem_type)
    except ConfigError:
        base = {"problem_type": problem_type}
    try:
        data = RunConfig.model_validate(base).to_dict()
    except ValidationError:
        data = {**RunConfig.model_construct().model_dump(mode="json"), **base}
    return config_values(data)
