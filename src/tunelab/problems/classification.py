"""Sequence classification: one or more text columns; one label per row (binary or multi-class) or several
(multi-label, a list or a delimited string)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.config import CUSTOM_METRIC, RunConfig, metric_key
from tunelab.data.collate import pad_classification
from tunelab.data.readers import Record
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.errors import DataError, RunDirError
from tunelab.evaluate.metrics import (
    compute_classification_metrics,
    compute_custom_metric,
    compute_multilabel_metrics,
    compute_regression_metrics,
)
from tunelab.io import write_json_atomic
from tunelab.problems.base import EvalResult, ProblemSpec, register_spec


def custom_metrics(cfg: RunConfig, predictions: list[Any], references: list[Any]) -> dict[str, float]:
    """The user's ``module:function`` metrics, called with predicted and true labels (or values)."""
    return {
        metric_key(name): compute_custom_metric(name, predictions, references)
        for name in cfg.all_metrics()
        if CUSTOM_METRIC.match(name)
    }


def sort_labels(labels: set[str]) -> list[str]:
    """Classes in a natural order: numerically when every label is a number, else alphabetically."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def shown_text(example: dict[str, Any]) -> str:
    """The text of a row as a report shows it (a sentence pair on two lines)."""
    return example["text"] + (f"\n{example['text_pair']}" if example.get("text_pair") is not None else "")


class ClassificationProblem:
    """Text classification with a classification head on an encoder or a decoder backbone."""

    name: ClassVar[str] = "classification"

    def __init__(self, cfg: RunConfig, tokenizer: Any):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.classes: list[str] = []
        self.class_index: dict[str, int] = {}
        self.multi_label = False

    def auto_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "num_labels": len(self.classes),
            "id2label": dict(enumerate(self.classes)),
            "label2id": dict(self.class_index),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if self.multi_label:
            kwargs["problem_type"] = "multi_label_classification"
        return kwargs

    # ------------------------------------------------------------------ data
    def label_of(self, example: dict[str, Any]) -> Any:
        return example["label"]

    def fit(self, labels: list[Any], source: str) -> None:
        self.multi_label = any(isinstance(label, list) for label in labels)
        names: set[str] = set()
        for label in labels:
            names.update(label if isinstance(label, list) else [label])
        classes = sort_labels(names)
        if len(classes) < 2 and not (self.multi_label and classes):
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

    def _target(self, label: Any, record: Record) -> Any:
        names = label if isinstance(label, list) else [label]
        for name in names:
            if name not in self.class_index:
                raise record.error(
                    f"label '{name}' does not occur in the training data (classes: {', '.join(self.classes[:10])})",
                    field=self.cfg.dataset.label_column,
                )
        if not self.multi_label:
            return self.class_index[names[0]]
        hot = [0.0] * len(self.classes)
        for name in names:
            hot[self.class_index[name]] = 1.0
        return hot

    def _ids(self, text: str, pair: str | None = None) -> tuple[list[int], bool]:
        """Token ids of a text, or of a sentence pair: the tokenizer's own pair encoding where it has a separator
        token (BERT-style [SEP]), else the two texts on two lines."""
        if pair is not None and not self.tokenizer.sep_token:
            text, pair = f"{text}\n{pair}", None
        ids = self.tokenizer(
            text, pair, truncation=True, max_length=self.cfg.tokenizer.max_length, return_overflowing_tokens=False
        )["input_ids"]
        return ids, len(ids) >= self.cfg.tokenizer.max_length

    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        ids, truncated = self._ids(example["text"], example.get("text_pair"))
        label = example["label"]
        builder.add(
            ids,
            row,
            target=self._target(label, record),
            truncated=truncated,
            empty=not example["text"].strip(),
            label="|".join(label) if isinstance(label, list) else label,
            prompt_length=len(ids),
            answer_length=0,
            ends_eos=True,
        )

    def collate(
        self, split: EncodedSplit, indices: list[int], train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        return pad_classification(split, indices, self.tokenizer.pad_token_id, self.cfg.tokenizer.padding_quantile)

    # ------------------------------------------------------------------ loss
    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        if self.multi_label:
            # Mean over classes per row, summed over rows: normalised by rows like the single-label loss.
            loss_sum = F.binary_cross_entropy_with_logits(logits, batch["labels"].float(), reduction="none").mean(1)
            return loss_sum.sum(), torch.tensor(len(batch["labels"]))
        return F.cross_entropy(logits, batch["labels"], reduction="sum"), torch.tensor(len(batch["labels"]))

    # ------------------------------------------------------------------ evaluation
    def batch_size(self) -> int:
        """Rows per prediction batch: the inference batch size, else the training one."""
        train = self.cfg.training.batch_size
        return self.cfg.prediction.batch_size_inference or (train if isinstance(train, int) else 32)

    @torch.no_grad()
    def logits(self, model: Any, split: EncodedSplit) -> torch.Tensor:
        """The head's outputs for every row of ``split`` in batches, shape [rows, outputs] (float32, CPU)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        batch_size = self.batch_size()
        out = []
        for start in range(0, len(split), batch_size):
            indices = list(range(start, min(start + batch_size, len(split))))
            batch = pad_classification(split, indices, self.tokenizer.pad_token_id)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits.float()
            out.append(logits.cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, max(len(self.classes), 1))

    def probabilities(self, model: Any, split: EncodedSplit) -> np.ndarray:
        """Class probabilities for every row of ``split``, shape [rows, classes]."""
        logits = self.logits(model, split)
        return (torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)).numpy()

    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        probs = self.probabilities(model, split)
        targets = split.targets
        assert targets is not None
        if self.multi_label:
            metrics = compute_multilabel_metrics(targets, probs)
            clipped = np.clip(probs, 1e-7, 1 - 1e-7)
            bce = -(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped)).mean()
            metrics = {"loss": float(bce), **metrics}
            metrics.update(custom_metrics(self.cfg, [self._names(p) for p in probs], [ex["label"] for ex in examples]))
            rows = [
                {
                    "prompt": shown_text(ex),
                    "reference": "|".join(ex["label"]),
                    "prediction": self._names(p),
                    "score": float(((p >= 0.5) == (t > 0.5)).all()),
                }
                for ex, p, t in zip(examples, probs, targets)
            ]
            return EvalResult(metrics, rows)
        metrics = compute_classification_metrics(targets, probs)
        picked = probs[np.arange(len(targets)), targets]
        metrics = {"loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()), **metrics}
        guesses = probs.argmax(axis=1)
        metrics.update(custom_metrics(self.cfg, [self.classes[g] for g in guesses], [self.classes[t] for t in targets]))
        rows = [
            {
                "prompt": shown_text(ex),
                "reference": self.classes[t],
                "prediction": self.classes[g],
                "score": float(g == t),
                "confidence": float(p[g]),
                "p_true": float(p[t]),
            }
            for ex, p, t, g in zip(examples, probs, targets, guesses)
        ]
        return EvalResult(metrics, rows)

    def _names(self, probs: np.ndarray) -> str:
        return "|".join(c for c, p in zip(self.classes, probs) if p >= 0.5)

    def predict(self, model: Any, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        builder = SplitBuilder()
        for i, ex in enumerate(examples):
            builder.add(
                self._ids(ex["text"], ex.get("text_pair"))[0],
                i + 1,
                target=[0.0] * len(self.classes) if self.multi_label else 0,
            )
        probs = self.probabilities(model, builder.build())
        out = []
        for p in probs:
            head = (
                {"prediction": self._names(p)}
                if self.multi_label
                else {"prediction": self.classes[int(p.argmax())], "confidence": float(p.max())}
            )
            out.append({**head, **{f"prob_{c}": float(v) for c, v in zip(self.classes, p)}})
        return out

    def save(self, run_dir: Path) -> None:
        write_json_atomic(run_dir / "labels.json", {"classes": self.classes, "multi_label": self.multi_label})

    def load(self, run_dir: Path) -> None:
        path = run_dir / "labels.json"
        if not path.is_file():
            raise RunDirError("labels.json is missing from the run directory", file=str(run_dir))
        saved = json.loads(path.read_text(encoding="utf-8"))
        self._set_classes(saved["classes"])
        self.multi_label = bool(saved.get("multi_label", False))


class RegressionProblem(ClassificationProblem):
    """One number per text (a score, a rating): a one-output head trained on standardised targets.

    Targets are standardised with the training rows' mean and standard deviation (saved with the run), so the
    learning rate that suits classification suits regression too; predictions are mapped back to the data's scale.
    """

    name: ClassVar[str] = "regression"
    stratify = False  # every value is its own stratum: split at random

    def __init__(self, cfg: RunConfig, tokenizer: Any):
        super().__init__(cfg, tokenizer)
        self.target_stats: tuple[float, float] = (0.0, 1.0)

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression", "pad_token_id": self.tokenizer.pad_token_id}

    def _number(self, label: Any, where: str, record: Record | None = None) -> float:
        try:
            value = float(label)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value):
            message = f"label '{label}' is not a finite number; regression needs numeric labels"
            if record is not None:
                raise record.error(message, field=self.cfg.dataset.label_column)
            raise DataError(message, file=where, field=self.cfg.dataset.label_column, hint="fix or drop that row")
        return value

    def fit(self, labels: list[Any], source: str) -> None:
        values = np.asarray([self._number(label, source) for label in labels], dtype=np.float64)
        if len(values) < 2 or values.std() == 0:
            raise DataError(
                "the label column has fewer than two different values; regression needs them to vary",
                file=source,
                field=self.cfg.dataset.label_column,
                hint="check dataset.label_column",
            )
        self.target_stats = (float(values.mean()), float(values.std()))

    def _target(self, label: Any, record: Record) -> Any:
        mean, std = self.target_stats
        return (self._number(label, "", record) - mean) / std

    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        ids, truncated = self._ids(example["text"], example.get("text_pair"))
        builder.add(
            ids,
            row,
            target=[self._target(example["label"], record)],
            truncated=truncated,
            empty=not example["text"].strip(),
            prompt_length=len(ids),
            answer_length=0,
            ends_eos=True,
        )

    def _loss(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.training.loss_function
        if kind == "L1":
            return F.l1_loss(predicted, target, reduction="sum")
        if kind == "Huber":
            return F.huber_loss(predicted, target, reduction="sum")
        return F.mse_loss(predicted, target, reduction="sum")

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()[:, 0]
        target = batch["labels"].float().reshape(-1)
        return self._loss(out, target), torch.tensor(len(target))

    def values(self, model: Any, split: EncodedSplit) -> np.ndarray:
        """Predictions on the data's own scale, one per row."""
        mean, std = self.target_stats
        return self.logits(model, split)[:, 0].numpy() * std + mean

    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        predicted = self.values(model, split)
        assert split.targets is not None
        mean, std = self.target_stats
        truth = split.targets.reshape(-1) * std + mean
        scaled = self._loss(torch.from_numpy((predicted - mean) / std), torch.from_numpy((truth - mean) / std))
        metrics = {"loss": float(scaled) / max(len(truth), 1), **compute_regression_metrics(truth, predicted)}
        metrics.update(custom_metrics(self.cfg, predicted.tolist(), truth.tolist()))
        rows = [
            {"prompt": shown_text(ex), "reference": float(t), "prediction": float(p), "score": -abs(float(p - t))}
            for ex, p, t in zip(examples, predicted, truth)
        ]
        return EvalResult(metrics, rows)

    def predict(self, model: Any, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        builder = SplitBuilder()
        for i, ex in enumerate(examples):
            builder.add(self._ids(ex["text"], ex.get("text_pair"))[0], i + 1, target=[0.0])
        return [{"prediction": float(v)} for v in self.values(model, builder.build())]

    def save(self, run_dir: Path) -> None:
        write_json_atomic(run_dir / "labels.json", {"regression": True, "target_stats": list(self.target_stats)})

    def load(self, run_dir: Path) -> None:
        path = run_dir / "labels.json"
        if not path.is_file():
            raise RunDirError("labels.json is missing from the run directory", file=str(run_dir))
        self.target_stats = tuple(json.loads(path.read_text(encoding="utf-8"))["target_stats"])


def labelled_rules(cfg: RunConfig) -> list[tuple[str, str]]:
    """Texts with labels: a label column, whole rows (no packing), read as text and label columns."""
    found = []
    kind = cfg.problem_type
    if not cfg.dataset.label_column:
        found.append(("dataset.label_column", f"required for {kind}"))
    if cfg.training.packing:
        found.append(("training.packing", f"packing is for causal LM training; turn it off for {kind}"))
    if cfg.dataset.format not in ("auto", "columns", "classification"):
        found.append(("dataset.format", f"{kind} reads text and label columns: use 'auto' or 'classification'"))
    return found


# config init and the studio's new-experiment form: a text and a label column, on the built-in encoder.
STARTER = {"llm_backbone": "all-minilm-l6-v2", "dataset": {"prompt_column": ["text"], "label_column": "label"}}

SPEC = register_spec(
    ProblemSpec(
        name="classification",
        summary="text classification (one or several classes per text) with a classification head",
        build=ClassificationProblem,
        data_kinds=("labelled",),
        default_format="classification",
        metrics=("Accuracy", "F1", "F1_Micro", "AUC", "MCC"),
        losses=("CrossEntropy",),
        rules=labelled_rules,
        shown_kinds=("labelled",),
        starter=STARTER,
        endpoints=("classify",),
        rows_layout="labels",
        report_sections=("confusion_matrix",),
    )
)
REGRESSION_SPEC = register_spec(
    ProblemSpec(
        name="regression",
        summary="one number per text (a score, a rating) with a one-output head",
        build=RegressionProblem,
        data_kinds=("labelled",),
        default_format="classification",
        metrics=("MAE", "RMSE", "R2"),
        lower_is_better=("MAE", "RMSE"),
        losses=("MSE", "L1", "Huber"),
        rules=labelled_rules,
        numeric_labels=True,
        starter=STARTER,
        endpoints=("classify",),
        rows_layout="numbers",
        score_note=" Score: minus the absolute error (0 is perfect).",
    )
)
