"""Training logs: metrics.jsonl, TensorBoard (always), MLflow and W&B (when configured), console lines, a progress
bar."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.config import flatten_fields
from tunelab.io import append_jsonl, write_text_atomic
from tunelab.rundir import RunDirectory
from tunelab.training.state import TrainState

INSTALL_HINT = "pip install 'tunelab[trackers]'"
_HINT = INSTALL_HINT.replace("[", "\\[")  # as rich markup
# Files of the run directory attached to the MLflow / W&B run when it ends (those that exist by then).
ARTIFACTS = ("report.html", "metrics.json", "config.yaml")


class Trackers:
    """TensorBoard, plus MLflow and Weights & Biases when listed in ``environment.trackers`` and importable.

    Metric names are the Hugging Face Trainer's (``train/loss``, ``train/grad_norm``, ``train/learning_rate``,
    ``train/epoch``, ``eval/<metric>``, ``test/<metric>``), the same in every tracker. A tracker that cannot start
    or fails while logging prints one yellow line and is dropped: it never stops the training run.

    Args:
        run: the run directory (TensorBoard and W&B write under ``run/logs``).
        names: the trackers to use (TensorBoard is always used).
        config: the run's config as a dict (logged as hyperparameters).
        console: where notices go.
        resume: the tracker run ids of an earlier part of this run (``run.json``'s ``trackers``), to continue them.
    """

    def __init__(
        self,
        run: RunDirectory,
        names: list[str],
        config: dict[str, Any],
        console: Any,
        resume: dict[str, str] | None = None,
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.console, self.step, self.ended = run, console, 0, False
        resume = resume or {}
        self.tensorboard = SummaryWriter(log_dir=str(run.logs))
        # the config as text (TensorBoard's Text tab), like the Trainer's "args"
        self.tensorboard.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")
        self.mlflow: _MLflow | None = None
        self.wandb: _WandB | None = None
        if "mlflow" in names:
            self.mlflow = self._start("mlflow", lambda: _MLflow(run, config, console, resume.get("mlflow")))
        if "wandb" in names:
            self.wandb = self._start("wandb", lambda: _WandB(run, config, console, resume.get("wandb")))

    def _start(self, name: str, make: Any) -> Any:
        try:
            return make()
        except ImportError:
            self.console.print(f"[yellow]{name} is not installed: not logging to it (install it with: {_HINT})[/]")
        except Exception as exc:  # a tracker that cannot start (server down, bad URI) never stops the training
            self.console.print(f"[yellow]{name} could not start ({_why(exc)}): not logging to it[/]")
        return None

    @property
    def ids(self) -> dict[str, str]:
        """The MLflow and W&B run ids, to continue the same tracker runs when this run is resumed."""
        return {name: t.id for name, t in (("mlflow", self.mlflow), ("wandb", self.wandb)) if t is not None}

    def log(self, values: dict[str, float], step: int) -> None:
        self.step = step
        for key, value in values.items():
            self.tensorboard.add_scalar(key, value, step)
        self.tensorboard.flush()
        self._each_tracker(lambda tracker: tracker.log(values, step), "failed ({}): no longer logging to it", drop=True)

    def finish(self, status: str = "finished") -> None:
        """End the tracker runs, once: log the test metrics and attach the run's report, metrics.json and config.yaml
        (whichever exist), then mark the MLflow / W&B run finished, failed or stopped (``status``: run.json's)."""
        if self.ended:
            return
        self.ended = True
        test = _read_json(self.run.path / "metrics.json").get("test") or {}
        numbers = {f"test/{k}": v for k, v in test.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if numbers:
            self.log(numbers, self.step)
        self.tensorboard.close()
        files = [self.run.path / name for name in ARTIFACTS if (self.run.path / name).is_file()]
        self._each_tracker(lambda tracker: tracker.finish(files, status), "could not end its run ({})", drop=False)

    def _each_tracker(self, action: Any, failure: str, drop: bool) -> None:
        """``action(tracker)`` for MLflow and W&B when on; a failure is one yellow line (``failure`` formatted with the
        error), and with ``drop`` that tracker is off for the rest of the run: training never stops for a tracker."""
        for name in ("mlflow", "wandb"):
            tracker = getattr(self, name)
            if tracker is None:
                continue
            try:
                action(tracker)
            except Exception as exc:
                self.console.print(f"[yellow]{name} {failure.format(_why(exc))}[/]")
                if drop:
                    setattr(self, name, None)


def _why(exc: BaseException) -> str:
    """``Type: message`` of an error, as rich markup."""
    from rich.markup import escape

    return escape(f"{type(exc).__name__}: {exc}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def mlflow_params(config: dict[str, Any]) -> dict[str, str]:
    """The config as MLflow params: flattened (``training.learning_rate``), keys of MLflow's characters and at most
    250 characters, values as text of at most 6,000 characters (cut ones end in "...")."""
    out = {}
    for key, value in flatten_fields(config).items():
        key = re.sub(r"[^\w\-. /]", "_", key)[:250]
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[key] = text if len(text) <= 6000 else text[:5997] + "..."
    return out


class _MLflow:
    """One MLflow run through ``MlflowClient`` (no global active run, so runs in one process never mix).

    The store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///OUTPUT_DIRECTORY/mlflow.db`` with artifacts in
    ``OUTPUT_DIRECTORY/mlartifacts``: every run of an output directory in one store, as ``mlflow ui`` expects
    (MLflow's own default is ``./mlflow.db``; its file store ``./mlruns`` is deprecated). The experiment is
    ``MLFLOW_EXPERIMENT_NAME``, else "tunelab".
    """

    STATUS = {"finished": "FINISHED", "stopped": "KILLED"}

    def __init__(self, run: RunDirectory, config: dict[str, Any], console: Any, run_id: str | None):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        root = run.path.resolve().parent
        self.client = MlflowClient(uri or f"sqlite:///{root / 'mlflow.db'}")
        if run_id is not None:  # a resumed run continues its MLflow run
            self.id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tunelab"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            experiment = found.experiment_id
        else:
            artifacts = None if uri else (root / "mlartifacts").as_uri()
            experiment = self.client.create_experiment(name, artifact_location=artifacts)
        tags = {"tunelab.run_dir": str(run.path.resolve()), "mlflow.source.name": "tunelab"}
        self.id = self.client.create_run(experiment, run_name=config.get("experiment_name"), tags=tags).info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in mlflow_params(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per request
            self.client.log_batch(self.id, params=params[start : start + 100])
        shown = uri or f"sqlite:///{root / 'mlflow.db'}"
        console.print(f"mlflow: run {self.id} in {shown} (browse: mlflow ui --backend-store-uri {shown})")

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def finish(self, files: list[Path], status: str) -> None:
        try:
            for path in files:
                self.client.log_artifact(self.id, str(path))
        finally:
            self.client.set_terminated(self.id, self.STATUS.get(status, "FAILED"))


def _wandb_has_key() -> bool:
    """Whether W&B can reach its server as someone: WANDB_API_KEY, or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class _WandB:
    """One W&B run in ``run/logs/wandb``. WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY... apply as usual; with no WANDB_MODE
    and no API key (or an offline hub) it runs offline, to be uploaded later with ``wandb sync``."""

    def __init__(self, run: RunDirectory, config: dict[str, Any], console: Any, run_id: str | None):
        import wandb

        mode = None
        offline_hub = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        if not os.environ.get("WANDB_MODE") and (offline_hub or not _wandb_has_key()):
            mode = "offline"
            console.print("wandb: no API key (or an offline hub): logging offline; upload later with: wandb sync")
        run.logs.mkdir(parents=True, exist_ok=True)
        self.wandb_run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "tunelab",
            name=config.get("experiment_name"),
            config=config,
            dir=str(run.logs),
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
        )
        self.id = self.wandb_run.id
        self.root = run.path

    def log(self, values: dict[str, float], step: int) -> None:
        self.wandb_run.log(values, step=step)

    def finish(self, files: list[Path], status: str) -> None:
        try:
            for path in files:
                self.wandb_run.save(str(path), base_path=str(self.root), policy="now")
        finally:
            self.wandb_run.finish(exit_code=0 if status == "finished" else 1)


class MetricLogger:
    """Aggregates training steps between log points and writes one record per logged step.

    Args:
        run: the run directory.
        console: where log lines go.
        enabled: False on every process but the main one (they log nothing).
    """

    def __init__(self, run: RunDirectory, console: Any, enabled: bool = True, trackers: Trackers | None = None):
        self.run = run
        self.console = console
        self.enabled = enabled
        self.trackers = trackers if enabled else None
        self.last: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self.acc = {"loss_sum": 0.0, "units": 0, "tokens": 0, "seconds": 0.0, "stats": {}, "grad_norm": [0.0, 0]}

    def add(
        self,
        loss: float,
        units: int,
        tokens: int,
        seconds: float,
        stats: dict[str, float] | None = None,
        grad_norm: float | None = None,
    ) -> None:
        """Account one optimizer step (mean loss over ``units`` trained units); ``stats`` are the problem's own
        training numbers of the step (e.g. RL's reward), averaged over the steps of a log interval, as is
        ``grad_norm`` (the gradients' total norm before clipping)."""
        self.acc["loss_sum"] += loss * units
        self.acc["units"] += units
        self.acc["tokens"] += tokens
        self.acc["seconds"] += seconds
        if grad_norm is not None and math.isfinite(grad_norm):
            total, count = self.acc["grad_norm"]
            self.acc["grad_norm"] = [total + grad_norm, count + 1]
        for key, value in (stats or {}).items():
            total, count = self.acc["stats"].get(key, (0.0, 0))
            self.acc["stats"][key] = (total + value, count + 1)

    def to_state(self) -> dict[str, Any]:
        """The steps accumulated since the last log point, so a resumed run logs the same numbers."""
        return {**self.acc, "stats": {k: list(v) for k, v in self.acc["stats"].items()}}

    def load_state(self, saved: dict[str, Any], step: int) -> None:
        """Restore the accumulators and drop log records written after the checkpoint's ``step``."""
        self._reset()  # a checkpoint of an older tunelab lacks the newer accumulators
        self.acc.update({**saved, "stats": {k: tuple(v) for k, v in saved.get("stats", {}).items()}})
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
            total, count = self.acc["grad_norm"]
            if count:
                record["grad_norm"] = total / count
            record.update({k: total / count for k, (total, count) in self.acc["stats"].items()})
            self._reset()
        if eval_metrics:
            record.update({f"eval_{k}": v for k, v in eval_metrics.items()})
        if len(record) == 2 or not self.enabled:
            return
        append_jsonl(self.run.metrics_jsonl, _finite(record))
        if self.trackers is not None:
            self.trackers.log(tracker_values(record), state.step)
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


def tracker_values(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record under the Hugging Face Trainer's TensorBoard names: ``eval_x`` -> ``eval/x``, every
    other number (the epoch included) -> ``train/x``."""
    return {
        (f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"): v
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


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
