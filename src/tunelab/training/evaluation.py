"""Evaluations before, during and after training; the best one; early stopping; the before/after comparison."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.config import LOWER_IS_BETTER
from tunelab.io import atomic_path
from tunelab.models.adapters import trainable_state
from tunelab.problems.base import EvalResult
from tunelab.rundir import RunDirectory
from tunelab.training.setup import TrainSetup
from tunelab.training.state import TrainState


def is_better(value: float | None, best: float | None, metric: str) -> bool:
    """Whether ``value`` improves on ``best`` for ``metric`` (NaN never does)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


class Evaluator:
    """Runs validation, tracks the best evaluation (keeping its weights when asked to) and counts patience.

    With several processes only the main one evaluates; the others receive its metrics, so every process takes the
    same early-stopping decision.
    """

    def __init__(self, s: TrainSetup, run: RunDirectory | None, console: Any):
        self.s = s
        self.run_dir = run
        self.console = console
        self.key = s.cfg.best_metric()
        self.keep_best = s.cfg.training.save_best_checkpoint or s.cfg.training.load_best_model_at_end
        self.before: EvalResult | None = None
        self.last: EvalResult | None = None
        self.last_step: int | None = None
        self.best: EvalResult | None = None
        self.final_best_step: int | None = None
        self.stale = 0  # evaluations since the last improvement
        self._sampled: tuple[Any, list[dict[str, Any]]] | None = None
        self.sampled_last = False  # whether the last evaluation saw the sample only
        self.loaded_best = False  # the model holds the best evaluation's weights, no longer the trained ones

    @property
    def best_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir.path / "checkpoints" / "best" / "trained_weights.safetensors"

    @property
    def main(self) -> bool:
        return self.s.accelerator.is_main_process

    def _sample(self) -> tuple[Any, list[dict[str, Any]]] | None:
        """The fixed validation sample of ``prediction.eval_max_rows`` (None when evaluating every row)."""
        limit, data = self.s.cfg.prediction.eval_max_rows, self.s.data
        if not limit or limit >= len(data.validation) or len(data.validation_examples) != len(data.validation):
            return None
        if self._sampled is None:
            rng = np.random.default_rng(self.s.seed)
            rows = np.sort(rng.choice(len(data.validation), size=limit, replace=False))
            self._sampled = (data.validation.subset(rows), [data.validation_examples[i] for i in rows])
        return self._sampled

    def _evaluate(self, full: bool = True) -> EvalResult:
        """Evaluate on the main process (every row, or the fixed sample) and share the metrics with the others."""
        from accelerate.utils import broadcast_object_list

        result = None
        if self.main:
            sample = None if full else self._sample()
            split, examples = sample or (self.s.data.validation, self.s.data.validation_examples)
            result = self.s.problem.evaluate(self.s.model, split, examples)
        if self.s.accelerator.num_processes > 1:
            shared = [result.metrics if result else None]
            broadcast_object_list(shared)
            result = result or EvalResult(shared[0], [])
        assert result is not None
        return result

    def run(self, state: TrainState, phase: str) -> EvalResult:
        """Evaluate now; ``phase`` is "before" (the untouched backbone) or "during"."""
        full = phase == "before" or self._sample() is None
        rows = len(self.s.data.validation) if full else self.s.cfg.prediction.eval_max_rows
        self.console.print(f"evaluating ({phase} training) on {rows} rows ...")
        result = self._evaluate(full)
        self.sampled_last = phase != "before" and not full
        if phase == "before":
            self.before = result
            return result
        self.last, self.last_step = result, state.step
        if self.key not in result.metrics:
            # Raw-text data has nothing to generate, so no BLEU: the best checkpoint follows perplexity instead.
            self.key = "perplexity"
        if is_better(result.metrics.get(self.key), state.best_metric, self.key):
            state.best_metric = result.metrics[self.key]
            state.best_step = state.step
            state.best_metrics = dict(result.metrics)
            self.best = result
            self.stale = 0
            if self.keep_best and self.main:
                self._save_best()
        else:
            self.stale += 1
        return result

    def should_stop_early(self) -> bool:
        patience = self.s.cfg.training.early_stopping_patience
        return patience > 0 and self.stale >= patience

    def _save_best(self) -> None:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in trainable_state(self.s.model).items()}
        with atomic_path(self.best_path) as tmp:
            save_file(state, str(tmp))

    def finish(self, state: TrainState) -> EvalResult:
        """The evaluation of the model as it will be saved: the last one, or the best one when keeping the best."""
        if self.last_step != state.step:
            self.run(state, "during")
        if self.keep_best and self.best is not None and state.best_step != state.step and self.best_path.is_file():
            from safetensors.torch import load_file

            self.loaded_best = True
            self.s.model.load_state_dict(load_file(str(self.best_path)), strict=False)
            self.console.print(
                f"keeping the best checkpoint (step {state.best_step}, {self.key} {state.best_metric:.4g})"
            )
            self.last = self.best
            self.sampled_last = self.sampled_last or self._sample() is not None
        if self.sampled_last:
            # During training only the sample was evaluated: the final numbers cover every row.
            self.console.print(f"final evaluation on all {len(self.s.data.validation)} validation rows ...")
            self.last = self._evaluate(full=True)
            self.sampled_last = False
        assert self.last is not None
        self.final_best_step = state.best_step
        return self.last

    # ------------------------------------------------------------------ checkpoint state
    def to_state(self) -> dict[str, Any]:
        """What a checkpoint needs to continue evaluating as if never interrupted."""

        def pack(r: EvalResult | None) -> dict[str, Any] | None:
            return None if r is None else {"metrics": r.metrics, "rows": r.rows}

        return {
            "before": pack(self.before),
            "best": pack(self.best),
            "last": pack(self.last),
            "last_step": self.last_step,
            "stale": self.stale,
            "key": self.key,
        }

    def load_state(self, saved: dict[str, Any]) -> None:
        def unpack(d: dict[str, Any] | None) -> EvalResult | None:
            return None if d is None else EvalResult(d["metrics"], d["rows"])

        self.before, self.best, self.last = unpack(saved["before"]), unpack(saved["best"]), unpack(saved["last"])
        self.last_step, self.stale, self.key = saved["last_step"], saved["stale"], saved["key"]
        self.sampled_last = self.last is not None and self._sample() is not None

    # ------------------------------------------------------------------ results
    def metrics_summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        if self.before is not None:
            out["before"] = dict(self.before.metrics)
        if self.last is not None:
            out["after"] = dict(self.last.metrics)
        if self.best is not None:
            out["best"] = {**self.best.metrics, "step": self.final_best_step}
        return out

    def prediction_rows(self) -> list[dict[str, Any]]:
        """The final validation rows, with the base model's prediction and score beside them when evaluated."""
        assert self.last is not None
        rows = [dict(r) for r in self.last.rows]
        if self.before is not None:
            for row, old in zip(rows, self.before.rows):
                for key in ("prediction", "score", "confidence", "p_true", "margin"):
                    if key in old:
                        row[f"{key}_before"] = old[key]
        return rows

    def examples(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` validation rows as prompt / reference / before / after."""
        rows = self.prediction_rows()[:n]
        return [
            {
                "prompt": r["prompt"],
                "reference": r["reference"],
                "before": r.get("prediction_before"),
                "after": r["prediction"],
            }
            for r in rows
        ]
