"""Guardrails: stop a run that has gone wrong with a diagnosis, and stop cleanly on Ctrl-C."""

from __future__ import annotations

import math
import signal
from typing import Any

from tunelab.errors import TunelabError
from tunelab.training.state import TrainState

ZERO_LOSS_PATIENCE = 10


class TrainingFailed(TunelabError):
    """Training went wrong (NaN, a loss stuck at 0, a batch with nothing to train); the last checkpoint is intact."""

    exit_code = 3
    run_status = "failed"


class TrainingStopped(TunelabError):
    """Training was interrupted on request after saving a checkpoint."""

    exit_code = 130
    run_status = "stopped"


def check_step(
    state: TrainState, loss: float, grad_norm: float, units: int, max_nan_skips: int, rows: list[int]
) -> bool:
    """Judge one optimizer step before it is applied.

    Returns:
        True to apply the step, False to skip it (a bad step within ``max_nan_skips``).

    Raises:
        TrainingFailed: on a batch with no trained tokens, too many NaN/inf steps, or a loss stuck at exactly 0.
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
    return True


class StopOnInterrupt:
    """Context manager: the first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step; a second
    Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopOnInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
