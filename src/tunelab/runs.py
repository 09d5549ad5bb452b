"""The run registry: every run of an output directory in one SQLite file (``output_directory/runs.db``).

Concurrent runs write to it safely: the database is in WAL mode, every write is one short transaction, and a locked
database is retried with backoff.
"""

from __future__ import annotations

import json
import random
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
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_path ON runs(path);
"""


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
            "INSERT INTO runs (id, name, problem_type, backbone, config_hash, status, started, path, pid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, name, problem_type, backbone, config_hash, status, time.time(), str(Path(path).resolve()), pid),
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
            sets.append("pid = ?")
            params.append(pid)
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
        """Every run, newest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs ORDER BY started DESC").fetchall()
        return [_as_dict(r) for r in rows]

    def get(self, run_id: str) -> dict[str, Any]:
        """One run by id (or a unique id prefix, or its name when that is unique).

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


def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["metrics"] = json.loads(out["metrics"]) if out.get("metrics") else {}
    return out


def config_hash(cfg_data: dict[str, Any]) -> str:
    """A short hash of a config's content (the seed included)."""
    import hashlib

    return hashlib.sha256(json.dumps(cfg_data, sort_keys=True).encode()).hexdigest()[:12]
