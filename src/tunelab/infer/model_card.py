"""Model cards: the README.md of a run's trained weights (``adapter/README.md``) and of each export, saying what
happened — base model, task, method and its settings, data, metrics before and after, time and hardware, how to load
it, the licence — under YAML front matter the Hugging Face hub accepts.

Everything comes from the run directory (config.yaml, run.json, metrics.json, validation_predictions.csv); a value a
run did not record is left out, never printed as a placeholder.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from tunelab.data.readers import is_hub_name
from tunelab.infer.model_card_usage import usage_text
from tunelab.io import write_text_atomic
from tunelab.models.adapters import PEFT_METHODS
from tunelab.models.load import BaseModelRef, base_model_reference
from tunelab.rundir import RunDirectory

# What each auto class is on the hub (pipeline tag) and which peft class loads an adapter for it.
PIPELINE_TAGS = {"AutoModelForCausalLM": "text-generation", "AutoModelForSequenceClassification": "text-classification"}
# The config fields that describe each training method.
METHOD_SETTINGS = {
    "lora": ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_dora", "use_rslora"),
    "ia3": ("lora_target_modules",),
    "prefix_tuning": ("num_virtual_tokens",),
    "prompt_tuning": ("num_virtual_tokens",),
    "freeze": ("trainable_layers", "trainable_patterns"),
}
DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".gz", ".arrow")
UNKNOWN_LICENSE = "unknown — check the base model's licence"


def write_run_card(run_path: str | Path) -> Path:
    """Write the model card of a finished run's trained weights into its model folder (``adapter/README.md``,
    replacing peft's blank template), and return its path."""
    run = RunDirectory.open(run_path)
    assert run.model_dir is not None
    path = run.model_dir / "README.md"
    write_text_atomic(path, build_model_card(run, "adapter", folder_name=run.model_dir.name))
    return path


def run_problem(run: RunDirectory) -> Any:
    """The run's problem object (its classes loaded), for the load code and pipeline tag of a card."""
    from tunelab.models.load import load_tokenizer
    from tunelab.problems import build_problem

    problem = build_problem(run.config(), load_tokenizer(str(run.tokenizer_dir)))
    problem.load(run.path)
    return problem


