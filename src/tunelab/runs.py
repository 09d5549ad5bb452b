"""The run registry: every run of an output directory in one SQLite file (``output_directory/runs.db``).

Concurrent runs write to it safely: the database is in WAL mode, every write is one short transaction, and a locked
database is retried with backoff.

A run records its process (pid, the process's start time, the host). Reading the registry checks that a "running" run's
process still lives, so a run killed without a word (SIGKILL, out of memory, a reboot) reads as "failed (process
ended)" with its last checkpoint and the command that resumes it, instead of "running" forever. The start time makes
a pid that the system gave to another process since count as ended.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

STATUSES = ("queued", "running", "finished", "failed", "stopped")
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    problem_type TEXT,
    backbone TEXT,
    config_hash TEXT,
    status TEXT NOT NULL,
    started REAL,
    ended REAL,
    metrics TEXT,
    path TEXT NOT NULL,
    pid INTEGER,
    error TEXT,
    pid_start REAL,
    host TEXT
);
CREATE INDEX IF NOT EXISTS runs_path ON runs(path);
"""
# Columns added after the first release: older registries get them on open.
ADDED_COLUMNS = {"pid_start": "REAL", "host": "TEXT"}
PROCESS_ENDED = "process ended"
# How far a process's start time may differ from the recorded one and still be the same process (clock rounding).
START_SLACK_S = 1.0


class RegistryError(TunelabError):
    """A run id that does not exist, or a registry that cannot be opened."""


class RunRegistry:
    """Read and write the runs of one output directory.

    Args:
        root: the output directory; the database is ``root/runs.db``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / "runs.db"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.executescript(SCHEMA)
            _add_missing_columns(conn)
            yield conn
        finally:
            conn.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        """One write in its own transaction, retried while another process holds the lock."""
        for attempt in range(8):
            try:
                with self._connect() as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(sql, params)
                    conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.05 * 2**attempt + random.random() * 0.05)
        raise RegistryError(
            "the run registry stayed locked", file=str(self.path), hint="another process holds it; try again"
        )

    # ------------------------------------------------------------------ writing
    def add(
        self,
        name: str,
        path: str | Path,
        problem_type: str,
        backbone: str,
        config_hash: str,
        status: str = "running",
        pid: int | None = None,
    ) -> str:
        """Register a run and return its id (a short unique string)."""
        run_id = uuid.uuid4().hex[:8]
        self._write(
            "INSERT INTO runs (id, name, problem_type, backbone, config_hash, status, started, path, pid, pid_start, "
            "host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                name,
                problem_type,
                backbone,
                config_hash,
                status,
                time.time(),
                str(Path(path).resolve()),
                pid,
                process_start_time(pid),
                socket.gethostname() if pid else None,
            ),
        )
        return run_id

    def update(
        self,
        run_id: str,
        status: str | None = None,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        ended: bool = False,
        pid: int | None = None,
    ) -> None:
        """Change a run's status, final metrics, error or process id (a resumed run runs in a new process)."""
        sets, params = [], []
        if pid is not None:
            sets.append("pid = ?, pid_start = ?, host = ?")
            params += [pid, process_start_time(pid), socket.gethostname()]
        if status is not None:
            assert status in STATUSES
            sets.append("status = ?")
            params.append(status)
        if metrics is not None:
            sets.append("metrics = ?")
            params.append(json.dumps(metrics))
        if error is not None:
            sets.append("error = ?")
            params.append(error)
        if ended:
            sets.append("ended = ?")
            params.append(time.time())
        if sets:
            self._write(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, run_id))

    def remove(self, run_id: str) -> dict[str, Any]:
        """Forget a run (its directory is the caller's business); returns the removed row."""
        row = self.get(run_id)
        self._write("DELETE FROM runs WHERE id = ?", (row["id"],))
        return row

    # ------------------------------------------------------------------ reading
    def list(self) -> list[dict[str, Any]]:
        """Every run, newest first (as ``get`` describes them)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs ORDER BY started DESC").fetchall()
        return [_as_dict(r) for r in rows]

    def get(self, run_id: str) -> dict[str, Any]:
        """One run by id (or a unique id prefix, or its name when that is unique).

        Besides the stored columns, a run has ``status_detail`` ("process ended" for a run recorded as running whose
        process is gone; its ``status`` then reads "failed"), ``status_text`` (status and detail in words),
        ``last_checkpoint`` ({step, path} or None) and ``resume_command`` (for a failed or stopped run with a
        checkpoint, else None).

        Raises:
            RegistryError: when nothing or several runs match.
        """
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE id LIKE ? OR name = ?", (f"{run_id}%", run_id)).fetchall()
        if not rows:
            raise RegistryError(
                f"no run '{run_id}' in this registry", file=str(self.path), hint="see 'tunelab runs list'"
            )
        if len(rows) > 1:
            exact = [r for r in rows if r["id"] == run_id]
            if len(exact) != 1:
                names = ", ".join(r["id"] for r in rows[:5])
                raise RegistryError(
                    f"'{run_id}' matches several runs ({names})", file=str(self.path), hint="use a longer id"
                )
            rows = exact
        return _as_dict(rows[0])

    def by_path(self, path: str | Path) -> dict[str, Any] | None:
        """The newest run registered for a run directory, if any."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM runs WHERE path = ? ORDER BY started DESC LIMIT 1", (str(Path(path).resolve()),)
            ).fetchone()
        return _as_dict(row) if row else None


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    for name, kind in ADDED_COLUMNS.items():
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it a moment ago
                if "duplicate column" not in str(exc):
                    raise


