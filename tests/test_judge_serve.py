"""The judge end to end: one run served by `tunelab serve` grades another run's answers during its evaluation."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import causal_config
from test_serve import running

from tunelab.config import validate_config
from tunelab.infer.serve import build_server
from tunelab.training.loop import train

TEMPLATE = "judge: {answer}"


@contextmanager
def served(run_dir: Path) -> Iterator[str]:
    """``tunelab serve RUN_DIR`` in a background thread; yields its /v1 address."""
    with running(*build_server(run_dir, port=0, device="cpu", log_level="warning")) as url:
        yield f"{url}/v1"


def _judge_data(path: Path, reply: str, rows: int = 24) -> Path:
    """Judge prompts (as the template renders them) each answered with ``reply``: a judge that learns one verdict."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"question": TEMPLATE.format(answer=f"{i % 10} and {i % 7}"), "answer": reply}) + "\n")
    return path


def _train_judge(tiny_llama: Path, tmp_path: Path, name: str, reply: str) -> Path:
    cfg = causal_config(
        tiny_llama,
        _judge_data(tmp_path / f"{name}.jsonl", reply),
        tmp_path / "judges",
        experiment_name=name,
        dataset={"validation_size": 2},
        training={"epochs": 30, "learning_rate": 3e-3, "adapter": "none", "evaluate_before_training": False},
        prediction={"max_length_inference": 12},
    )
    return train(validate_config(cfg)).run_dir


def _graded_run(tiny_llama: Path, qa_jsonl: Path, tmp_path: Path, url: str, judge_name: str, name: str) -> dict:
    cfg = causal_config(
        tiny_llama,
        qa_jsonl,
        tmp_path / "graded",
        experiment_name=name,
        training={"max_steps": 2},
        prediction={"metrics": ["judge"], "max_length_inference": 4},
        judge={
            "base_url": url,
            "model": judge_name,
            "prompt_template": TEMPLATE,
            "max_tokens": 12,
            "max_concurrency": 4,
            "cache": False,
        },
    )
    return train(validate_config(cfg)).metrics


def test_a_served_run_judges_another_runs_answers(tiny_llama, qa_jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    judge_dir = _train_judge(tiny_llama, tmp_path, "judge-eight", "Score: 8")
    with served(judge_dir) as url:
        metrics = _graded_run(tiny_llama, qa_jsonl, tmp_path, url, "judge-eight", "graded")
    for phase in ("before", "after"):
        got = metrics[phase]
        assert got["judge_failed"] == 0, got
        assert got["judge_unparsable"] < 5, got  # the learned verdict parses on (nearly) every row
        assert got["judge"] == 0.8, got


def test_unparsable_judge_replies_are_counted_not_fatal(tiny_llama, qa_jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    judge_dir = _train_judge(tiny_llama, tmp_path, "judge-mumbles", "and and and")
    with served(judge_dir) as url:
        metrics = _graded_run(tiny_llama, qa_jsonl, tmp_path, url, "judge-mumbles", "graded")
    after = metrics["after"]
    assert after["judge_failed"] == 0 and after["judge_unparsable"] == 5  # all 5 validation rows
    assert math.isnan(after["judge"])
