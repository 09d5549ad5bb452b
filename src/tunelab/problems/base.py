"""The protocol every problem type implements, and the spec it registers. The training loop only talks to this."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

# The spec lives below ``config`` in the import layers (config, data and models read it); it is re-exported here so
# that a problem file imports everything it implements from one place.
from tunelab.problem_spec import ProblemOptions, ProblemSpec, Reference, Sampling, register_spec

if TYPE_CHECKING:
    import torch

    from tunelab.data.readers import Record
    from tunelab.data.tokenize import EncodedSplit, SplitBuilder

__all__ = ["EvalResult", "Problem", "ProblemOptions", "ProblemSpec", "Reference", "Sampling", "register_spec"]


@dataclass
class EvalResult:
    """Metrics of one evaluation (lower-case names, e.g. ``loss``, ``bleu``) and one report row per example."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)


class Problem(Protocol):
    """One problem type's behaviour: how rows become features, batches, a loss, metrics and predictions.

    Optional members, read with ``getattr`` and a default where they are used (declare them only when they apply):

    - ``stratify: bool`` (True) — split by ``label_of``'s labels; ``classes`` / ``multi_label`` / ``target_stats``
      — what ``fit`` learned, recorded in run.json and the model card;
    - ``padding_free() -> bool`` — batches are packed without padding (planner);
    - ``attach(model, data)`` — called by ``training.setup`` once the model and data exist (e.g. a reference model);
    - ``batch_repeats: int`` (1) — optimizer steps taken per batch (RL's iterations);
    - ``loss_growth_guard: bool`` (True) — whether a growing loss stops the run;
    - ``pop_stats() -> dict[str, float]`` — extra metrics to log after each step;
    - ``renderer`` / ``prompt_ids(examples)`` — generative types: the prompt renderer and prompt token ids.
    """

    name: ClassVar[str]
    cfg: Any  # the RunConfig
    tokenizer: Any

    def auto_class(self) -> Any:
        """The transformers auto class that loads the backbone with this problem's head."""

    def model_kwargs(self) -> dict[str, Any]:
        """Extra config values for loading the backbone (e.g. number of labels)."""

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
