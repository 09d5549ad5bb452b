"""Metric arithmetic: pure functions of predictions and references."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def compute_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 0–100)."""
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def compute_sentence_bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (sacrebleu, 0–100), for per-row scores."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def compute_perplexity(mean_loss: float) -> float:
    """exp(mean token loss), capped to stay finite."""
    return float(math.exp(min(mean_loss, 50.0)))


def compute_classification_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 and AUC (one-vs-rest macro for several classes).

    Args:
        targets: true class indices, shape [rows].
        probabilities: class probabilities, shape [rows, classes].
    """
    from sklearn.metrics import f1_score, roc_auc_score

    predicted = probabilities.argmax(axis=1)
    n_classes = probabilities.shape[1]
    metrics = {
        "accuracy": float((predicted == targets).mean()),
        "f1": float(f1_score(targets, predicted, average="macro", labels=list(range(n_classes)), zero_division=0)),
    }
    present = np.unique(targets)
    if len(present) < 2:
        metrics["auc"] = float("nan")  # undefined with one class in the validation data
    elif n_classes == 2:
        metrics["auc"] = float(roc_auc_score(targets, probabilities[:, 1]))
    else:
        probs = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        metrics["auc"] = float(roc_auc_score(targets, probs, multi_class="ovr", average="macro", labels=present))
    return metrics


def compute_multilabel_metrics(
    targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Multi-label: subset accuracy (every label right), micro/macro F1 and macro AUC over classes with both values.

    Args:
        targets: multi-hot truth, shape [rows, classes].
        probabilities: per-class probabilities, shape [rows, classes].
    """
    from sklearn.metrics import f1_score, roc_auc_score

    predicted = (probabilities >= threshold).astype(int)
    truth = (targets > 0.5).astype(int)
    scored = [c for c in range(truth.shape[1]) if 0 < truth[:, c].sum() < len(truth)]
    auc = float(np.mean([roc_auc_score(truth[:, c], probabilities[:, c]) for c in scored])) if scored else float("nan")
    return {
        "accuracy": float((predicted == truth).all(axis=1).mean()),
        "f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "auc": auc,
    }
