"""The engine: exact resume after SIGKILL, refusing changed data, guardrails, Ctrl-C, early stopping, DDP."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import causal_config
from test_cli import TUNELAB, assert_one_line_error, write_config

from tunelab.config import load_config
from tunelab.training.checkpoint import latest_checkpoint, list_checkpoints
from tunelab.training.guards import TrainingFailed
from tunelab.training.loop import train


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("loss") is not None:
            out[record["step"]] = record["loss"]
    return out


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.fixture
def resume_cfg(tiny_llama, qa_jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return causal_config(
        tiny_llama,
        qa_jsonl,
        tmp_path / "out",
        training={
            "max_steps": 40,
            "batch_size": 2,
            "grad_accumulation": 2,
            "logging_steps": 1,
            "save_steps": 1,
            "save_total_limit": 3,
            "lora_dropout": 0.1,
            "evaluate_before_training": False,
            "eval_steps": 15,
            "learning_rate": 5e-3,
        },
        augmentation={"token_mask_probability": 0.1},
        prediction={"max_length_inference": 2},
    )


def test_resume_after_sigkill_is_exact(resume_cfg, tmp_path):
    """A run killed at a random step and resumed matches the uninterrupted run at every step and at the end."""
    reference_cfg = dict(resume_cfg, experiment_name="reference")
    proc = subprocess.run(
        [TUNELAB, "train", write_config(tmp_path / "ref.yaml", reference_cfg)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = Path(resume_cfg["output_directory"]) / "reference"
    expected, expected_weights = losses(reference), adapter_weights(reference)
    assert len(expected) == 40
    rng = random.Random(os.getpid())
    killed_at: list[int] = []
    for attempt in range(3):
        name = f"killed{attempt}"
        config = write_config(tmp_path / f"{name}.yaml", dict(resume_cfg, experiment_name=name))
        run_dir = Path(resume_cfg["output_directory"]) / name
        kill_after = rng.randint(3, 36)
        child = subprocess.Popen([TUNELAB, "train", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            log = run_dir / "metrics.jsonl"
            if log.is_file() and len(log.read_text().splitlines()) >= kill_after:
                break
            if child.poll() is not None:
                break
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        survived = list_checkpoints(run_dir)
        assert survived, "no complete checkpoint survived the kill"
        assert survived[-1][0] < 40 and json.loads((run_dir / "run.json").read_text())["status"] == "running"
        killed_at.append(survived[-1][0])
        proc = subprocess.run([TUNELAB, "train", "--resume", run_dir], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = losses(run_dir)
        assert sorted(got) == sorted(expected), f"steps differ after a kill at {kill_after}"
        worst = max(abs(got[s] - expected[s]) for s in expected)
        assert worst <= 1e-6, f"kill after {kill_after} log lines: max loss difference {worst}"
        weights = adapter_weights(run_dir)
        assert all(torch.allclose(weights[k], expected_weights[k], atol=1e-6) for k in expected_weights)
        info = json.loads((run_dir / "run.json").read_text())
        assert info["status"] == "finished" and info.get("resumed") == 1
    print("killed after checkpoints at steps", killed_at)


def test_half_written_checkpoints_are_never_picked(resume_cfg, tmp_path):
    cfg = load_config(base=dict(resume_cfg, training=dict(resume_cfg["training"], max_steps=3)))
    result = train(cfg)
    root = result.run_dir / "checkpoints"
    (root / ".step-000009.abc").mkdir()  # a temporary folder left by a kill
    broken = root / "step-000008"
    broken.mkdir()
    (broken / "weights.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(result.run_dir).name == "step-000003"
    assert len(list_checkpoints(result.run_dir)) == 3  # save_total_limit


def test_resume_refuses_changed_data_naming_the_file(resume_cfg, tmp_path, qa_jsonl):
    data = tmp_path / "data.jsonl"
    data.write_text(qa_jsonl.read_text())
    cfg = dict(
        resume_cfg,
        dataset=dict(resume_cfg["dataset"], train_dataframe=str(data)),
        training=dict(resume_cfg["training"], max_steps=3),
    )
    run_dir = train(load_config(base=cfg)).run_dir
    with open(data, "a") as fh:
        fh.write(json.dumps({"question": "new", "answer": "row"}) + "\n")
    assert_one_line_error(
        subprocess.run([TUNELAB, "train", "--resume", run_dir], capture_output=True, text=True),
        "cannot resume",
        "data.jsonl changed",
        "--allow-changes",
    )
    proc = subprocess.run(
        [TUNELAB, "train", "--resume", run_dir, "--set", "training.learning_rate=0.1"], capture_output=True, text=True
    )
    assert_one_line_error(proc, "training.learning_rate")
    proc = subprocess.run([TUNELAB, "train", "--resume", run_dir, "--allow-changes"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming with changes" in proc.stdout


def test_nan_loss_stops_with_step_and_hint_keeping_the_checkpoint(resume_cfg, monkeypatch):
    from tunelab.problems.causal_lm import CausalLMProblem

    original = CausalLMProblem.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss_sum, count = original(self, model, batch)
        return (loss_sum * float("nan"), count) if calls["n"] == 13 else (loss_sum, count)

    monkeypatch.setattr(CausalLMProblem, "loss", poisoned)
    cfg = load_config(base=resume_cfg)
    with pytest.raises(TrainingFailed) as err:
        train(cfg)
    assert "at step 7" in str(err.value) and "learning_rate" in str(err.value)  # 2 micro-batches per step
    run_dir = cfg.run_dir
    assert latest_checkpoint(run_dir).name == "step-000006"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    # with a skip allowed, the same NaN is stepped over
    monkeypatch.setattr(CausalLMProblem, "loss", poisoned)
    calls["n"] = 0
    skip = load_config(
        base=dict(
            resume_cfg, experiment_name="skip", training=dict(resume_cfg["training"], max_nan_skips=1, max_steps=10)
        )
    )
    assert train(skip).metrics["after"]["loss"] > 0


def test_ctrl_c_saves_a_checkpoint_and_stops_cleanly(resume_cfg, tmp_path):
    cfg = dict(resume_cfg, training=dict(resume_cfg["training"], save_steps=0, save_epochs=0, max_steps=4000))
    config = write_config(tmp_path / "c.yaml", cfg)
    run_dir = Path(cfg["output_directory"]) / cfg["experiment_name"]
    child = subprocess.Popen([TUNELAB, "train", config], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (
        (run_dir / "metrics.jsonl").is_file() and len((run_dir / "metrics.jsonl").read_text().splitlines()) > 3
    ):
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "tunelab train --resume" in err
    assert list_checkpoints(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"


def test_early_stopping_and_eval_steps(resume_cfg):
    cfg = load_config(
        base=dict(
            resume_cfg,
            training=dict(
                resume_cfg["training"],
                learning_rate=1e-9,
                eval_steps=2,
                early_stopping_patience=2,
                metric_for_best="loss",
            ),
        )
    )
    result = train(cfg)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["early_stopped"] and info["steps"] < 40
    evals = [
        json.loads(line)["step"]
        for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        if "eval_loss" in json.loads(line)
    ]
    assert evals[:3] == [2, 4, 6]


def test_ddp_two_processes_match_one_process(resume_cfg, tmp_path):
    """--nproc 2 (gloo) with batch 4 per process follows the loss curve of 1 process with batch 8."""
    base = dict(
        resume_cfg,
        training=dict(
            resume_cfg["training"], max_steps=8, grad_accumulation=1, save_steps=0, lora_dropout=0.0, eval_steps=0
        ),
        augmentation={},
    )
    one = write_config(
        tmp_path / "one.yaml", dict(base, experiment_name="one", training=dict(base["training"], batch_size=8))
    )
    two = write_config(
        tmp_path / "two.yaml", dict(base, experiment_name="two", training=dict(base["training"], batch_size=4))
    )
    for config, extra in ((one, []), (two, ["--nproc", "2"])):
        proc = subprocess.run([TUNELAB, "train", config, *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(base["output_directory"])
    a, b = losses(out / "one"), losses(out / "two")
    assert sorted(a) == sorted(b) and len(a) == 8
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4
    info = json.loads((out / "two" / "run.json").read_text())
    assert info["processes"] == 2 and info["global_batch_size"] == 8
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["one", "two"]  # one run directory per run


def test_cache_hit_does_not_change_the_initial_weights(resume_cfg, tmp_path):
    """Tokenising (skipped on a cache hit) may draw random numbers; the new adapter weights must not depend on it."""
    from tunelab.training.setup import setup

    cfg = load_config(write_config(tmp_path / "c.yaml", resume_cfg))
    fresh, cached = setup(cfg, 1), setup(cfg, 1)
    assert not fresh.data.info.get("cached") and cached.data.info["cached"]
    pairs = list(zip(fresh.model.named_parameters(), cached.model.named_parameters()))
    trained = [(a, b) for (name, a), (_, b) in pairs if a.requires_grad]
    assert trained and all(torch.equal(a, b) for a, b in trained)