def build_model_card(
    run: RunDirectory,
    fmt: str,
    *,
    folder_name: str,
    problem: Any = None,
    parity: dict[str, Any] | None = None,
    dtype: str = "float32",
    gguf_file: str | None = None,
    quant: str | None = None,
) -> str:
    """The README.md of a run's weights or export.

    Args:
        run: the finished run.
        fmt: "adapter" (the trained weights as the run saved them), "merged" or "gguf".
        folder_name: the folder the card lies in, as its load code names it.
        problem: the run's problem object (built from the run when None).
        parity: the export's parity result, shown when given.
        dtype: the weight dtype of a merged export.
        gguf_file: the GGUF file's name (gguf).
        quant: the GGUF tensor type (gguf).
    """
    cfg = run.config()
    problem = problem if problem is not None else run_problem(run)
    ref = base_model_reference(cfg.llm_backbone)
    auto_class = problem.auto_class().__name__
    facts = {"cfg": cfg, "info": run.info(), "metrics": run.metrics(), "ref": ref, "auto_class": auto_class}
    licence = base_license(ref)
    parts = [
        _front_matter(fmt, cfg, ref, licence, auto_class),
        _summary(fmt, cfg, ref, dtype, gguf_file or f"model-{quant}.gguf"),
        _training_section(facts),
        _data_section(run, facts),
        _results_section(facts["metrics"]),
        _usage_section(fmt, folder_name, problem, facts, gguf_file or f"model-{quant}.gguf", run),
        _parity_section(parity) if parity else "",
        "## Licence\n\n"
        + (f"`{licence}`, inherited from the base model {_base_link(ref)}." if licence else UNKNOWN_LICENSE + ".")
        + "\n",
    ]
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------------------- header
def _front_matter(fmt: str, cfg: Any, ref: BaseModelRef, licence: str | None, auto_class: str) -> str:
    method = cfg.training.adapter
    peft_adapter = fmt == "adapter" and method in PEFT_METHODS
    meta: dict[str, Any] = {}
    if not ref.local:
        meta["base_model"] = ref.name
        meta["base_model_relation"] = "adapter" if peft_adapter else "finetune"
    if fmt == "gguf":
        meta["library_name"] = "gguf"
    elif peft_adapter:
        meta["library_name"] = "peft"
    elif fmt == "merged" or method == "none":
        meta["library_name"] = "transformers"
    if licence:
        meta["license"] = licence
    tags = ["tunelab", cfg.problem_type.replace("_", "-"), method.replace("_", "-")]
    if method == "lora" and cfg.training.use_dora:
        tags.append("dora")
    tags += ["gguf"] if fmt == "gguf" else ["peft"] if peft_adapter else []
    meta["tags"] = tags
    datasets = hub_datasets(cfg)
    if datasets:
        meta["datasets"] = datasets
    if auto_class in PIPELINE_TAGS:
        meta["pipeline_tag"] = PIPELINE_TAGS[auto_class]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _summary(fmt: str, cfg: Any, ref: BaseModelRef, dtype: str, gguf_file: str) -> str:
    method = cfg.training.adapter
    if fmt == "gguf":
        what = f"a GGUF file (`{gguf_file}`) of the fine-tuned model, for llama.cpp, Ollama and compatible runtimes"
    elif fmt == "merged":
        what = f"the fine-tuned model as a transformers folder ({dtype}), the {method} weights merged into the base"
    elif method in PEFT_METHODS:
        what = f"a {method} adapter (peft format) with its tokenizer; load it onto the base model with peft"
    elif method == "none":
        what = "the fully fine-tuned model as a transformers folder"
    else:
        what = f"the tensors that {method} trained (`trained_weights.safetensors`); they go onto the base model"
    lines = [
        f"# {cfg.experiment_name}",
        "",
        f"Fine-tuned from {_base_link(ref)} with tunelab. This folder holds {what}.",
    ]
    if ref.local:
        lines += [
            "",
            f"> **Warning: the base model is local** (`{ref.name}`, a {ref.kind.replace('folder', 'model folder')} "
            "on the machine this was trained on). Loading this elsewhere needs that model: copy it along, or train "
            "from a hub id.",
        ]
    spec = ref.builtin
    if spec is not None and spec.gguf_file and fmt == "adapter" and method != "none":
        lines += [
            "",
            f"> tunelab trained on the weights of `{spec.gguf_file}` (from the `{spec.pip_name}` package), dequantised "
            f"to float32. `{ref.name}` on the hub holds the original weights, which that file rounds: with them the "
            "adapter answers close to, not exactly like, the trained model (merged and GGUF exports carry the trained "
            "weights themselves).",
        ]
    return "\n".join(lines) + "\n"


def _base_link(ref: BaseModelRef) -> str:
    if ref.local:
        return f"the local model `{ref.name}`"
    at = f" (revision `{ref.revision}`)" if ref.revision else ""
    return f"[{ref.name}](https://huggingface.co/{ref.name}){at}"


