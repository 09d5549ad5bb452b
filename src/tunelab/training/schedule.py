"""Learning-rate schedules: linear warm-up, then cosine, linear or constant."""

from __future__ import annotations

import math

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
