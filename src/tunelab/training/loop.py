"""``train()``: one plain loop for every problem type, resumable exactly from its last checkpoint."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.interrupts import StopOnSignal, StopSignal
from tunelab.io import write_json_atomic
from tunelab.models.adapters import save_to_run
from tunelab.rundir import RunDirectory
from tunelab.runs import RunRegistry, config_hash
from tunelab.training.checkpoint import (
    CheckpointWriter,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_stale,
)
from tunelab.training.evaluation import Evaluator
from tunelab.training.fingerprint import check_fingerprints, fingerprints
from tunelab.training.guards import TrainingStopped, check_step
from tunelab.training.logger import MetricLogger, Trackers, progress_bar
from tunelab.training.memory import hardware_summary, peak_memory_gb
from tunelab.training.setup import TrainSetup, resolve_seed, setup
from tunelab.training.state import TrainState


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, dict[str, float]]
    trainable_parameters: int
    total_parameters: int
    examples: list[dict[str, Any]] = field(default_factory=list)  # before/after answers on validation rows
    run_id: str | None = None

    @property
    def trainable_share(self) -> float:
        return self.trainable_parameters / max(self.total_parameters, 1)


def accumulation_windows(loader: Any, size: int) -> Iterator[list[dict[str, torch.Tensor]]]:
    """The micro-batches of one epoch, grouped into optimizer steps (the last group may be shorter)."""
    window: list[dict[str, torch.Tensor]] = []
    for batch in loader:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def step_stats(problem: Any) -> dict[str, float]:
    """A problem's own numbers of the last step (RL: reward, KL, clip fraction, ...); most problems have none."""
    pop = getattr(problem, "pop_stats", None)
    return pop() if pop is not None else {}


def train_step(
    s: TrainSetup, window: list[dict[str, torch.Tensor]], state: TrainState | None = None
) -> tuple[float, int, int, bool, float]:
    """One optimizer step over an accumulation window, on every process.

    The loss is normalised by the trained units (tokens, or rows) of the whole window across all processes, so
    every trained token weighs the same whatever micro-batch or process it lands in.

    Returns:
        (mean loss per trained unit, trained units, input tokens, whether the step was applied, the gradients'
        total norm before clipping).
    """
    acc = s.accelerator
    device = acc.device
    local_units = sum(int(b["num_trained"]) for b in window)
    units = int(acc.reduce(torch.tensor(local_units, device=device), "sum")) if acc.num_processes > 1 else local_units
    tokens = sum(int(b["attention_mask"].sum()) for b in window)
    total = torch.zeros((), device=device, dtype=torch.float64)
    # DDP averages gradients over processes: scale back up so the result is the sum over the global window.
    scale = acc.num_processes / max(units, 1)
    for i, batch in enumerate(window):
        batch = {k: v.to(device) for k, v in batch.items() if k != "rows"}
        sync = acc.no_sync(s.loss_module) if i < len(window) - 1 and acc.num_processes > 1 else nullcontext()
        with sync:
            loss_sum, _ = s.loss_module(batch)
            acc.backward(loss_sum * scale)
        total += loss_sum.detach().double()
    if acc.num_processes > 1:
        total = acc.reduce(total, "sum")
    loss = float(total) / max(units, 1)
    clip = s.cfg.training.gradient_clip
    grad_norm = float(acc.clip_grad_norm_(s.loss_module.parameters(), clip if clip > 0 else float("inf")))
    apply = True
    if state is not None:
        rows = [int(r) for b in window for r in b.get("rows", torch.tensor([])).tolist()]
        # A loss that is not a falling positive quantity (a policy-gradient surrogate) says nothing by its growth.
        growth = s.cfg.training.max_loss_growth if getattr(s.problem, "loss_growth_guard", True) else 0.0
        apply = check_step(state, loss, grad_norm, units, s.cfg.training.max_nan_skips, rows, growth)
    if apply:
        s.optimizer.step()
        s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return loss, units, tokens, apply, grad_norm


