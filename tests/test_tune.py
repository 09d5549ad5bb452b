"""Hyperparameter search: trials are registered runs, bad trials are pruned, bad spaces fail clearly."""

from __future__ import annotations

import subprocess

import yaml
from conftest import classification_config
from test_cli import TUNELAB, assert_one_line_error, write_config

from tunelab.runs import RunRegistry


def test_search_registers_trials_and_prunes(tiny_bert, sentiment_csv, tmp_path):
    out = tmp_path / "out"
    cfg = classification_config(
        tiny_bert,
        sentiment_csv,
        out,
        experiment_name="search",
        training={
            "epochs": 4,
            "evaluation_epochs": 0.5,
            "learning_rate": 1e-3,
            "save_epochs": 0,
            "evaluate_before_training": False,
            "metric_for_best": "loss",
        },
        prediction={"metric": "Accuracy"},
    )
    config = write_config(tmp_path / "c.yaml", cfg)
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "training.learning_rate": {"type": "float", "low": 1e-5, "high": 5e-2, "log": True},
                "training.lora_r": {"type": "categorical", "choices": [2, 4, 8]},
            }
        )
    )
    proc = subprocess.run(
        [TUNELAB, "tune", config, "--space", space, "--trials", "6", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = RunRegistry(out).list()
    assert len(rows) == 6 and all(r["name"].startswith("search-trial") for r in rows)
    statuses = [r["status"] for r in rows]
    assert "stopped" in statuses, statuses  # at least one trial pruned
    assert "pruned" in proc.stdout and "complete" in proc.stdout


def test_bad_space_fails_in_one_line(tiny_bert, sentiment_csv, tmp_path):
    config = write_config(tmp_path / "c.yaml", classification_config(tiny_bert, sentiment_csv, tmp_path / "o"))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"training.learnig_rate": {"type": "float", "low": 1, "high": 2}}))
    assert_one_line_error(
        subprocess.run([TUNELAB, "tune", config, "--space", space], capture_output=True, text=True),
        "space.yaml",
        "training.learnig_rate",
        "not a config field",
    )
    space.write_text(yaml.safe_dump({"training.learning_rate": {"type": "float", "low": 1}}))
    assert_one_line_error(
        subprocess.run([TUNELAB, "tune", config, "--space", space], capture_output=True, text=True), "missing high"
    )
