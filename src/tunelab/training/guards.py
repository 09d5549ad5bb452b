"""Guardrails: stop a run that has gone wrong with a diagnosis (NaN, a loss stuck at 0 or growing without bound)."""

from __future__ import annotations

import math
from typing import Any

from tunelab.errors import TunelabError
from tunelab.training.state import TrainState

ZERO_LOSS_PATIENCE = 10
GROWTH_START_STEPS = 5  # the loss-growth guard's reference: the mean loss of this many first steps
GROWTH_SMOOTHING = 0.9  # weight of the past in the smoothed loss (about 10 steps)


class TrainingFailed(TunelabError):
    """Training went wrong (NaN, a loss stuck at 0, a batch with nothing to train); the last checkpoint is intact."""

    exit_code = 3
    run_status = "failed"


class TrainingStopped(TunelabError):
    """Training was stopped by SIGINT (exit code 130) or SIGTERM (143), after checkpointing its newest step."""

    exit_code = 130
    run_status = "stopped"

    def __init__(self, what: str, *, exit_code: int = 130, **where: Any):
        super().__init__(what, **where)
        self.exit_code = exit_code


def check_step(
    state: TrainState,
    loss: float,
    grad_norm: float,
    units: int,
    max_nan_skips: int,
    rows: list[int],
    max_loss_growth: float = 0.0,
) -> bool:
    """Judge one optimizer step before it is applied.

    Returns:
        True to apply the step, False to skip it (a bad step within ``max_nan_skips``).

    Raises:
        TrainingFailed: on a batch with no trained tokens, too many NaN/inf steps, a loss stuck at exactly 0, or a
            smoothed loss grown past ``max_loss_growth`` times its start.
    """
    at = state.step + 1
    if units == 0:
        raise TrainingFailed(
            f"the batch of step {at} has no trained tokens (source rows {rows[:8]})",
            hint="run 'tunelab data check' and look at rows with nothing trained",
        )
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        state.nan_skips += 1
        if state.nan_skips <= max_nan_skips:
            return False
        raise TrainingFailed(
            f"the {what} became {loss if what == 'loss' else grad_norm} at step {at}",
            hint="lower training.learning_rate, set training.gradient_clip, use float32 or "
            "bfloat16 rather than float16, or allow a few skips with training.max_nan_skips",
        )
    state.zero_loss_steps = state.zero_loss_steps + 1 if loss == 0.0 else 0
    if state.zero_loss_steps >= ZERO_LOSS_PATIENCE:
        raise TrainingFailed(
            f"the loss has been exactly 0 for {ZERO_LOSS_PATIENCE} steps (at step {at})",
            hint="the labels may leak into the inputs, or every trained token is trivially "
            "predictable; check the data with 'tunelab data inspect'",
        )
    if max_loss_growth > 0:
        check_growth(state, loss, max_loss_growth)
    return True


def check_growth(state: TrainState, loss: float, max_growth: float) -> None:
    """Stop a run whose smoothed loss has grown past ``max_growth`` times its start.

    The start is the mean loss of the first steps, or the first step's loss when lower: no update has touched that
    one yet, and with a learning rate far too high the loss climbs from the second step on. Such a run climbs 20-85x
    without ever reaching NaN; left alone it ends "successfully" with a ruined model.

    Raises:
        TrainingFailed: naming the step, the growth and what to change.
    """
    n = state.loss_steps
    state.loss_steps += 1
    state.loss_smooth = (
        loss if state.loss_smooth is None else GROWTH_SMOOTHING * state.loss_smooth + (1 - GROWTH_SMOOTHING) * loss
    )
    if n < GROWTH_START_STEPS:
        state.loss_start = loss if state.loss_start is None else (state.loss_start * n + loss) / (n + 1)
    if n == 0:
        state.loss_first = loss
        return
    start = min(state.loss_start or 0.0, state.loss_first or 0.0)
    if start > 0 and state.loss_smooth > max_growth * start:
        raise TrainingFailed(
            f"the loss diverged at step {state.step + 1}: smoothed {state.loss_smooth:.4g}, "
            f"{state.loss_smooth / start:.0f}x its start {start:.4g} (limit training.max_loss_growth {max_growth:g})",
            hint="the learning rate is too high: lower training.learning_rate (e.g. 10x), or add warm-up "
            "(training.warmup_epochs); the checkpoints written before are kept; 0 turns this check off",
        )