def train(
    cfg: RunConfig,
    force: bool = False,
    console: Any = None,
    check: bool = True,
    resume_from: str | Path | None = None,
    allow_changes: bool = False,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
    """Train and evaluate one run; everything it produces goes into its run directory.

    SIGTERM and SIGINT stop it within seconds in every phase: a step in progress finishes, the newest finished step
    is checkpointed, and the run is marked stopped.

    Args:
        cfg: the validated run config (for a resume: the run's own config, possibly with overrides).
        force: replace an existing run directory of the same name.
        console: a rich console for progress output (a quiet one is made when None).
        check: stop on data the contract check rejects (``--no-check`` turns this off).
        resume_from: a run directory to continue from its newest intact checkpoint.
        allow_changes: resume even though the config or data changed since the checkpoint (with a warning).
        on_eval: called with (step, metrics) after every evaluation during training; it may raise to stop the run.

    Returns:
        The run's metrics and locations.

    Raises:
        TunelabError: for bad input (data, config, model) before any training step; TrainingFailed when a
            guardrail stops the run; TrainingStopped on SIGTERM / SIGINT (exit code 143 / 130).
    """
    with StopOnSignal() as interrupt:
        try:
            return _train(cfg, force, console, check, resume_from, allow_changes, on_eval, interrupt)
        except StopSignal as stop:  # before the run directory was in use (data check, model loading)
            raise stopped_error(stop, Path(resume_from or cfg.run_dir), None) from None


def _train(
    cfg: RunConfig,
    force: bool,
    console: Any,
    check: bool,
    resume_from: str | Path | None,
    allow_changes: bool,
    on_eval: Callable[[int, dict[str, float]], None] | None,
    interrupt: StopOnSignal,
) -> RunResult:
    from rich.console import Console

    console = console or Console(quiet=True)
    checkpoint = None
    if resume_from is not None:
        run = RunDirectory(resume_from)
        RunDirectory.check_writable(run.path)
        checkpoint = latest_checkpoint(run.path, say=console.print)
        removed = remove_stale(run.path)
        if removed:
            console.print(f"removed {len(removed)} temporary checkpoint folder(s) left by an interrupted save")
        saved = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
        seed = saved["train_state"]["seed"]
        cfg = cfg.model_copy(deep=True)
        cfg.environment.seed = seed
        fp = fingerprints(cfg)
        check_fingerprints(saved["fingerprints"], fp, allow_changes, console)
    else:
        RunDirectory.check_free(cfg, force=force)
        seed = resolve_seed(cfg.environment.seed)
        cfg = cfg.model_copy(deep=True)
        cfg.environment.seed = seed  # the saved config reproduces this run
        fp = fingerprints(cfg)
    # Everything that can be wrong with the input (model, tokenizer, data) fails here, before anything is written.
    s = setup(cfg, seed, check=check, console=console)
    main = s.accelerator.is_main_process
    if not main:
        console = Console(quiet=True)
    if checkpoint is None:
        run = RunDirectory.create(cfg, force=force) if main else RunDirectory(cfg.run_dir)
        if main:
            run.save_config(cfg)
            write_json_atomic(run.path / "data_check.json", s.report.to_dict())
    s.accelerator.wait_for_everyone()
    info = _start_info(s, run, checkpoint is not None) if main else {}
    registry = RunRegistry(cfg.output_directory) if main else None
    run_id = _register(registry, run, cfg, info) if main else None
    writer = CheckpointWriter(s, run.path, fp)
    trackers = None
    try:
        trackers = _start_trackers(run, cfg, console, info) if main else None
        state, evaluator = fit(s, run, console, writer, checkpoint, on_eval, interrupt, trackers)
        metrics = evaluator.metrics_summary()
        if main:
            _save_results(s, run, evaluator, metrics, console)
    except BaseException as exc:
        with interrupt.deferred():  # one more signal does not cut the checkpoint or the status short
            error = stopped_error(exc, run.path, writer) if isinstance(exc, StopSignal) else exc
            status = getattr(error, "run_status", "stopped" if isinstance(exc, KeyboardInterrupt) else "failed")
            if main:
                info.update(status=status, finished=time.time(), error=f"{type(error).__name__}: {error}")
                run.save_info(info)
                registry.update(run_id, status=status, error=str(error), ended=True)
            if trackers is not None:
                trackers.finish(status)
            if error is exc:
                raise
            raise error from None
    if main:
        done = False
        try:
            _finish_run(run, registry, run_id, info, state, metrics, console)
            done = True
        finally:  # after the report, which the trackers attach; once, whatever happened
            trackers.finish("finished" if done else "failed")
    s.accelerator.wait_for_everyone()
    return RunResult(
        run.path, metrics, s.parameters.trainable, s.parameters.total, evaluator.examples(2) if main else [], run_id
    )


def _start_trackers(run: RunDirectory, cfg: RunConfig, console: Any, info: dict[str, Any]) -> Trackers:
    """TensorBoard and the configured trackers; their run ids go into run.json so a resumed run continues them."""
    trackers = Trackers(run, cfg.environment.trackers, cfg.to_dict(), console, resume=info.get("trackers"))
    if trackers.ids and trackers.ids != info.get("trackers"):
        info["trackers"] = trackers.ids
        run.save_info(info)
    return trackers


def _finish_run(
    run: RunDirectory,
    registry: RunRegistry,
    run_id: str,
    info: dict[str, Any],
    state: TrainState,
    metrics: dict[str, Any],
    console: Any,
) -> None:
    """Mark the run finished in run.json and the registry, and write its report."""
    info.pop("error", None)  # a resumed run's earlier stop is history, not this run's state
    info.update(
        status="finished",
        finished=time.time(),
        steps=state.step,
        epochs=state.epoch,
        best_step=state.best_step,
        early_stopped=state.early_stopped,
        train_seconds=round(state.train_seconds, 3),
        train_tokens=state.tokens_seen,
        train_positions=state.positions_seen,
        trained_tokens=state.trained_seen,
        peak_memory_gb=round(peak_memory_gb(), 3),
    )
    run.save_info(info)
    registry.update(run_id, status="finished", metrics=metrics, ended=True)
    _write_report(run, console)


def stopped_error(stop: StopSignal, run_path: Path, writer: CheckpointWriter | None) -> TrainingStopped:
    """The one-line error of a stop, after checkpointing the newest finished step when no checkpoint has it."""
    wrote = writer is not None and writer.save_on_stop(stop.mid_step)
    found = list_checkpoints(run_path)
    if wrote:
        what = f"stopped by {stop.name} at step {writer.step} after saving a checkpoint"
    elif stop.mid_step:
        what = f"stopped at once by a second {stop.name}, in the middle of a step (not saved)"
    elif writer is not None and writer.payload is not None:
        what = f"stopped by {stop.name} at step {writer.step}"
    else:
        what = f"stopped by {stop.name} before the first training step"
    if found:
        what += f"; the newest checkpoint is step {found[-1][0]}"
        hint = f"continue with: tunelab train --resume {run_path}"
    else:
        what += "; there is no checkpoint to resume from"
        hint = "start the run again (with --force to replace its run directory)"
    return TrainingStopped(what, file=str(run_path), hint=hint, exit_code=stop.exit_code)


def _start_info(s: TrainSetup, run: RunDirectory, resumed: bool) -> dict[str, Any]:
    cfg = s.cfg
    if resumed:
        info = run.info()
        info.update(status="running", resumed=info.get("resumed", 0) + 1)
    else:
        info = {
            "status": "running",
            "seed": s.seed,
            "problem_type": cfg.problem_type,
            "adapter": cfg.training.adapter,
            "started": time.time(),
            "backbone_source": s.backbone_source,
            "trainable_parameters": s.parameters.trainable,
            "total_parameters": s.parameters.total,
            "trainable_share": s.parameters.share,
            "processes": s.accelerator.num_processes,
            "hardware": hardware_summary(),
            "global_batch_size": cfg.training.batch_size * cfg.training.grad_accumulation * s.accelerator.num_processes,
            **s.data.info,
        }
    run.save_info(info)
    return info


def _register(registry: RunRegistry, run: RunDirectory, cfg: RunConfig, info: dict[str, Any]) -> str:
    if info.get("run_id"):
        registry.update(info["run_id"], status="running", pid=os.getpid(), error="")
        return info["run_id"]
    run_id = registry.add(
        cfg.experiment_name, run.path, cfg.problem_type, cfg.llm_backbone, config_hash(cfg.to_dict()), pid=os.getpid()
    )
    info["run_id"] = run_id
    run.save_info(info)
    return run_id


def _save_results(
    s: TrainSetup, run: RunDirectory, evaluator: Evaluator, metrics: dict[str, Any], console: Any
) -> None:
    save_to_run(run, s.model, s.tokenizer, s.cfg.training.adapter)
    s.problem.save(run.path)
    run.save_metrics(metrics)
    run.save_predictions(evaluator.prediction_rows())
    if s.data.test is not None:
        test = s.problem.evaluate(s.model, s.data.test, s.data.test_examples)
        metrics["test"] = test.metrics
        run.save_metrics(metrics)
        run.save_predictions(test.rows, "test_predictions.csv")
        console.print("test: " + ", ".join(f"{k} {v:.4g}" for k, v in test.metrics.items()))


def _write_report(run: RunDirectory, console: Any) -> None:
    """report.html and the model card of the trained weights (``adapter/README.md``) for the finished run; neither
    failing to render fails the run it describes."""
    from tunelab.infer.model_card import write_run_card
    from tunelab.report import write_report

    try:
        write_run_card(run.path)
    except Exception as exc:  # the model and metrics are already saved
        console.print(f"could not write the model card ({type(exc).__name__}: {exc})")
    try:
        console.print(f"report: {write_report(run.path)}")
    except Exception as exc:  # the model and metrics are already saved; say what went wrong and go on
        console.print(f"could not write report.html ({type(exc).__name__}: {exc}); try: tunelab report {run.path}")


def fit(
    s: TrainSetup,
    run: RunDirectory,
    console: Any,
    writer: CheckpointWriter,
    checkpoint: Path | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    interrupt: StopOnSignal | None = None,
    trackers: Trackers | None = None,
) -> tuple[TrainState, Evaluator]:
    """The training loop: evaluate before, train the planned steps with evaluations and checkpoints, pick the result.

    ``trackers`` (TensorBoard, MLflow, W&B) get every log record; the caller ends them, after the report."""
    cfg, main = s.cfg, s.accelerator.is_main_process
    interrupt = interrupt or StopOnSignal()  # not entered: signals keep their handlers
    state = TrainState(seed=s.seed)
    logger = MetricLogger(run, console, enabled=main, trackers=trackers)
    evaluator = Evaluator(s, run, console)
    pending = False  # the checkpoint was written by a stop before its step's evaluation and log record
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, s.model, s.optimizer, s.scheduler)  # restores the RNG states too
        state = TrainState.from_dict(saved["train_state"])
        pending = bool(saved.get("pending"))
        evaluator.load_state(saved["evaluator"])
        logger.load_state(saved["logger"], state.step - pending)
        writer.saved_step = state.step
        writer.mark(state, evaluator, logger, pending=pending)
        console.print(f"resuming {run.path} from step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    elif cfg.training.evaluate_before_training:
        before = evaluator.run(state, "before")
        logger.write(state, 0.0, None, train=False, eval_metrics=before.metrics)
    per_epoch, ga = s.steps_per_epoch, cfg.training.grad_accumulation
    eval_every = cfg.training.eval_steps or max(1, round(cfg.training.evaluation_epochs * per_epoch))
    save_every = cfg.training.save_steps or (
        round(cfg.training.save_epochs * per_epoch) if cfg.training.save_epochs > 0 else 0
    )
    s.loss_module.train()
    with progress_bar(console, s.total_steps) as progress:
        done = pending and _finish_step(s, state, evaluator, logger, progress, eval_every, on_eval)
        if pending:
            writer.mark(state, evaluator, logger)
        while not done and state.step < s.total_steps and not state.early_stopped:
            s.batches.set_epoch(state.epoch, skip=state.batch_in_epoch)
            s.collator.epoch = state.epoch
            tick = time.perf_counter()  # data loading counts towards the step that waits for it
            for window in accumulation_windows(s.loader, ga):
                with interrupt.deferred():  # a signal during the step stops the run once the step is done
                    started = time.perf_counter()
                    loss, units, tokens, applied, grad_norm = train_step(s, window, state)
                    state.batch_in_epoch += len(window)
                    state.train_seconds += time.perf_counter() - tick
                    if not applied:
                        console.print(f"skipped a step with a NaN/inf loss or gradient ({state.nan_skips} so far)")
                        tick = time.perf_counter()
                        continue
                    state.step += 1
                    state.tokens_seen += tokens
                    state.trained_seen += units
                    state.positions_seen += sum(b["input_ids"].numel() for b in window)
                    seconds = time.perf_counter() - started
                    logger.add(loss, units, tokens, seconds, step_stats(s.problem), grad_norm)
                    writer.mark(state, evaluator, logger, pending=True)
                done = _finish_step(s, state, evaluator, logger, progress, eval_every, on_eval)
                writer.mark(state, evaluator, logger)
                if save_every and state.step % save_every == 0:
                    writer.save()
                if done:
                    break
                tick = time.perf_counter()
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
    if state.early_stopped:
        console.print(
            f"early stopping at step {state.step}: no improvement of {evaluator.key} in "
            f"{cfg.training.early_stopping_patience} evaluations"
        )
    evaluator.finish(state)
    return state, evaluator


def _finish_step(
    s: TrainSetup,
    state: TrainState,
    evaluator: Evaluator,
    logger: MetricLogger,
    progress: Any,
    eval_every: int,
    on_eval: Callable[[int, dict[str, float]], None] | None,
) -> bool:
    """After an optimizer step: evaluate when due, write the step's log record; whether training is over."""
    last = state.step >= s.total_steps
    eval_metrics = None
    if state.step % eval_every == 0 or last:
        eval_metrics = evaluator.run(state, "during").metrics
        s.loss_module.train()
        state.early_stopped = evaluator.should_stop_early() and not last
    epoch = state.epoch + state.batch_in_epoch / max(len(s.batches), 1)
    logger.write(
        state,
        epoch,
        s.scheduler.get_last_lr()[0],
        train=state.step % s.cfg.training.logging_steps == 0 or last,
        eval_metrics=eval_metrics,
    )
    if eval_metrics is not None and on_eval is not None:
        on_eval(state.step, eval_metrics)
    progress.update(state.step, logger.last)
    return last or state.early_stopped
