"""The run directory: the contract between training and everything that uses its result.

Layout of ``output_directory/experiment_name/``::

    config.yaml                     the config that reproduces the run (with the seed actually used)
    run.json                        status, backbone, parameter counts, data sizes, timings
    adapter/ | model/ | partial/    what was trained: a peft adapter, a full transformers model, or the trained tensors
    tokenizer/                      tokenizer with its chat template
    labels.json                     classes (classification)
    metrics.json                    {"before": {...}, "after": {...}, "best": {...}}
    metrics.jsonl                   one JSON object per logged step
    validation_predictions.csv      prompt, reference, prediction, score (and the base model's, when evaluated)
    logs/                           train.log and TensorBoard events
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, load_config, save_config
from tunelab.errors import RunDirError
from tunelab.io import atomic_path, write_json_atomic

MODEL_DIR_NAMES = ("adapter", "model", "partial")


class RunDirectory:
    """Paths and atomic writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ creation
    @classmethod
    def check_free(cls, cfg: RunConfig, force: bool = False) -> None:
        """Make sure ``cfg``'s run directory can be created, before any work is done.

        Raises:
            RunDirError: when it exists and is not empty (unless ``force``), or is not a run directory.
        """
        path = cfg.run_dir
        if path.exists() and not path.is_dir():
            raise RunDirError("run directory path is a file", file=str(path))
        cls.check_writable(path)
        if path.exists() and any(path.iterdir()):
            if not force:
                raise RunDirError(
                    "run directory already exists",
                    file=str(path),
                    hint="pick another experiment_name, or pass --force to replace it",
                )
            if not ((path / "run.json").is_file() or (path / "config.yaml").is_file()):
                raise RunDirError(
                    "refusing to replace a folder that is not a tunelab run",
                    file=str(path),
                    hint="choose another output_directory or experiment_name",
                )

    @staticmethod
    def check_writable(path: Path) -> None:
        """Make sure ``path`` can be made and written, by making (and removing) a folder in its nearest existing
        parent: permissions, read-only file systems and a file in the way all show up before any data work.

        Raises:
            RunDirError: naming the place that cannot be written.
        """
        existing = Path(path).absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise RunDirError(
                f"cannot make the run directory: {existing} is a file, not a folder",
                file=str(path),
                hint="choose another output_directory",
            )
        try:
            probe = tempfile.mkdtemp(prefix=".tunelab-write-check.", dir=existing)
        except OSError as exc:
            raise RunDirError(
                f"cannot write in {existing} ({exc.strerror or type(exc).__name__})",
                file=str(path),
                hint="choose an output_directory you can write to",
            ) from None
        os.rmdir(probe)

    @classmethod
    def create(cls, cfg: RunConfig, force: bool = False) -> RunDirectory:
        """Make a fresh run directory for ``cfg`` (replacing an old run only with ``force``)."""
        cls.check_free(cfg, force)
        run = cls(cfg.run_dir)
        if run.path.exists():
            shutil.rmtree(run.path)
        run.logs.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDirectory:
        """An existing, finished run directory.

        Raises:
            RunDirError: when ``path`` is not a run directory or the run did not save a model.
        """
        run = cls(path)
        if not (run.path / "config.yaml").is_file():
            raise RunDirError(
                "not a tunelab run directory (no config.yaml)",
                file=str(run.path),
                hint="pass the folder output_directory/experiment_name of a finished run",
            )
        if run.model_dir is None:
            raise RunDirError("this run saved no model (did it finish?)", file=str(run.path))
        return run

    # ------------------------------------------------------------------ paths
    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def model_dir(self) -> Path | None:
        """The folder holding the trained weights, whichever kind the run saved."""
        for name in MODEL_DIR_NAMES:
            if (self.path / name).is_dir():
                return self.path / name
        return None

    # ------------------------------------------------------------------ reading
    def config(self) -> RunConfig:
        return load_config(self.config_path)

    def info(self) -> dict[str, Any]:
        path = self.path / "run.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def metrics(self) -> dict[str, Any]:
        path = self.path / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    # ------------------------------------------------------------------ writing
    def save_config(self, cfg: RunConfig) -> None:
        save_config(cfg, self.config_path)

    def save_info(self, info: dict[str, Any]) -> None:
        write_json_atomic(self.path / "run.json", info)

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.path / "metrics.json", metrics)

    def save_predictions(self, rows: list[dict[str, Any]], name: str = "validation_predictions.csv") -> Path:
        return write_rows(self.path / name, rows)


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as CSV (or JSON lines for a .jsonl/.json path), atomically."""
    path = Path(path)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            if path.suffix.lower() in (".jsonl", ".json"):
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
    return path
