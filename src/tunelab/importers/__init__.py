"""Bring your config: LLaMA-Factory, Axolotl and H2O LLM Studio training configs as tunelab configs.

``import_config`` reads the source YAML, detects which tool wrote it (or takes ``source``), maps every field tunelab
has an equivalent for, validates the result and lists every source field it left out with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, dump_yaml, read_yaml, validate_config
from tunelab.errors import ConfigError, TunelabError
from tunelab.importers.axolotl import import_axolotl
from tunelab.importers.h2o import import_h2o
from tunelab.importers.llamafactory import import_llamafactory
from tunelab.io import write_text_atomic
from tunelab.problem_spec import problem_types

IMPORTERS = {"llamafactory": import_llamafactory, "axolotl": import_axolotl, "h2o": import_h2o}
TITLES = {"llamafactory": "LLaMA-Factory", "axolotl": "Axolotl", "h2o": "H2O LLM Studio"}
# Keys that only one tool's configs have, to tell them apart.
MARKERS = {
    "llamafactory": ("model_name_or_path", "stage", "finetuning_type", "lora_rank", "lora_target", "cutoff_len"),
    "axolotl": ("base_model", "datasets", "micro_batch_size", "sequence_len", "num_epochs", "lora_target_linear"),
    "h2o": ("llm_backbone", "experiment_name", "architecture", "augmentation", "tokenizer", "environment"),
}


@dataclass
class ImportResult:
    """A source config mapped to tunelab.

    Args:
        source: the tool that wrote it (a key of ``IMPORTERS``).
        config: the validated tunelab config.
        fields: the tunelab fields the import set (dotted paths), in order.
        left_out: (source field, reason) for everything not mapped.
        notes: what else the user should know (defaults kept, where datasets were found).
    """

    source: str
    config: RunConfig
    fields: list[str]
    left_out: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        """The imported fields as plain config data (sections nested), in tunelab's normal form."""
        full = self.config.to_dict()
        out: dict[str, Any] = {}
        for path in self.fields:
            section, _, name = path.rpartition(".")
            if section:
                out.setdefault(section, {})[name] = full[section][name]
            else:
                out[name] = full[name]
        return out


def detect_source(data: dict[str, Any], file: str | None = None) -> str:
    """Which tool a config is for, from its keys.

    Raises:
        ConfigError: when no tool's keys are there, or the config already is a tunelab config.
    """
    tunelab_problem = data.get("problem_type") in problem_types()
    if tunelab_problem and "llm_backbone" in data:
        raise ConfigError("this already is a tunelab config", file=file, hint="check it with tunelab config validate")
    scores = {name: sum(key in data for key in keys) for name, keys in MARKERS.items()}
    if str(data.get("problem_type", "")).startswith("text_"):
        scores["h2o"] += 3
    best = max(scores, key=lambda name: scores[name])
    tied = [name for name, score in scores.items() if score == scores[best]]
    if scores[best] == 0 or len(tied) > 1:
        raise ConfigError(
            "cannot tell which tool this config is for (no model_name_or_path, base_model or llm_backbone)",
            file=file,
            hint="pass --from llamafactory, axolotl or h2o",
        )
    return best


def import_config(path: str | Path, source: str | None = None) -> ImportResult:
    """Read a LLaMA-Factory, Axolotl or H2O LLM Studio config and map it to a validated tunelab config.

    Args:
        path: the source YAML.
        source: 'llamafactory', 'axolotl' or 'h2o'; None detects it from the keys.

    Raises:
        ConfigError: for a missing or unreadable file, YAML that is not a mapping, an unknown shape, an unknown
            dataset name, or a result tunelab cannot validate.
    """
    path = Path(path)
    data, _ = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"the config is a {type(data).__name__}, not a mapping of fields to values",
            file=str(path),
            hint="give a training config YAML of LLaMA-Factory, Axolotl or H2O LLM Studio",
        )
    if source is not None and source not in IMPORTERS:
        raise ConfigError(f"unknown source '{source}'", field="--from", hint="use llamafactory, axolotl or h2o")
    source = source or detect_source(data, str(path))
    try:
        mapper = IMPORTERS[source](data, path)
    except TunelabError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"cannot read it as a {TITLES[source]} config ({exc})",
            file=str(path),
            hint="check the file, or pass --from with the tool that wrote it",
        ) from None
    try:
        config = validate_config(mapper.data, source=str(path))
    except ConfigError as exc:
        raise ConfigError(
            f"the imported settings do not make a valid tunelab config: {exc.what}",
            file=str(path),
            field=exc.field,
            hint="fix that field in the source, or import and then edit the output",
        ) from None
    return ImportResult(source, config, mapper.paths, mapper.left_out, mapper.notes)


def imported_yaml(result: ImportResult, path: str | Path) -> str:
    """The imported config as YAML, headed by comments naming the source and what was left out."""
    lines = [
        f"# Imported from {path} ({TITLES[result.source]}) by `tunelab config import`.",
        "# Every other field has tunelab's default: `tunelab config init` shows them all.",
    ]
    if result.left_out:
        lines.append("# Left out of the source (no tunelab equivalent):")
        lines += [f"#   {key}: {why}" for key, why in result.left_out]
    lines += [f"# Note: {note}" for note in result.notes]
    return "\n".join(lines) + "\n" + dump_yaml(result.data())


def save_imported(result: ImportResult, source_path: str | Path, output: str | Path, force: bool = False) -> None:
    """Write the imported config to ``output`` atomically.

    Raises:
        ConfigError: when ``output`` exists and ``force`` is not set.
    """
    output = Path(output)
    if output.exists() and not force:
        raise ConfigError("output file already exists", file=str(output), hint="pass --force to replace it")
    write_text_atomic(output, imported_yaml(result, source_path))
