"""Metrics: text, classification and regression arithmetic, user functions, and how runs report them."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import causal_config, classification_config

from tunelab.config import validate_config
from tunelab.errors import ConfigError, DataError
from tunelab.evaluate import metrics as m
from tunelab.training.loop import train


def test_rouge_l_and_exact_match_by_hand():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = the cat on the mat (5 words of 6 each).
    assert m.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(100 * 5 / 6)
    assert m.rouge_l("", "") == 100.0 and m.rouge_l("x", "") == 0.0
    assert m.rouge_l("a b c", "d e f") == 0.0
    assert m.exact_match("The Answer!", "answer") == 100.0
    assert m.compute_exact_match(["12", "13"], ["12", "14"]) == 50.0


def test_chrf_rewards_close_answers():
    close = m.compute_chrf(["the model stops at eos"], ["the model stops at the eos token"])
    far = m.compute_chrf(["completely unrelated"], ["the model stops at the eos token"])
    assert 0 <= far < close <= 100
    assert m.compute_chrf(["same text"], ["same text"]) == pytest.approx(100.0)


def test_classification_metrics_include_mcc_micro_f1_and_confusion():
    targets = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    got = m.compute_classification_metrics(targets, probs)
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["f1_micro"] == pytest.approx(4 / 6)  # single-label micro F1 equals accuracy
    assert -1 <= got["mcc"] <= 1 and got["mcc"] > 0.4
    assert m.confusion_matrix(targets, probs.argmax(1), 3) == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_regression_metrics_by_hand():
    got = m.compute_regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert got["mae"] == pytest.approx(2 / 3)
    assert got["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert got["r2"] == pytest.approx(1 - 4 / 2)
    assert math.isnan(m.compute_regression_metrics(np.ones(3), np.ones(3))["r2"])


def test_user_metric_from_a_file_and_its_errors(tmp_path):
    module = tmp_path / "my_metric.py"
    module.write_text("def longer(preds, refs):\n    return sum(len(p) > len(r) for p, r in zip(preds, refs))\n")
    assert m.compute_custom_metric(f"{module}:longer", ["aaa", "b"], ["a", "bb"]) == 1.0
    with pytest.raises(ConfigError, match="no function 'missing'"):
        m.compute_custom_metric(f"{module}:missing", [], [])
    with pytest.raises(ConfigError, match="cannot import"):
        m.compute_custom_metric("no_such_module_xyz:f", [], [])
    other = tmp_path / "bad_metric.py"
    other.write_text("def bad(preds, refs):\n    return 'high'\n")
    with pytest.raises(ConfigError, match="not a number"):
        m.compute_custom_metric(f"{other}:bad", ["a"], ["a"])


def test_metric_names_are_checked_and_normalised():
    cfg = validate_config({"prediction": {"metric": "chrf", "metrics": ["rouge_l", "pkg.mod:score"]}})
    assert cfg.prediction.metric == "chrF" and cfg.prediction.metrics[0] == "ROUGE_L"
    assert cfg.best_metric() == "chrf" and "score" in cfg.metric_names()
    with pytest.raises(ConfigError) as err:
        validate_config({"prediction": {"metric": "accuracy"}})
    assert err.value.field == "prediction.metric"
    with pytest.raises(ConfigError, match="judge.base_url"):
        validate_config({"prediction": {"metrics": ["judge"]}})
    reg = validate_config({"problem_type": "regression", "dataset": {"label_column": "y"}})
    assert reg.prediction.metric == "MAE" and reg.training.loss_function == "MSE" and reg.best_metric() == "mae"


def test_causal_run_reports_every_configured_metric(tiny_llama, qa_jsonl, tmp_path):
    module = tmp_path / "lengths.py"
    module.write_text("def answer_words(preds, refs):\n    return sum(len(p.split()) for p in preds) / len(preds)\n")
    cfg = validate_config(
        causal_config(
            tiny_llama,
            qa_jsonl,
            tmp_path / "out",
            training={"epochs": 1},
            prediction={"metric": "ROUGE_L", "metrics": ["chrF", "Exact_Match", f"{module}:answer_words"]},
        )
    )
    result = train(cfg)
    after = result.metrics["after"]
    for key in ("loss", "perplexity", "bleu", "rouge_l", "chrf", "exact_match", "answer_words"):
        assert key in after and not math.isnan(after[key]), key
    with open(result.run_dir / "validation_predictions.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    # The per-row score follows the best metric (ROUGE-L here).
    assert [float(r["score"]) for r in rows] == pytest.approx(
        [m.rouge_l(r["prediction"], r["reference"]) for r in rows]
    )


def test_eval_max_rows_samples_during_training_and_evaluates_all_at_the_end(tiny_llama, tmp_path):
    data = tmp_path / "qa.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for i in range(60):
            fh.write(json.dumps({"question": f"what is {i} and 1?", "answer": f"{i} and 1 is {i + 1}"}) + "\n")
    cfg = validate_config(
        causal_config(
            tiny_llama,
            data,
            tmp_path / "out",
            dataset={"validation_size": 20},
            training={"epochs": 1, "eval_steps": 4, "evaluate_before_training": False},
            prediction={"eval_max_rows": 5, "max_length_inference": 3},
        )
    )
    seen: list[int] = []
    import tunelab.problems.causal_lm as causal

    original = causal.CausalLMProblem.evaluate

    def counting(self, model, split, examples, generate=True):
        seen.append(len(split))
        return original(self, model, split, examples, generate)

    causal.CausalLMProblem.evaluate = counting
    try:
        result = train(cfg)
    finally:
        causal.CausalLMProblem.evaluate = original
    assert seen[:-1] and set(seen[:-1]) == {5}, seen  # the fixed sample during training
    assert seen[-1] == 20  # every row at the end
    with open(result.run_dir / "validation_predictions.csv", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 20


def _regression_csv(path: Path, n: int = 80) -> Path:
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "score"])
        for i in range(n):
            word, score = ("great", 30) if i % 2 == 0 else ("terrible", 10)
            writer.writerow([f"{word} movie {i} {word}", score + rng.uniform(-1, 1)])  # the text tells the score
    return path


def test_regression_learns_a_score_and_predicts_on_its_scale(tiny_bert, tmp_path):
    from tunelab.infer.model import load_run

    cfg = validate_config(
        classification_config(
            tiny_bert,
            _regression_csv(tmp_path / "scores.csv"),
            tmp_path / "out",
            problem_type="regression",
            dataset={"label_column": "score", "validation_size": 16},
            training={"epochs": 6, "learning_rate": 3e-3, "adapter": "none", "batch_size": 8},
        )
    )
    result = train(cfg)
    before, after = result.metrics["before"], result.metrics["after"]
    assert set(after) >= {"loss", "mae", "rmse", "r2"}
    assert after["mae"] < before["mae"] and after["r2"] > 0.5, (before, after)
    loaded = load_run(result.run_dir)
    values = [o["prediction"] for o in loaded.problem.predict(loaded.model, [{"text": "great movie 7 great"}])]
    assert 20 < values[0] < 40  # on the data's own scale (about 10 or 30), not standardised


def test_regression_rejects_a_text_label(tiny_bert, tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text("text,score\na,1\nb,2\nc,high\nd,3\n")
    cfg = validate_config(
        classification_config(
            tiny_bert, data, tmp_path / "out", problem_type="regression", dataset={"label_column": "score"}
        )
    )
    with pytest.raises(DataError, match="not a finite number"):
        train(cfg)
