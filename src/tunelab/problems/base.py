"""The protocol every problem type implements. The training loop only ever talks to this."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from tunelab.data.readers import Record
from tunelab.data.tokenize import EncodedSplit, SplitBuilder


@dataclass
class EvalResult:
    """Metrics of one evaluation (lower-case names, e.g. ``loss``, ``bleu``) and one report row per example."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)


class Problem(Protocol):
    """One problem type: how rows become features, batches, a loss, metrics and predictions."""

    name: ClassVar[str]

    def auto_class(self) -> Any:
        """The transformers auto class that loads the backbone with this problem's head."""

    def model_kwargs(self) -> dict[str, Any]:
        """Extra config values for loading the backbone (e.g. number of labels)."""

    def example(self, record: Record) -> dict[str, Any]:
        """The canonical example of one raw record; raises ``DataError`` naming the row and field."""

    def label_of(self, example: dict[str, Any]) -> str | None:
        """The class label to stratify splits by, or None."""

    def fit(self, labels: list[str], source: str) -> None:
        """Learn what the data defines before encoding (e.g. the classes)."""

    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        """Tokenise one example into ``builder``."""

    def collate(
        self, split: EncodedSplit, indices: list[int], train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """A padded batch; it always holds ``num_trained`` (what the loss is normalised by)."""

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, number of trained units) — tokens for causal LM, rows for classification."""

    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        """Metrics on a validation split, and one report row per example."""

    def predict(self, model: Any, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Outputs for prompt-only examples (answers, or labels with probabilities)."""

    def save(self, run_dir: Path) -> None:
        """Write what a later command needs to rebuild this problem (e.g. labels.json)."""

    def load(self, run_dir: Path) -> None:
        """Read what ``save`` wrote."""
