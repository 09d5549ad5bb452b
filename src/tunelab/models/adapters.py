"""What gets trained: LoRA (through peft — the only module that imports it), the head alone, or everything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.errors import ConfigError
from tunelab.models.heads import output_head


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / max(self.total, 1)

    def describe(self) -> str:
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({100 * self.share:.3f}%)"


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """Trainable and total parameters, counting tied weights once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return ParameterCount(trainable, total)


def is_peft_model(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (the same object when there is none)."""
    return model.get_base_model() if is_peft_model(model) else model


def _lora_targets(cfg: RunConfig) -> str | list[str]:
    names = [n.strip() for n in cfg.training.lora_target_modules.split(",") if n.strip()]
    return names or "all-linear"


def apply_adapter(model: Any, cfg: RunConfig) -> Any:
    """Set which parameters train, per ``training.adapter``.

    Returns:
        The model to train (a peft model for LoRA).

    Raises:
        ConfigError: when LoRA target modules are not in the backbone.
    """
    method = cfg.training.adapter
    if method == "none":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if method == "head_only":
        for param in model.parameters():
            param.requires_grad_(False)
        for param in output_head(model, cfg.problem_type).parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_CLS if cfg.problem_type == "classification" else TaskType.CAUSAL_LM
    lora = LoraConfig(
        r=cfg.training.lora_r,
        lora_alpha=cfg.training.lora_alpha,
        lora_dropout=cfg.training.lora_dropout,
        target_modules=_lora_targets(cfg),
        task_type=task,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(
            f"LoRA cannot adapt this backbone ({str(exc).splitlines()[0]})",
            field="training.lora_target_modules",
            hint="leave it empty to adapt all linear layers",
        ) from exc


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable tensors by name (for head-only runs and best-checkpoint snapshots)."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if param.requires_grad}


def save_trained(model: Any, run_model_dir: Path, method: str) -> None:
    """Save what was trained: a peft adapter, the full model, or the head's tensors.

    ``run_model_dir`` is a fresh folder; callers rename it into place.
    """
    from safetensors.torch import save_file

    run_model_dir.mkdir(parents=True, exist_ok=True)
    if method in ("lora", "none"):
        model.save_pretrained(run_model_dir)  # peft adapter format / full transformers model
    else:
        state = {name: t.contiguous() for name, t in trainable_state(model).items()}
        save_file(state, str(run_model_dir / "trained_weights.safetensors"))


def load_trained(base: Any, run_model_dir: Path, method: str) -> Any:
    """Put a run's trained weights onto a freshly loaded backbone (inverse of ``save_trained``)."""
    if method == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(run_model_dir))
    if method == "head_only":
        from safetensors.torch import load_file

        state = load_file(str(run_model_dir / "trained_weights.safetensors"))
        missing = set(state) - {name for name, _ in base.named_parameters()}
        if missing:
            raise ConfigError(f"saved weights do not fit the backbone: {sorted(missing)[:3]}", file=str(run_model_dir))
        base.load_state_dict(state, strict=False)
        return base
    return base  # "none": the full model was loaded from run_model_dir itself
