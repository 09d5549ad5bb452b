"""The studio's view of the runs: the run registry joined with the studio's own launch records.

The registry (``output_directory/runs.db``) knows every run once its process has loaded the model and data; a launch
record (``data_dir/launches/*.json``) knows what the studio started before that moment, the process id of a resumed
run, and where its output went. Nothing is kept in memory that a restart would lose: every call reads both again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, metric_key, save_config
from tunelab.errors import TunelabError
from tunelab.runs import PROCESS_ENDED, RunRegistry, remove_run
from tunelab.ui.processes import Children, RecordStore, interrupt, last_error, tail

LOG_TAIL = 30
# A launch belongs to a registry row registered at most this long before it started (clock granularity, slow disks).
MATCH_SLACK_S = 5.0
ENDED = ("finished", "failed", "stopped", "lost")


class RunActionError(TunelabError):
    """A run action that cannot be done now (stop a finished run, delete a running one, ...)."""


class RunManager:
    """Start, stop, resume, delete and describe the runs of one output directory.

    Args:
        output_dir: the runs' output directory (holds ``runs.db``).
        data_dir: the studio's data folder (launch records, logs, experiment configs).
        children: the process table shared with the other parts of the studio.
    """

    def __init__(self, output_dir: Path, data_dir: Path, children: Children):
        self.output_dir = output_dir.resolve()
        self.data_dir = data_dir.resolve()
        self.registry = RunRegistry(self.output_dir)
        self.launches = RecordStore(self.data_dir / "launches", "s")
        self.logs = self.data_dir / "logs"
        self.configs = self.data_dir / "experiments"
        self.children = children

    # ------------------------------------------------------------------ actions
    def start(self, cfg: RunConfig) -> dict[str, Any]:
        """Write ``cfg`` into the data folder and start ``tunelab train`` on it.

        Raises:
            RunActionError: when a run of that name exists or is starting.
        """
        from tunelab.rundir import RunDirectory

        run_dir = str(cfg.run_dir.resolve())
        if any(self.children.alive(rec.get("pid")) for rec in self.launches.all() if rec["run_dir"] == run_dir):
            raise RunActionError("a run of this name is starting already", field="experiment_name")
        try:
            RunDirectory.check_free(cfg)
        except TunelabError as exc:
            raise RunActionError(
                f"a run named '{cfg.experiment_name}' exists already in {self.output_dir}",
                field="experiment_name",
                hint="choose another experiment name, or delete that run first",
            ) from exc
        config_path = self.configs / f"{cfg.experiment_name}.yaml"
        save_config(cfg, config_path)
        return self._launch(["train", str(config_path)], run_dir, cfg.experiment_name, "train")

    def _launch(self, args: list[str], run_dir: str, name: str, kind: str) -> dict[str, Any]:
        record = {"id": self.launches.new_id(), "run_dir": run_dir, "name": name, "kind": kind, "started": time.time()}
        record["log"] = str(self.logs / f"{record['id']}.log")
        record["pid"] = self.children.spawn(args, Path(record["log"]))
        self.launches.save(record)
        return record

    def stop(self, run_id: str) -> dict[str, Any]:
        """Send the run's process SIGINT: it finishes the step, checkpoints and ends as 'stopped'."""
        view = self.get(run_id)
        pids = self._live_pids(view)
        if not pids:
            raise RunActionError(f"run {view['name']} is not running (status {view['status']})")
        for pid in pids:
            interrupt(pid)
        for rec in self._launches_of(view):
            if rec.get("pid") in pids:
                rec["stop_requested"] = time.time()
                self.launches.save(rec)
        return self.get(view["id"])

    def resume(self, run_id: str) -> dict[str, Any]:
        """Continue a stopped (or failed, or lost) run from its last checkpoint with ``tunelab train --resume``.

        Raises:
            RunActionError: when the run is running, finished, or has no checkpoint.
        """
        from tunelab.training.checkpoint import list_checkpoints

        view = self.get(run_id)
        if self._live_pids(view):
            raise RunActionError(f"run {view['name']} is running already")
        if view["status"] == "finished":
            raise RunActionError(f"run {view['name']} has finished: there is nothing to resume")
        if not view["registered"] or not list_checkpoints(Path(view["path"])):
            raise RunActionError(
                f"run {view['name']} has no checkpoint to resume from",
                hint="it stopped before its first checkpoint; delete it and start it again",
            )
        self._launch(["train", "--resume", view["path"]], view["path"], view["name"], "resume")
        return self.get(view["id"])

    def delete(self, run_id: str, delete_files: bool) -> dict[str, Any]:
        """Forget a run (and with ``delete_files`` its run directory), with the same rules as ``tunelab runs rm``."""
        view = self.get(run_id)
        if self._live_pids(view):
            raise RunActionError(f"run {view['name']} is running", hint="stop it first")
        if view["registered"]:
            remove_run(self.output_dir, view["id"], delete_files)
        for rec in self._launches_of(view):
            Path(rec["log"]).unlink(missing_ok=True)
            self.launches.remove(rec["id"])
        return view

    # ------------------------------------------------------------------ reading
    def list(self) -> list[dict[str, Any]]:
        """Every run, newest first: registered runs and the studio's launches that have not registered (yet)."""
        rows = self.registry.list()
        by_path: dict[str, list[dict[str, Any]]] = {}
        for row in sorted(rows, key=lambda r: r["started"] or 0):
            by_path.setdefault(row["path"], []).append(row)
        own: dict[str, list[dict[str, Any]]] = {}
        views = []
        for rec in self.launches.all():
            owner = _owner(rec, by_path.get(rec["run_dir"], []))
            if owner is not None:
                own.setdefault(owner, []).append(rec)
            elif rec["kind"] == "train" and not _was_registered(Path(rec["run_dir"]), rec):
                views.append(self._view(None, [rec]))
        views += [self._view(row, own.get(row["id"], [])) for row in rows]
        return sorted(views, key=lambda v: -(v["started"] or 0))

    def get(self, run_id: str) -> dict[str, Any]:
        """One run by registry id (or unique prefix, or name) or by launch id.

        Raises:
            RegistryError: when nothing matches.
        """
        for view in self.list():
            if run_id == view["id"] or run_id in view["launch_ids"]:
                return view
        row = self.registry.get(run_id)  # a prefix or a name; raises a readable error when unknown
        return next(v for v in self.list() if v["id"] == row["id"])

    def log_lines(self, view: dict[str, Any], lines: int) -> list[str]:
        """The last lines of everything the run's processes printed (every launch of it, in order)."""
        return tail([Path(rec["log"]) for rec in self._launches_of(view)], lines)

    # ------------------------------------------------------------------ helpers
    def _launches_of(self, view: dict[str, Any]) -> list[dict[str, Any]]:
        ids = set(view["launch_ids"])
        return [rec for rec in self.launches.all() if rec["id"] in ids]

    def _live_pids(self, view: dict[str, Any]) -> list[int]:
        pids = [rec["pid"] for rec in self._launches_of(view) if self.children.alive(rec.get("pid"))]
        # The registry checked its pid against the process's start time: a pid reused since is not the run.
        if view.get("registry_running") and self.children.alive(view["registry_pid"]):
            pids.append(view["registry_pid"])
        return sorted(set(pids))

    def _view(self, row: dict[str, Any] | None, own: list[dict[str, Any]]) -> dict[str, Any]:
        """What the table and the run page show of one run."""
        latest = own[-1] if own else None
        live = [rec for rec in own if self.children.alive(rec.get("pid"))]
        for rec in own:
            self._note_exit(rec)
        if row is None:
            assert latest is not None
            status = "starting" if live else ("stopped" if latest.get("stop_requested") else "failed")
            path, name, started, ended = latest["run_dir"], latest["name"], latest["started"], None
            problem_type = backbone = None
            metrics: dict[str, Any] = {}
            error = None
        else:
            # The registry checked a "running" run's process by pid and start time (and reads "failed" when it is
            # gone), which also tells a run started from Python (no "tunelab" in its command line) from a reused pid.
            status = row["status"]
            if status != "running" and live:
                status = "resuming"
            elif row["status_detail"] == PROCESS_ENDED and any(rec.get("stop_requested") for rec in own):
                status = "stopped"  # asked to stop, and killed before it could record that
            path, name, started, ended = row["path"], row["name"], row["started"], row["ended"]
            problem_type, backbone, metrics, error = row["problem_type"], row["backbone"], row["metrics"], row["error"]
        if status == "running" and live and any(rec.get("stop_requested") for rec in live):
            status = "stopping"
        view = {
            "id": row["id"] if row else latest["id"],  # type: ignore[index]
            "launch_id": latest["id"] if latest else None,
            "launch_ids": [rec["id"] for rec in own],
            "registered": row is not None,
            "registry_pid": row["pid"] if row else None,
            "registry_running": bool(row) and row["status"] == "running",
            "name": name,
            "status": status,
            "problem_type": problem_type,
            "backbone": backbone,
            "path": path,
            "started": started,
            "ended": ended if status in ENDED else None,
            "metrics": metrics,
            "error": error,
            "from_studio": bool(own),
            "status_detail": row["status_detail"] if row and status == "failed" else None,
            "last_checkpoint": row["last_checkpoint"] if row else None,
            "resume_command": row["resume_command"] if row and status in ("failed", "stopped") else None,
        }
        view["status_text"] = f"{status} ({view['status_detail']})" if view["status_detail"] else status
        view["duration"] = _duration(view)
        view.update(_live_metrics(Path(path), metrics))
        if status in ("failed", "lost") or (status == "stopped" and not view["registered"]):
            view["log_tail"] = tail([Path(rec["log"]) for rec in own], LOG_TAIL)
            view["error"] = view["error"] or last_error(view["log_tail"]) or _lost_message(status, own)
        return view

    def _note_exit(self, rec: dict[str, Any]) -> None:
        """Remember a child's exit code in its launch record (only this studio's own children report one)."""
        if rec.get("returncode") is None:
            code = self.children.returncode(rec.get("pid") or 0)
            if code is not None:
                rec["returncode"] = code
                self.launches.save(rec)