# ---------------------------------------------------------------------------------------------------------- training
def _training_section(facts: dict[str, Any]) -> str:
    cfg, info, ref = facts["cfg"], facts["info"], facts["ref"]
    t = cfg.training
    rows = [("base model", f"`{ref.name}`" + (f" (built-in `{cfg.llm_backbone}`)" if ref.builtin else ""))]
    tag = PIPELINE_TAGS.get(facts["auto_class"])
    rows.append(("task", f"{cfg.problem_type}" + (f" ({tag.replace('-', ' ')})" if tag else "")))
    rows.append(("method", _method_settings(cfg)))
    if info.get("trainable_parameters") and info.get("total_parameters"):
        share = info["trainable_parameters"] / info["total_parameters"]
        rows.append(
            (
                "trainable parameters",
                f"{info['trainable_parameters']:,} of {info['total_parameters']:,} ({share:.2%})",
            )
        )
    arch = cfg.architecture
    precision = f"weights {arch.backbone_dtype}"
    if arch.backbone_dtype in ("int8", "int4"):
        precision += f" (bitsandbytes{', ' + arch.quantization if arch.backbone_dtype == 'int4' else ''}: QLoRA)"
    rows.append(("precision", precision))
    length = f"{info['steps']} optimizer step{'s' if info['steps'] != 1 else ''}" if "steps" in info else ""
    length += f" ({t.max_steps} planned)" if t.max_steps > 0 else f" ({t.epochs:g} epochs planned)"
    rows.append(("length", length.strip()))
    batch = f"batch size {t.batch_size} x {t.grad_accumulation} accumulation"
    if info.get("global_batch_size"):
        batch += f" (global {info['global_batch_size']})"
    rows.append(("optimisation", f"{t.optimizer}, learning rate {t.learning_rate:g}, {t.schedule} schedule, {batch}"))
    rows.append(("seed", str(cfg.environment.seed)))
    if info.get("train_seconds") is not None:
        tokens = f", {info['train_tokens']:,} tokens" if info.get("train_tokens") else ""
        rows.append(("training time", _duration(info["train_seconds"]) + tokens))
    hardware = info.get("hardware", "not recorded")
    if info.get("processes", 1) > 1:
        hardware += f", {info['processes']} processes"
    if info.get("peak_memory_gb"):
        hardware += f"; peak memory {info['peak_memory_gb']:.2f} GB"
    rows.append(("hardware", hardware))
    if info.get("finished"):
        rows.append(("finished", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info["finished"]))))
    return "## Training\n\n" + _table(("what", "value"), rows)


def _method_settings(cfg: Any) -> str:
    t = cfg.training
    settings = []
    for name in METHOD_SETTINGS.get(t.adapter, ()):
        value = getattr(t, name)
        if name == "lora_target_modules" and not value:
            value = "all linear layers except the output head" if t.adapter == "lora" else "peft's default"
        elif isinstance(value, bool):
            if not value:
                continue
            value = "yes"
        elif isinstance(value, float):
            value = f"{value:g}"
        settings.append(f"{name.removeprefix('lora_').replace('_', ' ')} {value}")
    if t.adapter == "none":
        return "full fine-tune (every weight)"
    return f"`{t.adapter}`" + (f": {', '.join(settings)}" if settings else "")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


# ---------------------------------------------------------------------------------------------------------- data
def _sources(value: str | list[str]) -> list[str]:
    return [v for v in ([value] if isinstance(value, str) else value) if v]


def _is_hub_dataset(name: str) -> bool:
    return is_hub_name(name) and not Path(name).expanduser().exists() and not name.lower().endswith(DATA_SUFFIXES)


def hub_datasets(cfg: Any) -> list[str]:
    """The hub dataset ids among the run's data (``org/name``, without ``:config`` or ``@split``)."""
    ds = cfg.dataset
    names = _sources(ds.train_dataframe) + _sources(ds.validation_dataframe) + _sources(ds.test_dataframe)
    found = [n.split("@")[0].split(":")[0] for n in names if _is_hub_dataset(n)]
    return list(dict.fromkeys(found))


def _source_text(name: str) -> str:
    if _is_hub_dataset(name):
        return f"hub dataset [{name}](https://huggingface.co/datasets/{name.split('@')[0].split(':')[0]})"
    return f"`{Path(name).name}`"  # the file name only: the card goes where this machine's paths mean nothing


