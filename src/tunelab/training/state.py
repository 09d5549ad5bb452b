"""Runtime state of a training run. It is never part of the config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainState:
    """Where training is: counts, the best evaluation so far, the seed in use."""

    seed: int
    step: int = 0  # optimizer steps done
    epoch: int = 0  # completed passes over the training data
    micro_step: int = 0  # micro-batches done in the current epoch
    tokens_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
