"""LLaMA-Factory training YAML (``llamafactory-cli train``) -> tunelab config.

The datasets a LLaMA-Factory config names are entries of ``dataset_dir/dataset_info.json``; their files, formatting
(alpaca / sharegpt), columns and tags become tunelab's data source, format and column fields. Where the YAML leaves a
field unset, LLaMA-Factory's (and the Hugging Face Trainer's) default is imported when it differs from tunelab's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.importers.common import (
    TRAINER_ARGUMENTS,
    Mapper,
    flag,
    number,
    optimizer_of,
    schedule_of,
    set_lengths,
    set_output_dir,
    template_of,
    whole,
)
from tunelab.importers.llamafactory_data import map_datasets

STAGES = {"sft": "causal_lm", "pt": "causal_lm", "rm": "reward", "dpo": "dpo", "ppo": "rl"}
# LLaMA-Factory's stages that read pref_loss (its vocabulary, not a tunelab problem type).
PREFERENCE_STAGES = ("dpo",)
PREFERENCE_LOSSES = {"sigmoid": "sigmoid", "hinge": "hinge", "ipo": "ipo", "orpo": "orpo", "simpo": "simpo"}

ONE_TO_ONE = TRAINER_ARGUMENTS | {
    "model_name_or_path": ("llm_backbone", str),
    "lora_rank": ("training.lora_r", whole),
    "lora_alpha": ("training.lora_alpha", number),
    "lora_dropout": ("training.lora_dropout", number),
    "use_dora": ("training.use_dora", flag),
    "use_rslora": ("training.use_rslora", flag),
    "quantization_type": ("architecture.quantization", str),
    "double_quantization": ("architecture.double_quantization", flag),
    "per_device_train_batch_size": ("training.batch_size", whole),
    "load_best_model_at_end": ("training.load_best_model_at_end", flag),
    "early_stopping_steps": ("training.early_stopping_patience", whole),
    "group_by_length": ("training.group_by_length", flag),
    "packing": ("training.packing", flag),
    "neat_packing": ("training.packing", flag),
    "gradient_checkpointing": ("architecture.gradient_checkpointing", flag),
    "pref_beta": ("training.beta", number),
    "simpo_gamma": ("training.simpo_gamma", number),
    "dpo_label_smoothing": ("training.label_smoothing", number),
    "dataloader_num_workers": ("environment.number_of_workers", whole),
    "seed": ("environment.seed", whole),
    "optim": ("training.optimizer", optimizer_of),
    "lr_scheduler_type": ("training.schedule", schedule_of),
    "template": ("dataset.chat_template", template_of),
}
REASONS = {
    "trust_remote_code": "tunelab never runs a model's own code",
    "adapter_name_or_path": "tunelab starts from a backbone; a finished tunelab run can be the llm_backbone instead",
    "do_eval": "tunelab evaluates during and after every run",
    "do_predict": "predictions are a separate command: tunelab predict RUN FILE",
    "plot_loss": "tunelab's run report always plots the loss",
    "overwrite_output_dir": "tunelab never overwrites a run directory; tunelab train --force replaces one",
    "overwrite_cache": "tunelab's data cache is keyed by the data and every setting that changes it",
    "preprocessing_num_workers": "tunelab tokenises in one process and caches the result",
    "ddp_timeout": "no tunelab setting (the distributed defaults are used)",
    "flash_attn": "tunelab picks the attention kernel itself",
    "enable_liger_kernel": "tunelab picks its kernels itself",
    "use_unsloth": "tunelab picks its kernels itself",
    "deepspeed": "tunelab writes its own DeepSpeed config: set environment.distributed (deepspeed_zero2/3)",
    "per_device_eval_batch_size": "tunelab sizes evaluation batches itself (prediction.batch_size_inference)",
    "additional_target": "tunelab has no extra fully trained modules beside LoRA",
    "pref_ftx": "tunelab's dpo has no added SFT loss (training.preference_loss orpo has one)",
    "ref_model": "tunelab's reference model is the backbone without the adapter",
}


def import_llamafactory(data: dict[str, Any], file: Path) -> Mapper:
    """Map a LLaMA-Factory training config.

    Raises:
        ConfigError: for a training stage tunelab lacks, a missing dataset_info.json or an unknown dataset name.
    """
    m = Mapper(data, str(file))
    stage = str(m.take("stage") or "sft")
    if stage not in STAGES:
        raise ConfigError(
            f"LLaMA-Factory stage '{stage}' has no tunelab problem type",
            file=str(file),
            field="stage",
            hint="tunelab trains sft, pt, rm, dpo and ppo",
        )
    m.set("problem_type", STAGES[stage], "stage")
    if flag(m.get("do_train", True)):
        m.done.add("do_train")
    _method(m)
    m.copy(ONE_TO_ONE)
    _schedule(m)
    map_datasets(m, file, stage)
    _preference(m, stage)
    set_output_dir(m, "output_dir")
    _precision(m)
    _evaluation(m)
    _defaults(m)
    m.explain(REASONS)
    m.finish()
    return m


def _method(m: Mapper) -> None:
    kind = str(m.take("finetuning_type") or "lora")
    adapter = {"lora": "lora", "freeze": "freeze", "full": "none"}.get(kind)
    if adapter is None:
        m.leave("finetuning_type", f"tunelab has no '{kind}' fine-tuning (lora, freeze or full)")
        return
    m.set("training.adapter", adapter, "finetuning_type")
    if kind == "lora":
        target = m.take("lora_target")
        if target is not None:
            target = ",".join(target) if isinstance(target, list) else str(target)
            m.set("training.lora_target_modules", "" if target == "all" else target, "lora_target")
    layers = m.take("freeze_trainable_layers")
    if kind == "freeze":
        layers = 2 if layers is None else whole(layers)  # LLaMA-Factory's default: the last 2 layers
        if layers > 0:
            m.set("training.trainable_layers", layers, "freeze_trainable_layers")
        else:
            m.leave("freeze_trainable_layers", "tunelab's freeze trains the last layers, not the first ones")
        extra = m.take("freeze_extra_modules")
        if extra is not None:
            m.set("training.trainable_patterns", str(extra), "freeze_extra_modules")
        if str(m.take("freeze_trainable_modules") or "all") != "all":
            m.leave("freeze_trainable_modules", "tunelab's freeze trains whole layers (trainable_patterns adds more)")
    bits = m.take("quantization_bit")
    if bits is not None:
        dtype = {4: "int4", 8: "int8"}.get(whole(bits))
        if dtype is None:
            m.leave("quantization_bit", f"tunelab quantises to 4 or 8 bits, not {bits}")
        else:
            m.set("architecture.backbone_dtype", dtype, "quantization_bit")
    method = m.take("quantization_method")
    if method is not None and method != "bitsandbytes":
        m.leave("quantization_method", "tunelab quantises with bitsandbytes only")


def _schedule(m: Mapper) -> None:
    epochs = m.take("num_train_epochs")
    epochs = 3.0 if epochs is None else epochs  # the Trainer's default
    m.set("training.epochs", epochs, "num_train_epochs", whole)
    cutoff = m.take("cutoff_len")
    set_lengths(m, "cutoff_len", 2048 if cutoff is None else cutoff)  # LLaMA-Factory's default
    if m.take("train_on_prompt") is not None:
        m.set("dataset.mask_prompt_labels", not flag(m.get("train_on_prompt")), "train_on_prompt")
    if m.take("mask_history") is not None and flag(m.get("mask_history")):
        m.set("dataset.train_on", "last_answer", "mask_history")
    if m.take("disable_gradient_checkpointing") is not None:
        m.set("architecture.gradient_checkpointing", not flag(m.get("disable_gradient_checkpointing")))
    samples = m.take("max_samples")
    if samples is not None and m.set("dataset.data_sample", samples, "max_samples", whole):
        m.notes.append(
            f"max_samples {samples}: tunelab trains on {samples} random training rows (dataset.data_sample); "
            "LLaMA-Factory takes the first rows of each dataset"
        )


def _preference(m: Mapper, stage: str) -> None:
    loss = m.take("pref_loss")
    if stage in PREFERENCE_STAGES:
        loss = loss or "sigmoid"
        if loss in PREFERENCE_LOSSES:
            m.set("training.preference_loss", PREFERENCE_LOSSES[loss], "pref_loss")
        else:
            m.leave("pref_loss", f"tunelab has no '{loss}' loss (sigmoid, hinge, ipo, orpo, simpo)")
    elif loss is not None:
        m.leave("pref_loss", f"applies to stage dpo, not {stage}")
    model = m.take("reward_model")
    if stage == "ppo" and model is not None:
        m.set("rl.algorithm", "ppo")
        m.set("rl.reward_model", str(model), "reward_model")
        m.notes.append("rl.reward_model must be a finished tunelab reward run (problem_type: reward)")
    elif stage == "ppo":
        m.set("rl.algorithm", "ppo")


def _precision(m: Mapper) -> None:
    half = [key for key in ("bf16", "fp16") if m.take(key) is not None and flag(m.get(key))]
    if half:
        m.set("environment.mixed_precision", True, half[0])
        m.done.update(half)
    elif m.get("bf16") is not None or m.get("fp16") is not None:
        m.set("environment.mixed_precision", False, "bf16" if m.get("bf16") is not None else "fp16")
    if m.take("pure_bf16") is not None and flag(m.get("pure_bf16")):
        m.set("architecture.backbone_dtype", "bfloat16", "pure_bf16")


def _evaluation(m: Mapper) -> None:
    for key, field in (("eval_strategy", "evaluation_epochs"), ("save_strategy", "save_epochs")):
        strategy = m.take(key)
        if strategy == "epoch":
            m.set(f"training.{field}", 1.0, key)
        elif strategy == "no" and key == "save_strategy":
            m.set("training.save_epochs", 0.0, key)
        elif strategy == "no":
            m.leave(key, "tunelab always evaluates at the end of a run")
    metric = m.take("metric_for_best_model")
    if metric is not None:
        m.set("training.metric_for_best", str(metric).removeprefix("eval_"), "metric_for_best_model")
    report = m.take("report_to")
    if report is not None:
        names = [report] if isinstance(report, str) else list(report)
        trackers = ["tensorboard"] + [n for n in names if n in ("mlflow", "wandb")]
        m.set("environment.trackers", trackers, "report_to")
        others = [n for n in names if n not in ("tensorboard", "mlflow", "wandb", "none")]
        if others:
            m.notes.append(f"report_to {', '.join(others)}: tunelab logs to TensorBoard, MLflow and W&B only")


def _defaults(m: Mapper) -> None:
    """LLaMA-Factory's and the Trainer's defaults where they differ from tunelab's, for fields the YAML left unset."""
    applied = []
    for path, value, what in (
        ("training.lora_alpha", 2 * m.value("training.lora_r", 8), "lora_alpha = 2 x lora_rank"),
        ("training.lora_dropout", 0.0, "lora_dropout 0"),
        ("training.learning_rate", 5e-5, "learning_rate 5e-5"),
        ("training.batch_size", 8, "per_device_train_batch_size 8"),
        ("training.schedule", "Linear", "lr_scheduler_type linear"),
        ("training.gradient_clip", 1.0, "max_grad_norm 1.0"),
        ("training.logging_steps", 500, "logging_steps 500"),
        ("training.save_steps", 500, "save_steps 500"),
        ("architecture.gradient_checkpointing", True, "gradient checkpointing on"),
        ("environment.seed", 42, "seed 42"),
    ):
        if path.startswith("training.lora") and m.value("training.adapter") != "lora":
            continue
        if not m.has(path) and m.set(path, value):
            applied.append(what)
    if applied:
        m.notes.append("LLaMA-Factory / Trainer defaults kept for unset fields: " + "; ".join(applied))