def _data_section(run: RunDirectory, facts: dict[str, Any]) -> str:
    cfg, info = facts["cfg"], facts["info"]
    ds = cfg.dataset
    train = ", ".join(_source_text(n) for n in _sources(ds.train_dataframe)) or "not recorded"
    rows = [("train", train, info.get("train_rows"))]
    if ds.validation_strategy == "custom" and _sources(ds.validation_dataframe):
        validation = ", ".join(_source_text(n) for n in _sources(ds.validation_dataframe))
    else:
        validation = f"held out of the training data (validation_size {ds.validation_size:g})"
    rows.append(("validation", validation, info.get("validation_rows")))
    if _sources(ds.test_dataframe):
        rows.append(("test", ", ".join(_source_text(n) for n in _sources(ds.test_dataframe)), info.get("test_rows")))
    table = _table(
        ("split", "source", "rows"), [(a, b, f"{c:,}" if c is not None else "not recorded") for a, b, c in rows]
    )
    notes = [f"Format: `{info.get('format') or ds.format}`"]
    if info.get("train_tokens"):
        notes.append(f"{info['train_tokens']:,} training tokens")
    if info.get("deduplicated"):
        notes.append(f"{info['deduplicated']} training rows that repeated validation rows were dropped")
    if info.get("classes"):
        notes.append("classes: " + ", ".join(f"`{c}`" for c in info["classes"]))
    return "## Data\n\n" + table + "\n" + "; ".join(notes) + ".\n"


# ---------------------------------------------------------------------------------------------------------- results
def number(value: Any) -> str:
    """A metric value as the card prints it."""
    if value is None:
        return "not measured"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"


def _results_section(metrics: dict[str, Any]) -> str:
    before, after = metrics.get("before", {}), metrics.get("after", {})
    if not after:
        return "## Results\n\nThis run recorded no validation metrics.\n"
    rows = []
    for name, value in after.items():
        old = before.get(name)
        numeric = isinstance(old, (int, float)) and isinstance(value, (int, float))
        change = ("+" if numeric and value >= old else "") + number(value - old) if numeric else ""
        rows.append((name, number(old) if old is not None else "not measured", number(value), change))
    text = "## Results\n\nOn the validation data:\n\n" + _table(
        ("metric", "before training", "after training", "change"), rows
    )
    best = metrics.get("best", {})
    if best.get("step") is not None:
        shown = ", ".join(f"{k} {number(v)}" for k, v in best.items() if k != "step")
        text += f"\nBest evaluation: step {best['step']} ({shown}).\n"
    if metrics.get("test"):
        text += "\nTest data, after training: " + ", ".join(f"{k} {number(v)}" for k, v in metrics["test"].items())
        text += ".\n"
    return text


def _parity_section(parity: dict[str, Any]) -> str:
    verdict = "passed" if parity.get("passed") else "FAILED"
    return (
        f"## Parity check ({verdict})\n\nThe same {parity.get('prompts', 'few')} validation prompts through the "
        f"trained model and this export:\n\n```json\n{json.dumps(parity, indent=2)}\n```\n"
    )


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- licence
def base_license(ref: BaseModelRef) -> str | None:
    """The base model's licence id: a built-in's, else the ``license`` of the base's own model card (a local folder
    or run, or a hub model in the local hub cache); None when it cannot be known here."""
    if ref.builtin is not None:
        return ref.builtin.license or None
    readme: Path | None = None
    if ref.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref.name, "README.md", revision=ref.revision)
        readme = Path(cached) if isinstance(cached, str) else None
    elif ref.kind == "folder":
        readme = Path(ref.name) / "README.md"
    elif ref.kind == "run":
        model_dir = RunDirectory(ref.name).model_dir
        readme = model_dir / "README.md" if model_dir else None
    if readme is None or not readme.is_file():
        return None
    from huggingface_hub.repocard import metadata_load

    try:
        value = (metadata_load(readme) or {}).get("license")
    except (ValueError, yaml.YAMLError):
        return None
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------------------------------------------- usage
def _example_prompt(run: RunDirectory) -> str:
    """The first validation prompt of the run, for the load code (shortened)."""
    path = run.path / "validation_predictions.csv"
    try:
        with open(path, encoding="utf-8") as fh:
            prompt = next(csv.DictReader(fh)).get("prompt") or ""
    except (OSError, StopIteration, csv.Error):
        prompt = ""
    prompt = re.sub(r"\s+", " ", prompt).strip()
    return (prompt[:200] + "...") if len(prompt) > 200 else prompt or "Hello!"


def _usage_section(
    fmt: str, folder: str, problem: Any, facts: dict[str, Any], gguf_file: str, run: RunDirectory
) -> str:
    return usage_text(fmt, folder, problem, facts, gguf_file, _example_prompt(run))