def _owner(rec: dict[str, Any], rows: list[dict[str, Any]]) -> str | None:
    """The registry row a launch belongs to: a start registers after it began; a resume continues an older row."""
    if rec["kind"] == "train":
        after = [r for r in rows if (r["started"] or 0) >= rec["started"] - MATCH_SLACK_S]
        return after[0]["id"] if after else None
    before = [r for r in rows if (r["started"] or 0) <= rec["started"] + MATCH_SLACK_S]
    return before[-1]["id"] if before else None


def _was_registered(run_dir: Path, rec: dict[str, Any]) -> bool:
    """Whether the launch's run registered and was later removed from the registry (e.g. by ``tunelab runs rm``)."""
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(info.get("run_id")) and (info.get("started") or 0) >= rec["started"] - MATCH_SLACK_S


def _duration(view: dict[str, Any]) -> float | None:
    if not view["started"]:
        return None
    end = view["ended"] if view["ended"] else (time.time() if view["status"] not in ENDED else None)
    return None if end is None else max(0.0, end - view["started"])


def _lost_message(status: str, own: list[dict[str, Any]]) -> str:
    if status == "lost":
        return "the run's process is gone without recording an end (killed, or the machine restarted)"
    codes = [rec.get("returncode") for rec in own if rec.get("returncode") is not None]
    return f"the process ended with exit code {codes[-1]}" if codes else "the process ended before training started"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (a line cut by a crash is skipped)."""
    records = []
    try:
        text = (path / "metrics.jsonl").read_text(encoding="utf-8")
    except OSError:
        return records
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _live_metrics(path: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers for the table: the final 'after' metrics, or the latest evaluation of a run in progress."""
    shown = {k: v for k, v in (metrics.get("after") or {}).items() if isinstance(v, (int, float)) and k != "step"}
    step = None
    if not shown:
        for record in reversed(read_records(path)):
            step = step if step is not None else record.get("step")
            evals = {k[5:]: v for k, v in record.items() if k.startswith("eval_") and isinstance(v, (int, float))}
            if evals:
                shown = evals
                break
    key = _key_metric(path, shown)
    return {"shown_metrics": shown, "key_metric": key, "step": step}


def _key_metric(path: Path, shown: dict[str, Any]) -> str | None:
    try:
        import yaml

        data = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        chosen = metric_key(str((data.get("prediction") or {}).get("metric") or ""))
    except (OSError, ValueError, AttributeError):
        chosen = ""
    return chosen if chosen in shown else next(iter(shown), None)
