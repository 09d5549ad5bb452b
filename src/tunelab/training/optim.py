"""Optimizers, with weight decay kept off biases and normalisation weights."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.config import TrainingConfig
from tunelab.errors import ConfigError

BITSANDBYTES = {
    "AdamW8bit": "AdamW8bit",
    "PagedAdamW": "PagedAdamW",
    "PagedAdamW8bit": "PagedAdamW8bit",
    "Lion": "Lion",
}


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights and other 1-D tensors are not decayed."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith(".bias") or "norm" in lowered


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed and a not-decayed group."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (plain if no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _fused_ok(groups: list[dict[str, Any]]) -> bool:
    """torch's fused AdamW needs floating-point parameters on CPU or CUDA, all on one kind of device."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def build_optimizer(model: torch.nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters.

    Raises:
        ConfigError: when the optimizer's library is missing or cannot run on this device.
    """
    groups = parameter_groups(model, training.weight_decay)
    lr = training.learning_rate
    name = training.optimizer
    if name == "AdamW":
        # One fused kernel per step where torch has it; foreach (one kernel per group) otherwise.
        fused = _fused_ok(groups)
        return torch.optim.AdamW(groups, lr=lr, fused=fused, foreach=None if fused else True)
    if name == "Adam":
        return torch.optim.Adam(groups, lr=lr, foreach=True)  # decay folded into the gradient (L2)
    if name == "SGD":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, foreach=True)
    if name == "RMSprop":
        return torch.optim.RMSprop(groups, lr=lr, foreach=True)
    if name == "Adadelta":
        return torch.optim.Adadelta(groups, lr=lr, foreach=True)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    return _bitsandbytes(name, groups, lr)


def _bitsandbytes(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(
            f"the {name} optimizer needs bitsandbytes",
            field="training.optimizer",
            hint="pip install bitsandbytes, or use AdamW",
        ) from None
    try:
        return getattr(bnb.optim, BITSANDBYTES[name])(groups, lr=lr)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        raise ConfigError(
            f"the {name} optimizer cannot run here ({str(exc).splitlines()[0]})",
            field="training.optimizer",
            hint="use AdamW (or Adafactor) on this device",
        ) from None
