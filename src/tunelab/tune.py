"""Hyperparameter search: ``tunelab tune CONFIG --space SPACE.yaml --trials N`` with Optuna.

Each trial is a normal run (in the registry, with its own run directory); TPE proposes values and a median pruner
stops trials whose validation metric lags the median of earlier trials at the same step.

A search space maps dotted config fields to distributions::

    training.learning_rate: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}
    training.lora_r: {type: categorical, choices: [4, 8, 16]}
    training.epochs: {type: int, low: 1, high: 3}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config import LOWER_IS_BETTER, RunConfig, all_field_paths, apply_overrides, read_yaml, validate_config
from tunelab.errors import ConfigError


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a search space file.

    Raises:
        ConfigError: naming the bad entry.
    """
    data, _ = read_yaml(path)
    if not data:
        raise ConfigError("the search space is empty", file=str(path), hint="map config fields to distributions")
    valid = set(all_field_paths())
    for key, spec in data.items():
        if key not in valid:
            raise ConfigError(
                "not a config field", file=str(path), field=key, hint="use dotted names such as training.learning_rate"
            )
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise ConfigError("each entry needs type: float, int or categorical", file=str(path), field=key)
        needed = ("choices",) if spec["type"] == "categorical" else ("low", "high")
        missing = [n for n in needed if n not in spec]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)}", file=str(path), field=key)
    return data


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per field of the space, drawn by the trial."""
    values = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(
                key,
                int(spec["low"]),
                int(spec["high"]),
                step=int(spec.get("step", 1)),
                log=bool(spec.get("log", False)),
            )
        else:
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
    return values


def run_search(
    cfg: RunConfig, space: dict[str, dict[str, Any]], trials: int, console: Any, seed: int = 0
) -> list[dict[str, Any]]:
    """Run ``trials`` training runs chosen by TPE with median pruning.

    Returns:
        One summary per trial (number, state, parameters, value, run directory), best first.
    """
    import optuna

    from tunelab.training.loop import train

    class PrunedRun(optuna.TrialPruned):
        run_status = "stopped"  # the registry records a pruned trial as stopped

    key = cfg.best_metric()
    direction = "minimize" if key in LOWER_IS_BETTER else "maximize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    runs: dict[int, str] = {}

    def objective(trial: Any) -> float:
        values = suggest(trial, space)
        data = apply_overrides(cfg.to_dict(), [f"{k}={v}" for k, v in values.items()])
        data["experiment_name"] = f"{cfg.experiment_name}-trial{trial.number}"
        trial_cfg = validate_config(data)
        runs[trial.number] = str(trial_cfg.run_dir)
        console.print(
            f"trial {trial.number}: "
            + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        )

        def report(step: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[key], step)
            if trial.should_prune():
                raise PrunedRun(f"pruned at step {step} ({key} {metrics[key]:.4g})")

        result = train(trial_cfg, force=True, on_eval=report)
        value = result.metrics["after"][key]
        console.print(f"trial {trial.number}: {key} {value:.4g}")
        return value

    study.optimize(objective, n_trials=trials, catch=())
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "value": t.value,
                "last_reported": max(t.intermediate_values.items())[1] if t.intermediate_values else None,
                "run_dir": runs.get(t.number),
            }
        )
    complete = sorted(
        (r for r in rows if r["state"] == "complete"), key=lambda r: r["value"], reverse=direction == "maximize"
    )
    return complete + [r for r in rows if r["state"] != "complete"]
