"""Learning-rate schedules: linear warm-up, then cosine, linear or constant."""

from __future__ import annotations

import math
from typing import Any

import torch


def compute_lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer ``step`` (0-based) of ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "Constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if kind == "Linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``compute_lr_factor``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: compute_lr_factor(step, total_steps, warmup_steps, kind)
    )


def compute_warmup_steps(training: Any, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up length in optimizer steps from whichever of ``warmup_steps``, ``warmup_ratio`` (of all steps) or
    ``warmup_epochs`` the config gives (the config allows only one to be non-zero)."""
    if training.warmup_steps:
        return min(training.warmup_steps, total_steps)
    if training.warmup_ratio:
        return round(training.warmup_ratio * total_steps)
    return round(training.warmup_epochs * steps_per_epoch)
