"""Runs that tell the truth: a run whose process is gone reads "failed (process ended)" with its last checkpoint and
the command that resumes it, in `runs list`, `runs show` and the studio; a pid reused by another process does not
keep a dead run "running"."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import causal_config
from fastapi.testclient import TestClient
from test_cli import TUNELAB, write_config

from tunelab.runs import RunRegistry
from tunelab.ui import StudioSettings, create_app


def ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def sleeper() -> subprocess.Popen:
    # "tunelab" in its command line: the studio's old check took any such live pid for the run.
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "tunelab"])


def test_a_run_whose_process_is_gone_reads_failed(tmp_path):
    registry = RunRegistry(tmp_path)
    run_id = registry.add("ghost", tmp_path / "ghost", "causal_lm", "tiny", "h", pid=ended_pid())
    row = registry.get(run_id)
    assert row["status"] == "failed" and row["status_detail"] == "process ended"
    assert row["status_text"] == "failed (process ended)" and "gone" in row["error"]
    assert row["last_checkpoint"] is None and row["resume_command"] is None  # nothing to resume from
    assert [r["status"] for r in registry.list()] == ["failed"]


def test_a_reused_pid_does_not_keep_a_dead_run_running(tmp_path):
    proc = sleeper()
    try:
        registry = RunRegistry(tmp_path)
        run_id = registry.add("live", tmp_path / "live", "causal_lm", "tiny", "h", pid=proc.pid)
        assert registry.get(run_id)["status"] == "running"  # the very process: alive
        with sqlite3.connect(registry.path) as conn:  # the run's process started earlier: this pid is another's now
            conn.execute("UPDATE runs SET pid_start = pid_start - 3600 WHERE id = ?", (run_id,))
        assert registry.get(run_id)["status_text"] == "failed (process ended)"
    finally:
        proc.kill()
        proc.wait()


def test_a_registry_from_before_start_times_opens_and_checks(tmp_path):
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        conn.execute(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, problem_type TEXT, backbone TEXT, "
            "config_hash TEXT, status TEXT NOT NULL, started REAL, ended REAL, metrics TEXT, path TEXT NOT NULL, "
            "pid INTEGER, error TEXT)"
        )
        conn.execute(
            "INSERT INTO runs (id, name, status, started, path, pid) VALUES ('a1', 'old', 'running', 1, ?, ?)",
            (str(tmp_path / "old"), ended_pid()),
        )
    assert RunRegistry(tmp_path).get("a1")["status_text"] == "failed (process ended)"


def test_kill_9_after_the_first_checkpoint(tiny_llama, qa_jsonl, tmp_path):
    out = tmp_path / "out"
    cfg = causal_config(
        tiny_llama,
        qa_jsonl,
        out,
        experiment_name="killed",
        training={"max_steps": 100000, "save_steps": 1, "evaluate_before_training": False},
        prediction={"max_length_inference": 2},
    )
    proc = subprocess.Popen([TUNELAB, "train", str(write_config(tmp_path / "c.yaml", cfg))], cwd=tmp_path)
    run_dir = out / "killed"
    try:
        deadline = time.monotonic() + 300
        while not list(run_dir.glob("checkpoints/step-*/state.json")):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    resume = f"tunelab train --resume {run_dir.resolve()}"

    listed = subprocess.run([TUNELAB, "runs", "list", "-d", str(out)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "failed (process ended)" in listed.stdout and "running" not in listed.stdout
    assert "last checkpoint step" in listed.stdout and resume in listed.stdout

    shown = subprocess.run([TUNELAB, "runs", "show", "killed", "-d", str(out)], capture_output=True, text=True)
    row = json.loads(shown.stdout)
    assert row["status"] == "failed" and row["status_detail"] == "process ended"
    assert row["last_checkpoint"]["step"] >= 1 and Path(row["last_checkpoint"]["path"]).is_dir()
    assert row["resume_command"] == resume and row["ended"] is not None

    studio = StudioSettings(out, tmp_path / "studio_data", None, 50)
    client = TestClient(create_app(studio), base_url="http://127.0.0.1:7860")
    view = client.get(f"/api/runs/{row['id']}").json()
    assert view["status"] == "failed" and view["status_text"] == "failed (process ended)"
    assert view["last_checkpoint"]["step"] == row["last_checkpoint"]["step"] and view["resume_command"] == resume
    assert [r["status"] for r in client.get("/api/runs").json()["runs"]] == ["failed"]