def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["metrics"] = json.loads(out["metrics"]) if out.get("metrics") else {}
    out["status_detail"] = None
    if out["status"] == "running" and process_ended(out["pid"], out.get("pid_start"), out.get("host")):
        out["status"], out["status_detail"] = "failed", PROCESS_ENDED
        out["error"] = (
            out.get("error")
            or "the run's process is gone without recording an end (killed, out of memory, or the machine restarted)"
        )
        out["ended"] = out["ended"] or _last_activity(Path(out["path"]))
    out["status_text"] = f"{out['status']} ({out['status_detail']})" if out["status_detail"] else out["status"]
    out["last_checkpoint"] = last_checkpoint(Path(out["path"]))
    resumable = out["status"] in ("failed", "stopped") and out["last_checkpoint"] is not None
    out["resume_command"] = f"tunelab train --resume {out['path']}" if resumable else None
    return out


def process_start_time(pid: int | None) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when it does not run or cannot be seen."""
    if not pid:
        return None
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no such process, no permission, or no psutil: the start time stays unknown
        return None


def process_ended(pid: int | None, started: float | None, host: str | None) -> bool:
    """Whether the process recorded as (pid, start time, host) has surely ended.

    A pid of another host, or a missing pid, cannot be checked: it counts as running. A zombie has ended. A live pid
    whose start time differs from the recorded one is another process that got the pid since.
    """
    if not pid or (host and host != socket.gethostname()):
        return False
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return _ended_without_psutil(pid)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        if started is not None:
            return abs(proc.create_time() - started) > START_SLACK_S
        # A registry written before start times were recorded: a live pid must at least be a tunelab command.
        return not any("tunelab" in part for part in proc.cmdline())
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # another user's process: it exists, nothing more can be learned
        return False


def remove_run(root: str | Path, run_id: str, delete_files: bool = False) -> dict[str, Any]:
    """Forget a run of the registry in ``root`` and, with ``delete_files``, delete its run directory.

    The one rule for ``tunelab runs rm`` and the studio's delete.

    Returns:
        The removed registry row.

    Raises:
        RegistryError: when no run matches ``run_id``.
        TunelabError: for a run whose process still runs, or (with ``delete_files``) a folder that is not a run.
    """
    registry = RunRegistry(root)
    row = registry.get(run_id)
    if row["status"] == "running" and row["pid"] and _pid_exists(row["pid"]):
        raise TunelabError(
            f"run {row['id']} is still running (process {row['pid']})",
            hint="stop it first (Ctrl-C in its terminal, or kill -INT the process)",
        )
    path = Path(row["path"])
    if delete_files and path.is_dir() and not (path / "config.yaml").is_file():
        raise TunelabError("refusing to delete a folder that is not a run directory", file=row["path"])
    registry.remove(row["id"])
    if delete_files and path.is_dir():
        shutil.rmtree(path)
    return row


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _ended_without_psutil(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# Checkpoints are written as checkpoints/step-NNNNNN/ by renaming a finished temporary folder (training/checkpoint.py),
# so a folder of that name is complete; it is read here without importing torch.
STEP_DIR = re.compile(r"^step-(\d+)$")


def last_checkpoint(run_path: Path) -> dict[str, Any] | None:
    """The newest checkpoint of a run directory as {step, path}, or None."""
    root = run_path / "checkpoints"
    found = []
    try:
        for folder in root.iterdir():
            match = STEP_DIR.match(folder.name)
            if match and (folder / "state.json").is_file():
                found.append((int(match.group(1)), folder))
    except OSError:
        return None
    if not found:
        return None
    step, folder = max(found)
    return {"step": step, "path": str(folder)}


def _last_activity(run_path: Path) -> float | None:
    """When the run last wrote anything we know of: the best guess of when its process ended."""
    times = []
    for path in (run_path / "metrics.jsonl", run_path / "run.json", run_path / "checkpoints"):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times) if times else None


def config_hash(cfg_data: dict[str, Any]) -> str:
    """A short hash of a config's content (the seed included)."""
    import hashlib

    return hashlib.sha256(json.dumps(cfg_data, sort_keys=True).encode()).hexdigest()[:12]
