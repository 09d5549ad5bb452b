"""Exports started from the studio: ``tunelab export`` as a separate process, its parity check, and downloads."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.ui.processes import Children, RecordStore, last_error, tail

FORMATS = ("adapter", "merged", "gguf")
DTYPES = ("float32", "float16", "bfloat16")
QUANTS = ("f32", "f16", "q8_0")


class ExportManager:
    """Start exports of a run and list what its ``exports/`` folder holds.

    Args:
        data_dir: the studio's data folder (job records and logs).
        children: the studio's process table.
    """

    def __init__(self, data_dir: Path, children: Children):
        self.jobs = RecordStore(data_dir / "export_jobs", "x")
        self.logs = data_dir / "logs"
        self.tmp = data_dir / "tmp"
        self.children = children

    def start(self, run_dir: str, fmt: str, dtype: str = "float32", quant: str = "q8_0") -> dict[str, Any]:
        """Run ``tunelab export RUN --format FMT --force`` in the background.

        Raises:
            TunelabError: for an unknown format, dtype or GGUF type, or when an export of the run is in progress.
        """
        for value, allowed, field in ((fmt, FORMATS, "format"), (dtype, DTYPES, "dtype"), (quant, QUANTS, "quant")):
            if value not in allowed:
                raise TunelabError(f"unknown {field} '{value}'", field=field, hint=f"one of {', '.join(allowed)}")
        if any(job["run_dir"] == run_dir and job["running"] for job in self.list_jobs(run_dir)):
            raise TunelabError("an export of this run is running already", field="format", hint="wait for it")
        record = {"id": self.jobs.new_id(), "run_dir": run_dir, "format": fmt, "started": time.time()}
        record["log"] = str(self.logs / f"{record['id']}.log")
        args = ["export", run_dir, "--format", fmt, "--dtype", dtype, "--quant", quant, "--force"]
        record["pid"] = self.children.spawn(args, Path(record["log"]))
        self.jobs.save(record)
        return self._job_view(record)

    def list_jobs(self, run_dir: str) -> list[dict[str, Any]]:
        return [self._job_view(job) for job in self.jobs.all() if job["run_dir"] == run_dir]

    def _job_view(self, job: dict[str, Any]) -> dict[str, Any]:
        running = self.children.alive(job.get("pid"))
        code = self.children.returncode(job.get("pid") or 0)
        lines = tail([Path(job["log"])], 30)
        view = {k: job[k] for k in ("id", "run_dir", "format", "started")}
        view.update(running=running, returncode=code, log_tail=lines, error=None if running else last_error(lines))
        return view

    def exports(self, run_dir: str) -> list[dict[str, Any]]:
        """The finished exports of a run: folder name, parity check result, files and size."""
        root = Path(run_dir) / "exports"
        out = []
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            parity_file = folder / "parity.json"
            if not folder.is_dir() or folder.name.startswith(".") or not parity_file.is_file():
                continue
            try:
                parity = json.loads(parity_file.read_text(encoding="utf-8"))
            except ValueError:
                parity = {"passed": False, "error": "parity.json is damaged"}
            files = [p for p in folder.rglob("*") if p.is_file()]
            out.append(
                {
                    "name": folder.name,
                    "parity": parity,
                    "files": sorted(str(p.relative_to(folder)) for p in files),
                    "bytes": sum(p.stat().st_size for p in files),
                }
            )
        return out

    def archive(self, run_dir: str, name: str) -> tuple[Path, str]:
        """A download of one export: the .gguf file itself, or a zip of the folder (written to a temporary file).

        Returns:
            (the file to send, the file name the browser saves it under).

        Raises:
            TunelabError: when the export does not exist.
        """
        root = (Path(run_dir) / "exports").resolve()
        folder = (root / name).resolve()
        if folder.parent != root or not folder.is_dir():
            raise TunelabError(f"no export '{name}' in this run", field="name")
        ggufs = list(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0], ggufs[0].name
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="export-", suffix=".zip", dir=self.tmp)
        with open(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as archive:
            for path in sorted(folder.rglob("*")):
                # A symbolic link could point anywhere on the machine: only real files inside the export go out.
                if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(folder):
                    archive.write(path, str(Path(name) / path.relative_to(folder)))
        return Path(tmp), f"{Path(run_dir).name}-{name}.zip"

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
