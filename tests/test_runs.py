"""The run registry: concurrent writers, and the runs commands."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest
from conftest import causal_config
from test_cli import TUNELAB, assert_one_line_error, write_config

from tunelab.errors import TunelabError
from tunelab.runs import RegistryError, RunRegistry, remove_run


def _writer(root: str, worker: int, count: int) -> None:
    registry = RunRegistry(root)
    for i in range(count):
        run_id = registry.add(f"w{worker}-{i}", Path(root) / f"w{worker}-{i}", "causal_lm", "tiny", "hash")
        registry.update(run_id, status="finished", metrics={"after": {"loss": float(i)}}, ended=True)


def test_concurrent_writers_do_not_corrupt_the_registry(tmp_path):
    workers = [multiprocessing.Process(target=_writer, args=(str(tmp_path), w, 25)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    rows = RunRegistry(tmp_path).list()
    assert len(rows) == 100
    assert all(r["status"] == "finished" and r["metrics"]["after"]["loss"] >= 0 for r in rows)


def test_get_by_prefix_and_name(tmp_path):
    registry = RunRegistry(tmp_path)
    run_id = registry.add("alpha", tmp_path / "alpha", "classification", "tiny", "h")
    assert registry.get(run_id[:4])["name"] == "alpha"
    assert registry.get("alpha")["id"] == run_id
    with pytest.raises(RegistryError, match="no run"):
        registry.get("zzzz")


def test_remove_run_refuses_live_runs_and_foreign_folders(tmp_path):
    registry = RunRegistry(tmp_path)
    live = registry.add("live", tmp_path / "live", "causal_lm", "tiny", "h", pid=os.getpid())
    with pytest.raises(TunelabError, match="still running"):
        remove_run(tmp_path, live)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    other = registry.add("foreign", foreign, "causal_lm", "tiny", "h", status="finished")
    with pytest.raises(TunelabError, match="not a run directory"):
        remove_run(tmp_path, other, delete_files=True)
    assert registry.get(other)["name"] == "foreign" and (foreign / "keep.txt").is_file()  # refused: nothing done
    (foreign / "config.yaml").write_text("{}")
    assert remove_run(tmp_path, other, delete_files=True)["id"] == other
    assert not foreign.exists()
    with pytest.raises(RegistryError):
        registry.get(other)


def test_runs_commands(tiny_llama, qa_jsonl, tmp_path):
    out = tmp_path / "out"
    for name, lr in (("first", 1e-2), ("second", 1e-3)):
        cfg = causal_config(
            tiny_llama,
            qa_jsonl,
            out,
            experiment_name=name,
            training={"max_steps": 3, "logging_steps": 1, "learning_rate": lr},
            prediction={"max_length_inference": 2},
        )
        assert (
            subprocess.run(
                [TUNELAB, "train", write_config(tmp_path / f"{name}.yaml", cfg)], capture_output=True
            ).returncode
            == 0
        )
    proc = subprocess.run([TUNELAB, "runs", "list", "-d", out], capture_output=True, text=True)
    assert proc.returncode == 0 and "first" in proc.stdout and "second" in proc.stdout and "finished" in proc.stdout
    rows = RunRegistry(out).list()
    ids = {r["name"]: r["id"] for r in rows}
    proc = subprocess.run([TUNELAB, "runs", "show", ids["first"], "-d", out], capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["name"] == "first"
    png = tmp_path / "curves.png"
    proc = subprocess.run(
        [TUNELAB, "runs", "compare", ids["first"], ids["second"], "-d", out, "--plot", png],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "training.learning_rate" in proc.stdout and "experiment_name" in proc.stdout
    assert "eval" not in proc.stdout.split("config differences")[0]
    assert proc.stdout.count("perplexity") >= 1 and png.read_bytes()[:4] == b"\x89PNG"
    proc = subprocess.run(
        [TUNELAB, "runs", "rm", ids["second"], "-d", out, "--delete-files"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and not (out / "second").exists()
    assert [r["name"] for r in RunRegistry(out).list()] == ["first"]
    assert_one_line_error(
        subprocess.run([TUNELAB, "runs", "show", "nope", "-d", out], capture_output=True, text=True), "no run 'nope'"
    )
