"""Metric arithmetic: pure functions of predictions and references."""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import ConfigError


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


def compute_chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu, 0–100): character n-gram F-score, kinder than BLEU to short or reworded answers."""
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (0–100) of one answer: the longest common word subsequence against the reference."""
    a, b = _words(prediction), _words(reference)
    if not a or not b:
        return 100.0 if a == b else 0.0
    previous = [0] * (len(b) + 1)
    for word in a:  # O(len(a) * len(b)) dynamic programme, one row at a time
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 100.0 * 2 * precision * recall / (precision + recall)


def compute_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over the rows (0–100)."""
    if not predictions:
        return 0.0
    return float(np.mean([rouge_l(p, r) for p, r in zip(predictions, references)]))


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces: the SQuAD normalisation for exact match."""
    text = re.sub(r"\b(a|an|the)\b", " ", text.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """100 when the normalised answer equals the normalised reference, else 0."""
    return 100.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def compute_exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of exact matches after normalisation (0–100)."""
    if not predictions:
        return 0.0
    return float(np.mean([exact_match(p, r) for p, r in zip(predictions, references)]))


# Text metrics computed from generated answers: key -> (corpus score, per-row score).
TEXT_METRICS: dict[str, tuple[Callable[[Sequence[str], Sequence[str]], float], Callable[[str, str], float]]] = {
    "bleu": (compute_bleu, lambda p, r: compute_sentence_bleu(p, r)),
    "chrf": (compute_chrf, lambda p, r: compute_chrf([p], [r])),
    "rouge_l": (compute_rouge_l, rouge_l),
    "exact_match": (compute_exact_match, exact_match),
}


def load_metric_function(spec: str, field: str = "prediction.metric") -> Callable[..., Any]:
    """The user function ``module:function`` (or ``path/to/file.py:function``): a metric, or a reward function.

    Raises:
        ConfigError: when the module or function cannot be found, naming ``field``.
    """
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser().resolve()
            module_name = f"tunelab_user_metric_{abs(hash(str(path)))}"
            if module_name not in sys.modules:
                loader_spec = importlib.util.spec_from_file_location(module_name, path)
                if loader_spec is None or loader_spec.loader is None or not path.is_file():
                    raise ImportError(f"no file {path}")
                module = importlib.util.module_from_spec(loader_spec)
                loader_spec.loader.exec_module(module)
                sys.modules[module_name] = module
            module = sys.modules[module_name]
        else:
            module = importlib.import_module(target)
    except Exception as exc:  # any import failure is the user's metric module: say which
        raise ConfigError(
            f"cannot import the module '{target}' ({type(exc).__name__}: {exc})",
            field=field,
            hint="use 'package.module:function' importable from here, or 'path/to/file.py:function'",
        ) from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"'{target}' has no function '{name}'", field=field, hint="check the name after the ':'")
    return function


def compute_custom_metric(spec: str, predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Call a user metric ``function(predictions, references) -> number`` and check what it returns."""
    value = load_metric_function(spec)(list(predictions), list(references))
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"the metric '{spec}' returned {type(value).__name__}, not a number",
            field="prediction.metric",
            hint="return one float for the whole validation set",
        ) from exc


def compute_regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² of numeric predictions."""
    targets, predictions = np.asarray(targets, float).ravel(), np.asarray(predictions, float).ravel()
    errors = predictions - targets
    spread = float(((targets - targets.mean()) ** 2).sum()) if len(targets) else 0.0
    return {
        "mae": float(np.abs(errors).mean()) if len(errors) else float("nan"),
        "rmse": float(math.sqrt((errors**2).mean())) if len(errors) else float("nan"),
        "r2": 1.0 - float((errors**2).sum()) / spread if spread > 0 else float("nan"),
    }


def compute_perplexity(mean_loss: float) -> float:
    """exp(mean token loss), capped to stay finite."""
    return float(math.exp(min(mean_loss, 50.0)))


def compute_classification_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, macro and micro F1, Matthews correlation and AUC (one-vs-rest macro for several classes).

    Args:
        targets: true class indices, shape [rows].
        probabilities: class probabilities, shape [rows, classes].
    """
    from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

    predicted = probabilities.argmax(axis=1)
    n_classes = probabilities.shape[1]
    labels = list(range(n_classes))
    metrics = {
        "accuracy": float((predicted == targets).mean()),
        "f1": float(f1_score(targets, predicted, average="macro", labels=labels, zero_division=0)),
        "f1_micro": float(f1_score(targets, predicted, average="micro", labels=labels, zero_division=0)),
        "mcc": float(matthews_corrcoef(targets, predicted)) if len(targets) else float("nan"),
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
    from sklearn.metrics import matthews_corrcoef

    return {
        "accuracy": float((predicted == truth).all(axis=1).mean()),
        "mcc": float(matthews_corrcoef(truth.ravel(), predicted.ravel())),
        "f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "auc": auc,
    }


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray, n_classes: int) -> list[list[int]]:
    """Counts[true][predicted] over ``n_classes`` classes."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(targets, int), np.asarray(predicted, int)), 1)
    return counts.tolist()
