"""LLaMA-Factory's datasets: the names in a training config, looked up in ``dataset_dir/dataset_info.json``.

An entry's file (or hub dataset), formatting (alpaca / sharegpt), columns, tags and ranking become tunelab's data
source, format and column fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.importers.common import Mapper, number, shown_path

FORMATS_OF_ENTRY = ("file_name", "hf_hub_url", "subset", "split", "formatting", "ranking", "columns", "tags")


def map_datasets(m: Mapper, file: Path, stage: str) -> None:
    """Map the config's ``dataset`` / ``eval_dataset`` names through dataset_info.json to data sources and fields.

    Raises:
        ConfigError: when dataset_info.json is missing or unreadable, or names a dataset it does not have.
    """
    names = _names(m.take("dataset"))
    eval_names = _names(m.take("eval_dataset"))
    folder = str(m.take("dataset_dir") or "data")
    if not names and not eval_names:
        m.notes.append("no dataset named: set dataset.train_dataframe")
        return
    info_path, where = _find_info(folder, file)
    m.notes.append(f"datasets read from {info_path} ({where})")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read dataset_info.json ({exc})", file=str(info_path)) from None
    if not isinstance(info, dict):
        raise ConfigError("dataset_info.json must map dataset names to descriptions", file=str(info_path))
    train = _sources(m, names, info, info_path, stage, "dataset")
    if train:
        m.set("dataset.train_dataframe", train[0] if len(train) == 1 else train, "dataset")
    held = _sources(m, eval_names, info, info_path, stage, "eval_dataset")
    if held:
        m.set("dataset.validation_strategy", "custom", "eval_dataset")
        m.set("dataset.validation_dataframe", held[0] if len(held) == 1 else held, "eval_dataset")
    size = m.take("val_size")
    if size is not None and number(size) > 0 and not held:
        m.set("dataset.validation_size", number(size), "val_size")
    elif not held:
        m.notes.append("val_size unset: LLaMA-Factory evaluates nothing; tunelab holds out dataset.validation_size")


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _find_info(folder: str, file: Path) -> tuple[Path, str]:
    """dataset_info.json in ``folder``: relative to the working directory (where llamafactory-cli runs), else to the
    YAML's folder."""
    candidates = [
        (Path(folder) / "dataset_info.json", "dataset_dir relative to the working directory"),
        (file.parent / folder / "dataset_info.json", "dataset_dir relative to the YAML's folder"),
    ]
    if Path(folder).is_absolute():
        candidates = candidates[:1]
    for path, where in candidates:
        if path.is_file():
            return path, where
    looked = " and ".join(str(path) for path, _ in candidates)
    raise ConfigError(
        f"dataset_info.json not found (looked for {looked})",
        file=str(file),
        field="dataset_dir",
        hint="run the import from LLaMA-Factory's folder, or set dataset_dir to the folder with dataset_info.json",
    )


def _sources(m: Mapper, names: list[str], info: dict, info_path: Path, stage: str, key: str) -> list[str]:
    """The data sources of ``names``; the first dataset's reading settings are mapped, and others that read
    differently are reported."""
    sources: list[str] = []
    first: dict[str, Any] | None = None
    for name in names:
        entry = info.get(name)
        if not isinstance(entry, dict):
            known = ", ".join(list(info)[:12])
            raise ConfigError(
                f"dataset '{name}' is not in {info_path} (it has: {known})",
                field=key,
                hint="add the dataset to dataset_info.json, or correct its name",
            )
        label = f"dataset_info.json[{name}]"
        source = _source_of(entry, info_path.parent)
        if source is None:
            m.leave(
                label,
                "only a ModelScope/Modelers hub, script or cloud file is given; tunelab reads files and "
                "Hugging Face hub datasets",
            )
            continue
        settings = _settings(m, entry, stage, label)
        if first is None:
            first = settings
            for path, value in settings.items():
                m.set(path, value, label)
        elif settings != first:
            m.leave(
                label,
                f"read differently from {names[0]} ({_difference(first, settings)}); tunelab reads one "
                "format per run: convert the file or train on it separately",
            )
            continue
        sources.append(source)
    return sources


def _source_of(entry: dict[str, Any], folder: Path) -> str | None:
    if entry.get("file_name"):
        return shown_path(folder / str(entry["file_name"]))
    if entry.get("hf_hub_url"):
        name = str(entry["hf_hub_url"])
        if entry.get("subset"):
            name += f":{entry['subset']}"
        return name + (f"@{entry['split']}" if entry.get("split") else "")
    return None


def _settings(m: Mapper, entry: dict[str, Any], stage: str, label: str) -> dict[str, Any]:
    """tunelab's dataset fields for one dataset_info.json entry."""
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    for extra in ("kto_tag", "images", "videos", "audios"):
        if columns.get(extra):
            m.leave(f"{label}.columns.{extra}", "tunelab trains on text only (no KTO tags or media)")
    for extra in sorted(set(entry) - set(FORMATS_OF_ENTRY) - {"ms_hub_url", "om_hub_url", "script_url"}):
        m.leave(f"{label}.{extra}", "no tunelab equivalent")
    out: dict[str, Any] = {}
    if columns.get("system"):
        out["dataset.system_column"] = columns["system"]
    if stage == "pt":
        return {"dataset.format": "text", "dataset.text_column": columns.get("prompt", "text")}
    if entry.get("formatting", "alpaca") == "sharegpt":
        field = columns.get("messages", "conversations")
        role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
        user, assistant = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
        if (
            (role, content) not in (("from", "value"), ("role", "content"))
            or user not in ("human", "user")
            or (assistant not in ("gpt", "assistant"))
        ):
            m.leave(
                f"{label}.tags",
                "tunelab reads messages with from/value or role/content keys and the roles "
                "human/user, gpt/assistant, system",
            )
        if columns.get("tools"):
            out["dataset.tools_column"] = columns["tools"]
        if entry.get("ranking"):
            return {**out, "dataset.format": "preference", "dataset.prompt_column": [field], **_pair(columns)}
        fmt = "messages" if role == "role" else "sharegpt"
        return {**out, "dataset.format": fmt, "dataset.messages_column": field}
    prompt, response = columns.get("prompt", "instruction"), columns.get("response", "output")
    if entry.get("ranking"):
        prompts = [prompt] + ([columns["query"]] if columns.get("query") else [])
        return {**out, "dataset.format": "preference", "dataset.prompt_column": prompts, **_pair(columns)}
    default_columns = prompt == "instruction" and response == "output" and columns.get("query", "input") == "input"
    if default_columns and columns.get("history", "history") == "history":
        return {**out, "dataset.format": "alpaca"}
    if columns.get("history"):
        m.leave(f"{label}.columns.history", "tunelab reads the history of alpaca rows from a 'history' column only")
    prompts = [prompt] + ([columns["query"]] if columns.get("query") else [])
    return {**out, "dataset.format": "columns", "dataset.prompt_column": prompts, "dataset.answer_column": response}


def _pair(columns: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset.chosen_column": columns.get("chosen", "chosen"),
        "dataset.rejected_column": columns.get("rejected", "rejected"),
    }


def _difference(first: dict[str, Any], other: dict[str, Any]) -> str:
    keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
    return ", ".join(f"{k.split('.')[-1]} {other.get(k)!r}" for k in keys)
