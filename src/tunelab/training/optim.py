"""Optimizers, with weight decay kept off biases and normalisation weights."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.config import TrainingConfig


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


def build_optimizer(model: torch.nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters."""
    groups = parameter_groups(model, training.weight_decay)
    lr = training.learning_rate
    name = training.optimizer
    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    if name == "Adam":
        # Plain Adam folds decay into the gradient (L2), as torch.optim.Adam does.
        return torch.optim.Adam(groups, lr=lr, foreach=True)
    if name == "SGD":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, foreach=True)
    if name == "RMSprop":
        return torch.optim.RMSprop(groups, lr=lr, foreach=True)
    if name == "Adadelta":
        return torch.optim.Adadelta(groups, lr=lr, foreach=True)
    raise ValueError(f"unknown optimizer {name}")  # unreachable: the config schema lists the names
