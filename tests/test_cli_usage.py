"""Usage mistakes at the real console script end in click's short usage message and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tunelab

TUNELAB = str(Path(sys.executable).parent / "tunelab")

MISTAKES = [
    (["nosuch"], "No such command 'nosuch'"),
    (["serv", "run"], "Did you mean 'serve'"),
    (["--bogus"], "No such option: --bogus"),
    (["train", "--nope"], "No such option: --nope"),
    (["runs", "show"], "Missing argument"),
    (["predict", "run"], "Missing option '--input'"),
    (["serve", "run", "--port", "abc"], "'--port'"),
    (["train", "--nproc", "0"], "'--nproc'"),
    (["config", "validate", "a.yaml", "b.yaml"], "unexpected extra argument"),
    (["export", "run", "--force=yes"], "does not take a value"),
    (["train", "--set"], "requires an argument"),
    (["runs", "nosuch"], "No such command 'nosuch'"),
]


@pytest.mark.parametrize("args,needle", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_usage_mistake_is_short_with_exit_2(args, needle, tmp_path):
    proc = subprocess.run([TUNELAB, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if line.strip()]) <= 4, output
    assert needle in output


def test_version_prints_the_version(tmp_path):
    proc = subprocess.run([TUNELAB, "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"tunelab {tunelab.__version__}"
