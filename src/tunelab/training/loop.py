"""``train()``: one plain loop for every problem type."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.io import write_json_atomic
from tunelab.rundir import RunDirectory
from tunelab.training.evaluation import Evaluator
from tunelab.training.logger import MetricLogger, progress_bar
from tunelab.training.setup import TrainSetup, resolve_seed, setup
from tunelab.training.state import TrainState

log = logging.getLogger("tunelab")


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, dict[str, float]]
    trainable_parameters: int
    total_parameters: int
    examples: list[dict[str, Any]] = field(default_factory=list)  # before/after answers on validation rows

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


def train_step(s: TrainSetup, window: list[dict[str, torch.Tensor]]) -> tuple[float, int, int]:
    """One optimizer step over an accumulation window.

    The loss is normalised by the trained units (tokens, or rows) of the whole window, so every trained token
    weighs the same whatever micro-batch it lands in.

    Returns:
        (mean loss per trained unit, trained units, input tokens).
    """
    device = s.accelerator.device
    units = sum(int(b["num_trained"]) for b in window)
    tokens = sum(int(b["attention_mask"].sum()) for b in window)
    total = 0.0
    for batch in window:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_sum, _ = s.loss_module(batch)
        s.accelerator.backward(loss_sum / max(units, 1))
        total += float(loss_sum.detach())
    if s.cfg.training.gradient_clip > 0:
        s.accelerator.clip_grad_norm_(s.loss_module.parameters(), s.cfg.training.gradient_clip)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return total / max(units, 1), units, tokens


def train(cfg: RunConfig, force: bool = False, console: Any = None, check: bool = True) -> RunResult:
    """Train and evaluate one run; everything it produces goes into its run directory.

    Args:
        cfg: the validated run config.
        force: replace an existing run directory of the same name.
        console: a rich console for progress output (a quiet one is made when None).
        check: stop on data the contract check rejects (``--no-check`` turns this off).

    Returns:
        The run's metrics and locations.

    Raises:
        TunelabError: for bad input (data, config, model), before any training step.
    """
    from rich.console import Console

    console = console or Console(quiet=True)
    RunDirectory.check_free(cfg, force=force)
    seed = resolve_seed(cfg.environment.seed)
    cfg = cfg.model_copy(deep=True)
    cfg.environment.seed = seed  # the saved config reproduces this run
    # Everything that can be wrong with the input (model, tokenizer, data) fails here, before anything is written.
    s = setup(cfg, seed, check=check, console=console)
    run = RunDirectory.create(cfg, force=force)
    run.save_config(cfg)
    write_json_atomic(run.path / "data_check.json", s.report.to_dict())
    console.print(
        f"[bold]{cfg.experiment_name}[/]: {cfg.problem_type} on {cfg.llm_backbone} "
        f"({cfg.training.adapter}); {s.parameters.describe()}"
    )
    console.print(
        f"data: {len(s.data.train)} training rows, {len(s.data.validation)} validation rows; "
        f"{s.total_steps} optimizer steps of {cfg.training.batch_size} rows × "
        f"{cfg.training.grad_accumulation}"
    )
    info: dict[str, Any] = {
        "status": "running",
        "seed": seed,
        "problem_type": cfg.problem_type,
        "adapter": cfg.training.adapter,
        "started": time.time(),
        "backbone_source": s.backbone_source,
        "trainable_parameters": s.parameters.trainable,
        "total_parameters": s.parameters.total,
        "trainable_share": s.parameters.share,
        **s.data.info,
    }
    run.save_info(info)
    try:
        state, evaluator = fit(s, run, console)
        run.save_model(s.model, s.tokenizer, cfg.training.adapter)
        s.problem.save(run.path)
        metrics = evaluator.metrics_summary()
        run.save_metrics(metrics)
        run.save_predictions(evaluator.prediction_rows())
        if s.data.test is not None:
            test = s.problem.evaluate(s.model, s.data.test, s.data.test_examples)
            metrics["test"] = test.metrics
            run.save_metrics(metrics)
            run.save_predictions(test.rows, "test_predictions.csv")
            console.print("test: " + ", ".join(f"{k} {v:.4g}" for k, v in test.metrics.items()))
    except BaseException as exc:
        info.update(
            status="stopped" if isinstance(exc, KeyboardInterrupt) else "failed",
            finished=time.time(),
            error=f"{type(exc).__name__}: {exc}",
        )
        run.save_info(info)
        raise
    info.update(
        status="finished", finished=time.time(), steps=state.step, epochs=state.epoch, best_step=state.best_step
    )
    run.save_info(info)
    return RunResult(run.path, metrics, s.parameters.trainable, s.parameters.total, evaluator.examples(2))


def fit(s: TrainSetup, run: RunDirectory, console: Any) -> tuple[TrainState, Evaluator]:
    """The training loop: evaluate before, train for the planned steps with periodic evaluation, pick the result."""
    cfg = s.cfg
    state = TrainState(seed=s.seed)
    logger = MetricLogger(run, console)
    evaluator = Evaluator(s, run, console)
    if cfg.training.evaluate_before_training:
        before = evaluator.run(state, "before")
        logger.write(state, 0.0, None, train=False, eval_metrics=before.metrics)
    eval_every = max(1, round(cfg.training.evaluation_epochs * s.steps_per_epoch))
    s.loss_module.train()
    with progress_bar(console, s.total_steps) as progress:
        while state.step < s.total_steps:
            for window in accumulation_windows(s.loader, cfg.training.grad_accumulation):
                started = time.perf_counter()
                loss, units, tokens = train_step(s, window)
                state.step += 1
                state.tokens_seen += tokens
                logger.add(loss, units, tokens, time.perf_counter() - started)
                epoch = state.epoch + min(1.0, (state.step - state.epoch * s.steps_per_epoch) / s.steps_per_epoch)
                last = state.step >= s.total_steps
                eval_metrics = None
                if state.step % eval_every == 0 or last:
                    eval_metrics = evaluator.run(state, "during").metrics
                    s.loss_module.train()
                logger.write(
                    state,
                    epoch,
                    s.scheduler.get_last_lr()[0],
                    train=state.step % cfg.training.logging_steps == 0 or last,
                    eval_metrics=eval_metrics,
                )
                progress.update(state.step, logger.last)
                if last:
                    break
            state.epoch += 1
    evaluator.finish(state)
    logger.close()
    return state, evaluator
