"""Child processes of the studio: start ``tunelab`` commands detached, tell whether they live, read their logs.

Runs are separate processes (``python -m tunelab train ...``) in their own session, so closing the browser or
restarting the studio never touches them. What the studio needs to find them again is written to disk as small JSON
records (one file per launch) in the studio's data folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from tunelab.io import write_json_atomic

# Variables a child must not inherit: the studio's password has no business in a training process.
PRIVATE_ENV = ("TUNELAB_STUDIO_PASSWORD",)


class Children:
    """The processes this studio started, so they can be reaped (a dead child stays a zombie until its parent asks).

    Processes started by an earlier studio are not children of this one; they are checked through ``/proc``.
    """

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def spawn(self, args: list[str], log_path: Path, cwd: Path | None = None) -> int:
        """Start ``python -m tunelab ARGS`` in a new session, stdout and stderr appended to ``log_path``.

        Returns:
            The process id.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file (and the browser) as they are printed
        with open(log_path, "ab") as log:
            log.write(f"$ tunelab {' '.join(args)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunelab", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,  # Ctrl-C in the studio's terminal and its exit leave the run alone
            )
        with self._lock:
            self._procs[proc.pid] = proc
        return proc.pid

    def returncode(self, pid: int) -> int | None:
        """The exit code of a child that has ended, reaping it; None while it runs or when it is not a child."""
        with self._lock:
            proc = self._procs.get(pid)
        return None if proc is None else proc.poll()

    def alive(self, pid: int | None) -> bool:
        """Whether ``pid`` is a running tunelab process (a zombie or a recycled pid is not)."""
        if not pid:
            return False
        with self._lock:
            proc = self._procs.get(pid)
        if proc is not None:
            return proc.poll() is None
        return tunelab_process_alive(pid)


def tunelab_process_alive(pid: int) -> bool:
    """Whether a process that is not our child runs and is a tunelab command.

    A process whose parent died is reaped by init, but not every init reaps: a zombie counts as dead. The command
    line is checked so that a pid reused by an unrelated program after the run ended is not taken for the run.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists and belongs to someone else: nothing more can be learned
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc (macOS): trust the signal check
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and b"tunelab" in cmdline


def interrupt(pid: int) -> None:
    """Ask a run to stop the way Ctrl-C does: it finishes the step, saves a checkpoint and exits as 'stopped'."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        pass


def tail(paths: list[Path], lines: int) -> list[str]:
    """The last ``lines`` lines of the files, read in order as one text (the start of each is skipped cheaply)."""
    kept: deque[str] = deque(maxlen=lines)
    for path in paths:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 256 * lines))  # ~256 bytes a line is plenty; a cut first line is dropped
                chunk = fh.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        text = chunk.replace("\r", "\n")  # progress bars redraw with carriage returns
        parts = text.split("\n")
        if size > 256 * lines:
            parts = parts[1:]
        kept.extend(part for part in parts if part.strip())
    return list(kept)


def last_error(lines: list[str]) -> str | None:
    """The one-line error a tunelab command printed (``error: ...``), or the last line of a traceback."""
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: ") :]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return None


class RecordStore:
    """Small JSON records, one file each, in one folder (atomic writes; a damaged file is skipped)."""

    def __init__(self, folder: Path, prefix: str):
        self.folder = folder
        self.prefix = prefix

    def new_id(self) -> str:
        return f"{self.prefix}{uuid.uuid4().hex[:7]}"

    def save(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.folder / f"{record['id']}.json", record)

    def load(self, record_id: str) -> dict[str, Any] | None:
        if not record_id.replace("-", "").isalnum():
            return None
        path = self.folder / f"{record_id}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def all(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        out = []
        for path in self.folder.glob(f"{self.prefix}*.json") if self.folder.is_dir() else []:
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda r: r.get("started", 0))

    def remove(self, record_id: str) -> None:
        (self.folder / f"{record_id}.json").unlink(missing_ok=True)
