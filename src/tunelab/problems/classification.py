"""Sequence classification: one or more text columns, one label per row, binary or multi-class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.config import RunConfig
from tunelab.data.collate import pad_classification
from tunelab.data.formats import classification_example
from tunelab.data.readers import Record
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.errors import DataError, RunDirError
from tunelab.evaluate.metrics import compute_classification_metrics
from tunelab.io import write_json_atomic
from tunelab.problems import PROBLEMS
from tunelab.problems.base import EvalResult


def sort_labels(labels: set[str]) -> list[str]:
    """Classes in a natural order: numerically when every label is a number, else alphabetically."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


@PROBLEMS.register("classification")
class ClassificationProblem:
    """Text classification with a classification head on an encoder or a decoder backbone."""

    name: ClassVar[str] = "classification"

    def __init__(self, cfg: RunConfig, tokenizer: Any):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.classes: list[str] = []
        self.class_index: dict[str, int] = {}

    def auto_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "num_labels": len(self.classes),
            "id2label": dict(enumerate(self.classes)),
            "label2id": dict(self.class_index),
            "pad_token_id": self.tokenizer.pad_token_id,
        }

    # ------------------------------------------------------------------ data
    def example(self, record: Record) -> dict[str, Any]:
        return classification_example(record, self.cfg)

    def label_of(self, example: dict[str, Any]) -> str | None:
        return example["label"]

    def fit(self, labels: list[str], source: str) -> None:
        classes = sort_labels(set(labels))
        if len(classes) < 2:
            only = classes[0] if classes else "none"
            raise DataError(
                f"the label column has only one class ('{only}'); classification needs at least two",
                file=source,
                field=self.cfg.dataset.label_column,
                hint="check dataset.label_column, or add rows of the other classes",
            )
        self._set_classes(classes)

    def _set_classes(self, classes: list[str]) -> None:
        self.classes = list(classes)
        self.class_index = {c: i for i, c in enumerate(self.classes)}

    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        label = example["label"]
        if label not in self.class_index:
            raise record.error(
                f"label '{label}' does not occur in the training data (classes: {', '.join(self.classes[:10])})",
                field=self.cfg.dataset.label_column,
            )
        ids = self.tokenizer(example["text"], truncation=True, max_length=self.cfg.tokenizer.max_length)["input_ids"]
        builder.add(ids, row, target=self.class_index[label])

    def collate(
        self, split: EncodedSplit, indices: list[int], train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        return pad_classification(split, indices, self.tokenizer.pad_token_id, self.cfg.tokenizer.padding_quantile)

    # ------------------------------------------------------------------ loss
    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        return loss_sum, torch.tensor(len(batch["labels"]))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def probabilities(self, model: Any, split: EncodedSplit) -> np.ndarray:
        """Class probabilities for every row of ``split``, shape [rows, classes]."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        batch_size = self.cfg.prediction.batch_size_inference or self.cfg.training.batch_size
        out = []
        for start in range(0, len(split), batch_size):
            indices = list(range(start, min(start + batch_size, len(split))))
            batch = pad_classification(split, indices, self.tokenizer.pad_token_id)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        probs = self.probabilities(model, split)
        targets = split.targets
        assert targets is not None
        metrics = compute_classification_metrics(targets, probs)
        picked = probs[np.arange(len(targets)), targets]
        metrics = {"loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()), **metrics}
        rows = []
        for ex, p, t in zip(examples, probs, targets):
            guess = int(p.argmax())
            rows.append(
                {
                    "prompt": ex["text"],
                    "reference": self.classes[t],
                    "prediction": self.classes[guess],
                    "score": float(guess == t),
                    "confidence": float(p[guess]),
                }
            )
        return EvalResult(metrics, rows)

    def predict(self, model: Any, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        builder = SplitBuilder()
        for i, ex in enumerate(examples):
            ids = self.tokenizer(ex["text"], truncation=True, max_length=self.cfg.tokenizer.max_length)["input_ids"]
            builder.add(ids, i + 1, target=0)
        probs = self.probabilities(model, builder.build())
        return [
            {
                "prediction": self.classes[int(p.argmax())],
                "confidence": float(p.max()),
                **{f"prob_{c}": float(v) for c, v in zip(self.classes, p)},
            }
            for p in probs
        ]

    def save(self, run_dir: Path) -> None:
        write_json_atomic(run_dir / "labels.json", {"classes": self.classes})

    def load(self, run_dir: Path) -> None:
        path = run_dir / "labels.json"
        if not path.is_file():
            raise RunDirError("labels.json is missing from the run directory", file=str(run_dir))
        self._set_classes(json.loads(path.read_text(encoding="utf-8"))["classes"])
