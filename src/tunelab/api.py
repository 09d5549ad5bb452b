"""The Python API: ``tunelab.train(config)`` and the three-line ``Runner`` for notebooks.

Example::

    r = tunelab.Runner("smollm2-135m-instruct")
    r.load_data_from_jsonlines("docs.jsonl", input_key="question", output_key="answer")
    r.train()
    r("How do I install tunelab?")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.config import CAUSAL_LM_PROBLEMS, RunConfig, apply_overrides, load_config
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


def evaluate_run(run_dir: str | Path, data: str | Path | None = None) -> tuple[dict[str, float], Path]:
    """Evaluate a finished run on its validation split or on ``data``; save metrics and predictions.

    Returns:
        (metrics, path of the predictions CSV).
    """
    from tunelab.data.pipeline import validation_data
    from tunelab.infer.model import load_run

    loaded = load_run(run_dir)
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
) -> int:
    """Predict for every row of ``input_file`` and write the rows with prediction columns to ``output_file``.

    Args:
        progress: called with (rows done, rows in all) after each chunk of rows.

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
    loaded = load_run(run_dir)
    records, examples = read_prompts(str(input_file), loaded.cfg)
    outputs: list[dict[str, Any]] = []
    chunk = PREDICT_CHUNK if loaded.cfg.problem_type in CAUSAL_LM_PROBLEMS else 16 * PREDICT_CHUNK
    for start in range(0, len(examples), chunk):
        # Whole chunks, each batched and sorted by length inside: bounded memory and a progress bar that moves.
        outputs.extend(loaded.problem.predict(loaded.model, examples[start : start + chunk]))
        if progress is not None:
            progress(len(outputs), len(examples))
    rows = [{**record.data, **out} for record, out in zip(records, outputs)]
    write_rows(output_file, rows)
    return len(rows)


PREDICT_CHUNK = 64  # rows generated between progress updates


class Runner:
    """Fine-tune and use a model in three lines.

    Args:
        model_name: a built-in model name, local folder, .gguf file or hub id.
        problem_type: "causal_lm" or "classification".
        output_directory: where run directories go.
        experiment_name: the run's name; a timestamped one when None.
        config: more config data (sections as nested dicts), e.g. ``{"training": {"epochs": 2}}``.
        verbose: print progress while training.
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m-instruct",
        problem_type: str = "causal_lm",
        output_directory: str = "output",
        experiment_name: str | None = None,
        config: dict[str, Any] | None = None,
        verbose: bool = True,
    ):
        self.base: dict[str, Any] = {
            "llm_backbone": model_name,
            "problem_type": problem_type,
            "output_directory": output_directory,
            "experiment_name": experiment_name or time.strftime("runner-%Y%m%d-%H%M%S"),
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict):
                self.base.setdefault(key, {}).update(value)
            else:
                self.base[key] = value
        self.verbose = verbose
        self.result: RunResult | None = None
        self._loaded: Any = None
        load_config(base=self.base)  # fail now, not at train(), on a bad name or value

    @property
    def config(self) -> RunConfig:
        return load_config(base=self.base)

    def _dataset(self) -> dict[str, Any]:
        return self.base.setdefault("dataset", {})

    def load_data_from_jsonlines(
        self, path: str | Path, input_key: str = "question", output_key: str = "answer"
    ) -> None:
        """Use a JSON-lines file as training data (a share is held out for validation)."""
        if not Path(path).is_file():
            raise DataError("data file not found", file=str(path))
        self._dataset().update(
            train_dataframe=str(path),
            prompt_column=[input_key],
            **(
                {"label_column": output_key}
                if self.base["problem_type"] in ("classification", "regression")
                else {"answer_column": output_key}
            ),
        )

    def load_data(self, rows: list[dict[str, Any]], input_key: str = "question", output_key: str = "answer") -> None:
        """Use in-memory rows (a list of dicts) as training data; they are written to the output directory."""
        if not rows:
            raise DataError("no rows given", hint="pass a list of dicts with input and output keys")
        path = Path(self.base["output_directory"]) / f"{self.base['experiment_name']}-data.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_rows(path, rows)
        self.load_data_from_jsonlines(path, input_key, output_key)

    def train(self, overrides: list[str] | None = None, force: bool = False, **sections: dict[str, Any]) -> RunResult:
        """Fine-tune; ``sections`` are config sections to change, e.g. ``training={"epochs": 3}``."""
        from rich.console import Console

        data = apply_overrides(json.loads(json.dumps(self.base)), overrides)
        for key, value in sections.items():
            data.setdefault(key, {}).update(value)
        cfg = load_config(base=data)
        self.result = _train(cfg, force=force, console=Console(soft_wrap=True) if self.verbose else None)
        self._loaded = None
        return self.result

    def _model(self) -> Any:
        if self._loaded is None:
            from tunelab.infer.model import load_base, load_run

            self._loaded = load_run(self.result.run_dir) if self.result else load_base(self.config)
        return self._loaded

    def __call__(self, prompt: str | list[str]) -> str | list[str]:
        """Answer a prompt (or a list) with the fine-tuned model — or the base model before ``train()``."""
        loaded = self._model()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if loaded.cfg.problem_type not in CAUSAL_LM_PROBLEMS:
            examples = [{"text": p} for p in prompts]
        else:
            examples = [{"messages": [{"role": "user", "content": p}]} for p in prompts]
        outputs = [o["prediction"] for o in loaded.problem.predict(loaded.model, examples)]
        return outputs[0] if isinstance(prompt, str) else outputs

    def evaluate(self, data: str | Path | None = None) -> dict[str, float]:
        """Metrics of the trained model on its validation split, or on ``data``."""
        if self.result is None:
            raise TunelabError("nothing trained yet", hint="call train() first")
        metrics, _ = evaluate_run(self.result.run_dir, data)
        return metrics
