"""Axolotl config YAML (``axolotl train config.yml``) -> tunelab config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.importers.common import (
    TRAINER_ARGUMENTS,
    Mapper,
    flag,
    is_unset,
    number,
    optimizer_of,
    schedule_of,
    set_lengths,
    set_output_dir,
    template_of,
    whole,
)

ONE_TO_ONE = TRAINER_ARGUMENTS | {
    "lora_r": ("training.lora_r", whole),
    "lora_alpha": ("training.lora_alpha", number),
    "lora_dropout": ("training.lora_dropout", number),
    "peft_use_dora": ("training.use_dora", flag),
    "peft_use_rslora": ("training.use_rslora", flag),
    "micro_batch_size": ("training.batch_size", whole),
    "early_stopping_patience": ("training.early_stopping_patience", whole),
    "group_by_length": ("training.group_by_length", flag),
    "sample_packing": ("training.packing", flag),
    "optimizer": ("training.optimizer", optimizer_of),
    "rl_beta": ("training.beta", number),
    "simpo_gamma": ("training.simpo_gamma", number),
    "default_system_message": ("dataset.system_prompt", str),
    "dataset_processes": ("environment.number_of_workers", whole),
    "seed": ("environment.seed", whole),
    "eval_max_new_tokens": ("prediction.max_length_inference", whole),
}
LOADING = "tunelab loads the backbone's own config and tokenizer with transformers' Auto classes"
KERNELS = "tunelab picks the attention and kernel implementations itself"
DISTRIBUTED = "tunelab writes its own accelerate config: set environment.distributed (ddp, fsdp, deepspeed_zero2/3)"
REASONS = {
    "base_model_config": LOADING,
    "model_type": LOADING,
    "tokenizer_type": LOADING,
    "tokenizer_config": LOADING,
    "tokenizer_use_fast": LOADING,
    "tokenizer_legacy": LOADING,
    "trust_remote_code": "tunelab never runs a model's own code",
    "special_tokens": "tunelab keeps the tokenizer's special tokens (pad falls back to EOS)",
    "tokens": "tunelab does not add tokens to the tokenizer",
    "lora_modules_to_save": "tunelab trains no full modules beside LoRA (adapter 'none' trains everything)",
    "lora_model_dir": "tunelab starts from a backbone; a finished tunelab run can be the llm_backbone instead",
    "dataset_prepared_path": "tunelab caches tokenised data in its own cache folder",
    "push_dataset_to_hub": "tunelab does not upload data",
    "hub_model_id": "tunelab does not upload models; tunelab export writes them",
    "hub_strategy": "tunelab does not upload models",
    "pad_to_sequence_len": "tunelab pads each batch to its own longest row",
    "eval_sample_packing": "tunelab evaluates unpacked rows",
    "tf32": "no tunelab setting (PyTorch's default matmul precision is used)",
    "flash_attention": KERNELS,
    "sdp_attention": KERNELS,
    "xformers_attention": KERNELS,
    "flash_attn_cross_entropy": KERNELS,
    "flash_attn_rms_norm": KERNELS,
    "flash_optimum": KERNELS,
    "lora_mlp_kernel": KERNELS,
    "lora_qkv_kernel": KERNELS,
    "lora_o_kernel": KERNELS,
    "deepspeed": DISTRIBUTED,
    "fsdp": DISTRIBUTED,
    "fsdp_config": DISTRIBUTED,
    "resume_from_checkpoint": "resume with tunelab train --resume RUN_DIR",
    "auto_resume_from_checkpoints": "resume with tunelab train --resume RUN_DIR",
    "eval_batch_size": "tunelab sizes evaluation batches itself (prediction.batch_size_inference)",
    "neftune_noise_alpha": "tunelab has no embedding noise",
    "wandb_entity": "set WANDB_ENTITY in the environment",
    "wandb_name": "set WANDB_NAME in the environment",
    "wandb_watch": "set WANDB_WATCH in the environment",
    "wandb_log_model": "set WANDB_LOG_MODEL in the environment",
    "wandb_run_id": "set WANDB_RUN_ID in the environment",
    "mlflow_experiment_name": "set MLFLOW_EXPERIMENT_NAME in the environment",
    "lora_on_cpu": "tunelab places the model itself",
    "gpu_memory_limit": "tunelab's planner uses environment.memory_budget",
    "device_map": "tunelab places the model itself",
    "max_memory": "tunelab's planner uses environment.memory_budget",
    "cpo_alpha": "tunelab's simpo has no behaviour-cloning term",
    "strict": "no tunelab equivalent (unknown fields are always errors)",
}
# The Trainer's defaults where they differ from tunelab's, for fields the config leaves unset.
DEFAULTS = (("training.gradient_clip", 1.0, "max_grad_norm 1.0"), ("environment.seed", 42, "seed 42"))
RL_LOSSES = {"dpo": "sigmoid", "ipo": "ipo", "simpo": "simpo", "orpo": "orpo"}
# Axolotl's preference-data strategies (the part after the template name) and the columns they read.
PAIR_STRATEGIES = {
    "intel": {"dataset.prompt_column": ["question"], "dataset.system_column": "system"},
    "argilla": {
        "dataset.prompt_column": ["instruction"],
        "dataset.chosen_column": "chosen_response",
        "dataset.rejected_column": "rejected_response",
    },
    "ultra": {"dataset.prompt_column": ["prompt"]},
    "prompt_pairs": {"dataset.prompt_column": ["prompt"]},
}


def import_axolotl(data: dict[str, Any], file: Path) -> Mapper:
    """Map an Axolotl config.

    Raises:
        ConfigError: for an RL method tunelab lacks.
    """
    m = Mapper(data, str(file))
    model = m.take("base_model")
    if model is not None:
        revision = m.take("revision_of_model")
        m.set("llm_backbone", f"{model}@{revision}" if revision else str(model), "base_model")
    _kind(m)
    _adapter(m)
    m.copy(ONE_TO_ONE)
    _datasets(m)
    _training(m)
    set_output_dir(m, "output_dir")
    kept = [what for path, value, what in DEFAULTS if not m.has(path) and m.set(path, value)]
    if kept:
        m.notes.append("Axolotl / Trainer defaults kept for unset fields: " + "; ".join(kept))
    m.explain(REASONS)
    m.finish()
    return m


def _kind(m: Mapper) -> None:
    method = m.take("rl")
    if m.take("reward_model") is not None and flag(m.get("reward_model")):
        m.set("problem_type", "reward", "reward_model")
    if method is None:
        return
    method = str(method).lower()
    if method in RL_LOSSES:
        m.set("problem_type", "dpo", "rl")
        m.set("training.preference_loss", RL_LOSSES[method], "rl")
        alpha = m.take("orpo_alpha")
        if method == "orpo" and alpha is not None:
            m.set("training.beta", alpha, "orpo_alpha", number)
    elif method == "grpo":
        m.set("problem_type", "rl", "rl")
        m.set("rl.algorithm", "grpo", "rl")
        _grpo(m, m.take("trl") or {})
    else:
        raise ConfigError(
            f"Axolotl rl '{method}' has no tunelab equivalent",
            file=m.file,
            field="rl",
            hint="tunelab trains dpo, ipo, simpo, orpo (problem_type dpo) and grpo (problem_type rl)",
        )


def _grpo(m: Mapper, trl: dict[str, Any]) -> None:
    funcs = trl.get("reward_funcs") or []
    if funcs:
        module, _, name = str(funcs[0]).rpartition(".")
        m.set("rl.reward_function", f"{module}:{name}", "trl.reward_funcs")
        if len(funcs) > 1:
            m.leave("trl.reward_funcs", f"tunelab takes one reward function; {', '.join(funcs[1:])} left out")
    for key, path, convert in (
        ("num_generations", "rl.num_generations", whole),
        ("max_completion_length", "rl.max_new_tokens", whole),
        ("beta", "rl.kl_coef", number),
        ("temperature", "rl.temperature", number),
    ):
        if not is_unset(trl.get(key)):
            m.set(path, trl[key], f"trl.{key}", convert)
    for key in sorted(set(trl) - {"reward_funcs", "num_generations", "max_completion_length", "beta", "temperature"}):
        if not is_unset(trl[key]) and trl[key] is not False:
            m.leave(f"trl.{key}", "no tunelab equivalent")


def _adapter(m: Mapper) -> None:
    adapter = m.take("adapter")
    eight, four = (m.take(k) is not None and flag(m.get(k)) for k in ("load_in_8bit", "load_in_4bit"))
    if adapter is None:
        m.set("training.adapter", "none", "adapter")
    elif str(adapter) in ("lora", "qlora"):
        m.set("training.adapter", "lora", "adapter")
    else:
        m.leave("adapter", f"tunelab has no '{adapter}' adapter")
    if four or adapter == "qlora":
        m.set("architecture.backbone_dtype", "int4", "load_in_4bit" if four else "adapter")
    elif eight:
        m.set("architecture.backbone_dtype", "int8", "load_in_8bit")
    for key, dtype in (("bfloat16", "bfloat16"), ("float16", "float16")):
        if m.take(key) is not None and flag(m.get(key)) and not (four or eight):
            m.set("architecture.backbone_dtype", dtype, key)
    targets = m.take("lora_target_modules")
    if m.take("lora_target_linear") is not None and flag(m.get("lora_target_linear")):
        m.set("training.lora_target_modules", "", "lora_target_linear")  # tunelab's default: every linear layer
        if targets is not None:
            m.leave("lora_target_modules", "lora_target_linear already adapts every linear layer")
    elif targets is not None:
        names = ",".join(targets) if isinstance(targets, list) else str(targets)
        m.set("training.lora_target_modules", names, "lora_target_modules")


def _datasets(m: Mapper) -> None:
    sources, first = [], None
    for i, spec in enumerate(m.take("datasets") or []):
        label = f"datasets[{i}]"
        if not isinstance(spec, dict) or is_unset(spec.get("path")):
            m.leave(label, "a dataset needs a path")
            continue
        settings = _settings(m, spec, label)
        if first is None:
            first = settings
            for path, value in settings.items():
                m.set(path, value, label)
        elif settings != first:
            m.leave(label, "read differently from datasets[0]; tunelab reads one format per run")
            continue
        sources += _source(spec)
    if sources:
        m.set("dataset.train_dataframe", sources[0] if len(sources) == 1 else sources, "datasets")
    held = [s for spec in (m.take("test_datasets") or []) if isinstance(spec, dict) for s in _source(spec)]
    if held:
        m.set("dataset.validation_strategy", "custom", "test_datasets")
        m.set("dataset.validation_dataframe", held[0] if len(held) == 1 else held, "test_datasets")
    size = m.take("val_set_size")
    if size is not None and number(size) > 0:
        m.set("dataset.validation_size", number(size), "val_set_size")
    elif size is not None and not held:
        m.leave("val_set_size", "tunelab always holds out validation rows (dataset.validation_size)")
    template = m.take("chat_template")
    if template == "jinja":
        m.leave("chat_template", "write chat_template_jinja to a .jinja file and set dataset.chat_template to it")
        m.done.add("chat_template_jinja")
    elif template is not None and not str(template).startswith("tokenizer_default"):
        m.set("dataset.chat_template", template, "chat_template", template_of)


def _source(spec: dict[str, Any]) -> list[str]:
    files = spec.get("data_files")
    if not is_unset(files):
        return [str(f) for f in files] if isinstance(files, list) else [str(files)]
    path = str(spec["path"])
    local = Path(path).exists() or spec.get("ds_type") or Path(path).suffix
    if not local and spec.get("name"):
        path += f":{spec['name']}"
    if not local and spec.get("split"):
        path += f"@{spec['split']}"
    return [path]


def _settings(m: Mapper, spec: dict[str, Any], label: str) -> dict[str, Any]:
    """tunelab's dataset fields for one Axolotl dataset."""
    known = {"path", "type", "ds_type", "data_files", "name", "split", "field", "field_messages", "conversation"}
    known |= {"message_property_mappings", "message_field_role", "message_field_content", "roles", "chat_template"}
    known |= {"field_chosen", "field_rejected", "roles_to_train", "train_on_eos"}
    for key in sorted(set(spec) - known):
        if not is_unset(spec[key]) and spec[key] is not False:
            m.leave(f"{label}.{key}", "no tunelab equivalent")
    kind = spec.get("type")
    if isinstance(kind, dict):
        prompts = [kind.get("field_instruction", "instruction")]
        prompts += [kind["field_input"]] if kind.get("field_input") else []
        if any(k in kind for k in ("format", "no_input_format", "system_format", "system_prompt")):
            m.leave(f"{label}.type.format", "tunelab writes prompts with the chat template or text_prompt_start")
        return {
            "dataset.format": "columns",
            "dataset.prompt_column": prompts,
            "dataset.answer_column": kind.get("field_output", "output"),
            "dataset.system_column": kind.get("field_system", ""),
        }
    kind = str(kind or "")
    base, _, strategy = kind.partition(".")
    style = kind.partition(":")[2]
    if m.get("rl") is not None:
        settings = {"dataset.format": "preference", **PAIR_STRATEGIES.get(strategy, {})}
        if base == "chat_template":
            settings["dataset.prompt_column"] = [spec.get("field_messages", "messages")]
            settings["dataset.chosen_column"] = spec.get("field_chosen", "chosen")
            settings["dataset.rejected_column"] = spec.get("field_rejected", "rejected")
        elif strategy not in PAIR_STRATEGIES:
            m.leave(f"{label}.type", f"tunelab does not know the columns '{kind}' reads; it detects the pair columns")
        return settings
    if style:
        m.leave(f"{label}.type", f"the ':{style}' prompt style; tunelab renders with the chat template")
    kind = kind.partition(":")[0]
    if kind == "completion":
        return {"dataset.format": "text", "dataset.text_column": spec.get("field") or "text"}
    if kind in ("alpaca", "input_output", "sharegpt"):
        return {"dataset.format": kind}
    if kind == "chat_template":
        mapping = spec.get("message_property_mappings") or {}
        role = mapping.get("role", spec.get("message_field_role", "role"))
        field = spec.get("field_messages", "messages")
        if role == "from":
            return {"dataset.format": "sharegpt", "dataset.messages_column": field}
        return {"dataset.format": "messages", "dataset.messages_column": field}
    m.leave(f"{label}.type", f"tunelab has no '{kind}' data type; it detects the format from the rows")
    return {}


