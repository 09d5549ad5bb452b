"""What every importer shares: a ``Mapper`` that sets tunelab fields one at a time (each value checked against the
schema on its own, so one bad value is reported instead of failing the whole import) and records every source field
it could not map, with the reason."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunelab.config import SECTIONS, option_fields
from tunelab.problem_spec import spec_of

# Hugging Face Trainer / Axolotl optimizer names with the same algorithm in tunelab.
OPTIMIZERS = {
    "adamw_torch": "AdamW",
    "adamw_torch_fused": "AdamW",
    "adamw_hf": "AdamW",
    "adamw": "AdamW",
    "adam": "Adam",
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "adadelta": "Adadelta",
    "adafactor": "Adafactor",
    "adamw_bnb_8bit": "AdamW8bit",
    "adamw_8bit": "AdamW8bit",
    "paged_adamw_32bit": "PagedAdamW",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "lion_32bit": "Lion",
}
# Learning-rate schedules after warm-up, by their transformers names.
SCHEDULES = {"cosine": "Cosine", "linear": "Linear", "constant": "Constant", "constant_with_warmup": "Constant"}
# Chat templates tunelab has built in (dataset.chat_template), by the names LLaMA-Factory and Axolotl use.
TEMPLATES = {"chatml": "chatml", "llama3": "llama3", "zephyr": "zephyr", "alpaca": "alpaca"}


def is_unset(value: Any) -> bool:
    """Whether a source value means 'not set' (YAML null, an empty string, list or mapping, H2O's 'None')."""
    return value is None or value == "None" or (isinstance(value, (str, list, dict, tuple)) and len(value) == 0)


def number(value: Any) -> float:
    """A number from YAML, which reads 2e-4 (no dot) as a string."""
    if isinstance(value, bool):
        raise ValueError("a number was expected")
    result = float(value)
    if math.isnan(result):
        raise ValueError("a number was expected")
    return result


def whole(value: Any) -> int:
    """A whole number (3.0 counts; 2.5 does not)."""
    result = number(value)
    if not result.is_integer():
        raise ValueError(f"{value} is not a whole number")
    return int(result)


def flag(value: Any) -> bool:
    """A yes/no value ('true'/'false' strings too)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{value!r} is not true or false")


def run_location(output_dir: str) -> tuple[str, str]:
    """``output_directory`` and ``experiment_name`` whose run directory is ``output_dir`` (the name made safe)."""
    path = Path(str(output_dir).rstrip("/\\") or ".")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.name).strip("-.") or "imported"
    if not name[0].isalnum():
        name = "run-" + name
    return str(path.parent), name


def shown_path(path: Path) -> str:
    """A path for the written config: relative to the working directory when it lies inside it, else absolute."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(absolute)


class Mapper:
    """Collects tunelab fields from a source config, and what could not be mapped.

    Args:
        source: the source config's data (top-level mapping, or one H2O section).
        file: the source file, for messages.
    """

    def __init__(self, source: dict[str, Any], file: str):
        self.source = source
        self.file = file
        self.data: dict[str, Any] = {}
        self.paths: list[str] = []  # mapped tunelab fields, in the order they were set
        self.left_out: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.done: set[str] = set()  # source keys dealt with (mapped or reported)

    def get(self, key: str, default: Any = None) -> Any:
        """A source value; None when unset."""
        value = self.source.get(key, default)
        return default if is_unset(value) else value

    def take(self, key: str) -> Any:
        """A source value, marking the key as dealt with; None when unset."""
        self.done.add(key)
        return self.get(key)

    def set(self, path: str, value: Any, key: str | None = None, convert: Callable[[Any], Any] | None = None) -> bool:
        """Set tunelab field ``path`` (``section.field`` or a top-level field) to ``value``.

        The value is checked against the field's type and bounds; when it does not fit, ``key`` is reported as left
        out with tunelab's reason instead. Returns whether the field was set.
        """
        if key is not None:
            self.done.add(key)
        label = key or path
        try:
            value = convert(value) if convert is not None else value
        except (TypeError, ValueError) as exc:
            self.leave(label, f"{value!r} does not fit tunelab's {path}: {exc}")
            return False
        section, _, name = path.rpartition(".")
        if section:
            model = SECTIONS[section]
            if section == "training" and name not in model.model_fields:  # a problem type's own field
                model = next((spec_of(owner).options for owner, n, _ in option_fields() if n == name), model)
            if name not in model.model_fields:
                self.leave(label, f"this tunelab version has no {path}")
                return False
            try:
                model.model_validate({name: value})
            except ValidationError as exc:
                message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                self.leave(label, f"{value!r} does not fit tunelab's {path}: {message}")
                return False
            self.data.setdefault(section, {})[name] = value
        else:
            self.data[name] = value
        if path not in self.paths:
            self.paths.append(path)
        return True

    def has(self, path: str) -> bool:
        """Whether ``path`` was set."""
        return path in self.paths

    def value(self, path: str, default: Any = None) -> Any:
        """The value set for ``path`` (``default`` when unset)."""
        section, _, name = path.rpartition(".")
        return (self.data.get(section, {}) if section else self.data).get(name, default)

    def leave(self, key: str, reason: str) -> None:
        """Report source field ``key`` as not mapped, with ``reason``."""
        self.done.add(key)
        if all(k != key for k, _ in self.left_out):
            self.left_out.append((key, reason))

    def copy(self, table: dict[str, tuple[str, Callable[[Any], Any] | None]]) -> None:
        """Map every set source key of ``table`` (key: (tunelab path, converter)) one to one."""
        for key, (path, convert) in table.items():
            value = self.take(key)
            if value is not None:
                self.set(path, value, key, convert)

    def explain(self, reasons: dict[str, str], prefix: str = "") -> None:
        """Report the set source keys of ``reasons`` as left out, with their reasons (a feature switched off, i.e.
        ``false`` or 0, needs no tunelab equivalent)."""
        for key, reason in reasons.items():
            value = self.get(key)
            if key not in self.done and value is not None:
                self.done.add(key)
                if not (value is False or (isinstance(value, (int, float)) and value == 0)):
                    self.leave(prefix + key, reason)

    def finish(self, prefix: str = "") -> None:
        """Report every remaining set source key (but switched-off features) as having no tunelab equivalent."""
        for key, value in self.source.items():
            if key not in self.done and not is_unset(value) and value is not False:
                self.leave(prefix + key, "no tunelab equivalent")


def optimizer_of(name: str) -> str:
    """tunelab's optimizer for a transformers / Axolotl optimizer name."""
    if name.lower() not in OPTIMIZERS:
        raise ValueError(f"tunelab has no optimizer '{name}' (it has {', '.join(sorted(set(OPTIMIZERS.values())))})")
    return OPTIMIZERS[name.lower()]


def schedule_of(name: str) -> str:
    """tunelab's schedule for a transformers scheduler name."""
    if name.lower() not in SCHEDULES:
        raise ValueError(f"tunelab's schedules are cosine, linear and constant, not '{name}'")
    return SCHEDULES[name.lower()]


def template_of(name: str) -> str:
    """A built-in tunelab chat template for a template name."""
    if name.lower() not in TEMPLATES:
        raise ValueError(
            f"'{name}' is not built into tunelab (it has {', '.join(TEMPLATES)}); the tokenizer's own chat template is "
            "used, or give dataset.chat_template a .jinja file"
        )
    return TEMPLATES[name.lower()]


def set_lengths(mapper: Mapper, key: str, value: Any) -> None:
    """One total token limit (LLaMA-Factory's cutoff_len, Axolotl's sequence_len): tunelab's prompt and answer
    limits are set to it too, so only the total cuts."""
    if mapper.set("tokenizer.max_length", value, key, whole):
        length = whole(value)
        mapper.set("tokenizer.max_length_prompt", length)
        mapper.set("tokenizer.max_length_answer", length)


def set_output_dir(mapper: Mapper, key: str) -> None:
    """Map an output folder to the run directory output_directory/experiment_name."""
    value = mapper.take(key)
    if value is not None:
        directory, name = run_location(str(value))
        mapper.set("output_directory", directory or ".", key)
        mapper.set("experiment_name", name, key)


# The Hugging Face Trainer's arguments, which LLaMA-Factory and Axolotl both pass through under the Trainer's names.
TRAINER_ARGUMENTS = {
    "gradient_accumulation_steps": ("training.grad_accumulation", whole),
    "learning_rate": ("training.learning_rate", number),
    "weight_decay": ("training.weight_decay", number),
    "max_grad_norm": ("training.gradient_clip", number),
    "max_steps": ("training.max_steps", whole),
    "logging_steps": ("training.logging_steps", whole),
    "save_steps": ("training.save_steps", whole),
    "eval_steps": ("training.eval_steps", whole),
    "save_total_limit": ("training.save_total_limit", whole),
    "warmup_steps": ("training.warmup_steps", whole),
    "warmup_ratio": ("training.warmup_ratio", number),
}
