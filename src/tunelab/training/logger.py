"""Training logs: metrics.jsonl, TensorBoard (always), MLflow and W&B (when configured), console lines, a progress
bar."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunelab.io import append_jsonl, write_text_atomic
from tunelab.rundir import RunDirectory
from tunelab.training.state import TrainState


class Trackers:
    """TensorBoard, plus MLflow and Weights & Biases when listed in ``environment.trackers`` and importable."""

    def __init__(self, run: RunDirectory, names: list[str], config: dict[str, Any], console: Any):
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(log_dir=str(run.logs))
        self.mlflow = self.wandb = None
        if "mlflow" in names:
            try:
                import mlflow

                mlflow.set_experiment(config.get("output_directory", "tunelab"))
                mlflow.start_run(run_name=config.get("experiment_name"))
                mlflow.log_params(_flat(config))
                self.mlflow = mlflow
            except ImportError:
                console.print("[yellow]mlflow is not installed: logging to TensorBoard only[/]")
        if "wandb" in names:
            try:
                import wandb

                self.wandb = wandb.init(name=config.get("experiment_name"), config=config, dir=str(run.logs))
            except ImportError:
                console.print("[yellow]wandb is not installed: logging to TensorBoard only[/]")

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.tensorboard.add_scalar(key, value, step)
        self.tensorboard.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.wandb is not None:
            self.wandb.finish()


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class MetricLogger:
    """Aggregates training steps between log points and writes one record per logged step.

    Args:
        run: the run directory.
        console: where log lines go.
        enabled: False on every process but the main one (they log nothing).
    """

    def __init__(
        self,
        run: RunDirectory,
        console: Any,
        enabled: bool = True,
        trackers: list[str] | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.run = run
        self.console = console
        self.enabled = enabled
        self.trackers = Trackers(run, trackers or ["tensorboard"], config or {}, console) if enabled else None
        self.last: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self.acc = {"loss_sum": 0.0, "units": 0, "tokens": 0, "seconds": 0.0, "stats": {}}

    def add(self, loss: float, units: int, tokens: int, seconds: float, stats: dict[str, float] | None = None) -> None:
        """Account one optimizer step (mean loss over ``units`` trained units); ``stats`` are the problem's own
        training numbers of the step (e.g. RL's reward), averaged over the steps of a log interval."""
        self.acc["loss_sum"] += loss * units
        self.acc["units"] += units
        self.acc["tokens"] += tokens
        self.acc["seconds"] += seconds
        for key, value in (stats or {}).items():
            total, count = self.acc["stats"].get(key, (0.0, 0))
            self.acc["stats"][key] = (total + value, count + 1)

    def to_state(self) -> dict[str, Any]:
        """The steps accumulated since the last log point, so a resumed run logs the same numbers."""
        return {**self.acc, "stats": {k: list(v) for k, v in self.acc["stats"].items()}}

    def load_state(self, saved: dict[str, Any], step: int) -> None:
        """Restore the accumulators and drop log records written after the checkpoint's ``step``."""
        self.acc = {**saved, "stats": {k: tuple(v) for k, v in saved.get("stats", {}).items()}}
        if self.enabled and self.run.metrics_jsonl.is_file():
            kept = [
                line
                for line in self.run.metrics_jsonl.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step_of(line) <= step
            ]
            write_text_atomic(self.run.metrics_jsonl, "".join(line + "\n" for line in kept))

    def write(
        self,
        state: TrainState,
        epoch: float,
        lr: float | None,
        train: bool,
        eval_metrics: dict[str, float] | None = None,
    ) -> None:
        """Write the record of this step: training numbers (if ``train``) and eval_* metrics (if given)."""
        record: dict[str, Any] = {"step": state.step, "epoch": round(epoch, 4)}
        if train and self.acc["units"]:
            seconds = max(self.acc["seconds"], 1e-9)
            record.update(
                loss=self.acc["loss_sum"] / self.acc["units"],
                learning_rate=lr,
                tokens_per_s=self.acc["tokens"] / seconds,
                trained_tokens_per_s=self.acc["units"] / seconds,
            )
            record.update({k: total / count for k, (total, count) in self.acc["stats"].items()})
            self._reset()
        if eval_metrics:
            record.update({f"eval_{k}": v for k, v in eval_metrics.items()})
        if len(record) == 2 or not self.enabled:
            return
        append_jsonl(self.run.metrics_jsonl, _finite(record))
        assert self.trackers is not None
        self.trackers.log(
            {
                (f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"): v
                for k, v in record.items()
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v)
            },
            state.step,
        )
        lines = []
        if "loss" in record:
            self.last = record
            lines.append(
                f"step {state.step} · epoch {record['epoch']:.2f} · loss {record['loss']:.4f} · "
                f"lr {record['learning_rate']:.2e} · {record['tokens_per_s']:.0f} tok/s"
            )
        if eval_metrics:
            lines.append(f"step {state.step} eval: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
        for line in lines:
            self.console.print(line)
        # The run's own log (logs/train.log): what the console showed, for whoever reads the run directory later.
        self.run.logs.mkdir(parents=True, exist_ok=True)
        with open(self.run.logs / "train.log", "a", encoding="utf-8") as fh:
            fh.write("".join(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n" for line in lines))

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, ValueError):
        return 1 << 62  # a damaged line (cut by a crash) is dropped


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf are not JSON: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class _Progress:
    def __init__(self, progress: Any, task: Any):
        self.progress, self.task = progress, task

    def update(self, step: int, last: dict[str, Any]) -> None:
        if self.progress is None:
            return
        text = ""
        if last:
            text = f"loss {last['loss']:.4f} · lr {last['learning_rate']:.1e} · {last['tokens_per_s']:.0f} tok/s"
        self.progress.update(self.task, completed=step, stats=text)


@contextmanager
def progress_bar(console: Any, total: int) -> Iterator[_Progress]:
    """A rich progress bar with loss, learning rate and tokens/s (silent on a quiet or non-terminal console)."""
    if console.quiet or not console.is_terminal:
        yield _Progress(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("train", total=total, stats="")
        yield _Progress(progress, task)