def _training(m: Mapper) -> None:
    length = m.take("sequence_len")
    set_lengths(m, "sequence_len", 2048 if length is None else length)  # Axolotl's default
    epochs = m.take("num_epochs")
    if epochs is not None:
        m.set("training.epochs", epochs, "num_epochs", whole)
    schedule = m.take("lr_scheduler")
    m.set("training.schedule", schedule or "cosine", "lr_scheduler", schedule_of)  # Axolotl: empty = cosine
    for key, field in (("evals_per_epoch", "evaluation_epochs"), ("saves_per_epoch", "save_epochs")):
        count = m.take(key)
        if count is not None and number(count) > 0:
            m.set(f"training.{field}", round(1 / number(count), 6), key)
    if m.take("train_on_inputs") is not None:
        m.set("dataset.mask_prompt_labels", not flag(m.get("train_on_inputs")), "train_on_inputs")
    checkpointing = m.take("gradient_checkpointing")
    if checkpointing is not None:
        m.set("architecture.gradient_checkpointing", checkpointing is True or checkpointing == "offload")
        m.done.add("gradient_checkpointing")
    bf16, fp16 = m.take("bf16"), m.take("fp16")
    if bf16 == "auto" or fp16 == "auto":
        m.set("environment.mixed_precision", "auto", "bf16" if bf16 == "auto" else "fp16")
    elif bf16 is not None or fp16 is not None:
        on = (bf16 is not None and flag(bf16)) or (fp16 is not None and flag(fp16))
        m.set("environment.mixed_precision", on, "bf16" if bf16 is not None else "fp16")
    trackers = ["tensorboard"]
    if m.take("wandb_project") is not None:
        trackers.append("wandb")
        m.notes.append(f"set WANDB_PROJECT={m.get('wandb_project')} in the environment")
    if m.take("mlflow_tracking_uri") is not None:
        trackers.append("mlflow")
        m.notes.append(f"set MLFLOW_TRACKING_URI={m.get('mlflow_tracking_uri')} in the environment")
    if len(trackers) > 1:
        m.set("environment.trackers", trackers, "wandb_project" if "wandb" in trackers else "mlflow_tracking_uri")
    m.take("use_tensorboard")  # tunelab always logs to TensorBoard
    m.take("wandb_mode")
