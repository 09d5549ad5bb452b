"""Training logs: metrics.jsonl, TensorBoard, console lines and a progress bar."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunelab.io import append_jsonl
from tunelab.rundir import RunDirectory
from tunelab.training.state import TrainState


class MetricLogger:
    """Aggregates training steps between log points and writes one record per logged step."""

    def __init__(self, run: RunDirectory, console: Any):
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.console = console
        self.writer = SummaryWriter(log_dir=str(run.logs))
        self.last: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._loss_sum = 0.0
        self._units = 0
        self._tokens = 0
        self._trained = 0
        self._seconds = 0.0

    def add(self, loss: float, units: int, tokens: int, seconds: float) -> None:
        """Account one optimizer step (mean loss over ``units`` trained units)."""
        self._loss_sum += loss * units
        self._units += units
        self._tokens += tokens
        self._trained += units
        self._seconds += seconds

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
        if train and self._units:
            seconds = max(self._seconds, 1e-9)
            record.update(
                loss=self._loss_sum / self._units,
                learning_rate=lr,
                tokens_per_s=self._tokens / seconds,
                trained_tokens_per_s=self._trained / seconds,
            )
            self._reset()
        if eval_metrics:
            record.update({f"eval_{k}": v for k, v in eval_metrics.items()})
        if len(record) == 2:
            return
        append_jsonl(self.run.metrics_jsonl, _finite(record))
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(
                    key.replace("eval_", "eval/") if key.startswith("eval_") else f"train/{key}", value, state.step
                )
        self.writer.flush()
        if "loss" in record:
            self.last = record
            self.console.print(
                f"step {state.step} · epoch {record['epoch']:.2f} · loss {record['loss']:.4f} · "
                f"lr {record['learning_rate']:.2e} · {record['tokens_per_s']:.0f} tok/s"
            )
        if eval_metrics:
            self.console.print("eval: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))

    def close(self) -> None:
        self.writer.close()


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
    """A rich progress bar with loss, learning rate and tokens/s (silent on a quiet console)."""
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
