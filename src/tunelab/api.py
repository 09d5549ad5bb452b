"""The Python API: ``tunelab.train(config)``, ``evaluate_run`` and ``predict_file``; the three-line ``Runner`` for
notebooks is in ``tunelab.runner``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, load_config
from tunelab.errors import DataError, TunelabError
from tunelab.io import write_json_atomic
from tunelab.rundir import write_rows
from tunelab.training.loop import RunResult
from tunelab.training.loop import train as _train


def _as_config(config: RunConfig | dict[str, Any] | str | Path, overrides: list[str] | None = None) -> RunConfig:
    if isinstance(config, RunConfig):
        return load_config(base=config.to_dict(), overrides=overrides)
    if isinstance(config, dict):
        return load_config(base=config, overrides=overrides)
    return load_config(config, overrides)


def train(
    config: RunConfig | dict[str, Any] | str | Path,
    overrides: list[str] | None = None,
    force: bool = False,
    console: Any = None,
) -> RunResult:
    """Train one run.

    Args:
        config: a ``RunConfig``, plain config data, or the path of a YAML file.
        overrides: ``section.field=value`` strings.
        force: replace an existing run directory of the same name.
        console: a rich console to print progress on (silent when None).

    Returns:
        The run's metrics (``before``/``after``/``best``) and its run directory.
    """
    return _train(_as_config(config, overrides), force=force, console=console)


def evaluate_run(
    run_dir: str | Path, data: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[dict[str, float], Path]:
    """Evaluate a finished run on its validation split or on ``data``; save metrics and predictions.

    ``overrides`` (``prediction.field=value``) change how it answers, for this evaluation only.

    Returns:
        (metrics, path of the predictions CSV).
    """
    from tunelab.data.pipeline import validation_data
    from tunelab.infer.model import load_run

    loaded = load_run(run_dir, overrides=overrides)
    split, examples = validation_data(loaded.cfg, loaded.problem, None if data is None else str(data))
    if len(split) == 0:
        raise DataError("no rows to evaluate", file=str(data) if data else None)
    result = loaded.problem.evaluate(loaded.model, split, examples)
    name = Path(data).stem if data is not None else "validation"
    out_dir = loaded.run.path / "evaluations"
    write_json_atomic(
        out_dir / f"{name}.json",
        {"data": str(data) if data else "validation split", "metrics": result.metrics, "time": time.time()},
    )
    out = write_rows(out_dir / f"{name}_predictions.csv", result.rows)
    return result.metrics, out


def predict_file(
    run_dir: str | Path,
    input_file: str | Path,
    output_file: str | Path,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    overrides: list[str] | None = None,
) -> int:
    """Predict for every row of ``input_file`` and write the rows with prediction columns to ``output_file``.

    Args:
        progress: called with (rows done, rows in all) after each chunk of rows.
        overrides: ``prediction.field=value`` changes to the run's generation settings, for this call only.

    Returns:
        The number of rows written.
    """
    from tunelab.data.pipeline import read_prompts
    from tunelab.infer.model import load_run

    output_file = Path(output_file)
    if output_file.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise TunelabError("output must be a .csv or .jsonl file", file=str(output_file))
    if output_file.exists() and not force:
        raise TunelabError("output file already exists", file=str(output_file), hint="pass --force to replace it")
    loaded = load_run(run_dir, overrides=overrides)
    records, examples = read_prompts(str(input_file), loaded.cfg)
    outputs: list[dict[str, Any]] = []
    chunk = PREDICT_CHUNK if loaded.cfg.spec.generative else 16 * PREDICT_CHUNK
    for start in range(0, len(examples), chunk):
        # Whole chunks, each batched and sorted by length inside: bounded memory and a progress bar that moves.
        outputs.extend(loaded.problem.predict(loaded.model, examples[start : start + chunk]))
        if progress is not None:
            progress(len(outputs), len(examples))
    rows = [{**record.data, **out} for record, out in zip(records, outputs)]
    write_rows(output_file, rows)
    return len(rows)


PREDICT_CHUNK = 64  # rows generated between progress updates
