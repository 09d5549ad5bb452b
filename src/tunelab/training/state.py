"""Runtime state of a training run. It is never part of the config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    """Where training is: counts, position in the data, the best evaluation so far, the seed in use."""

    seed: int
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    tokens_seen: int = 0  # real (non-padding) input tokens of the applied steps
    positions_seen: int = 0  # input positions computed, padding included
    trained_seen: int = 0  # trained units (answer tokens, or rows)
    train_seconds: float = 0.0  # wall time of the training steps and their data loading, evaluations excluded
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    nan_skips: int = 0
    zero_loss_steps: int = 0  # consecutive optimizer steps whose loss was exactly 0
    loss_first: float | None = None  # loss of the first applied step (the loss-growth guard's reference)
    loss_start: float | None = None  # mean loss of the first steps (the same)
    loss_smooth: float | None = None  # exponentially smoothed loss of the applied steps
    loss_steps: int = 0  # applied steps the two above have seen
    early_stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
