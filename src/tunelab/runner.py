"""The three-line ``Runner`` for notebooks, which also takes the calls of the Lamini course's ``BasicModelRunner``.

Example::

    r = tunelab.Runner("smollm2-135m-instruct")
    r.load_data_from_jsonlines("docs.jsonl", input_key="question", output_key="answer")
    r.train()
    r("How do I install tunelab?")

A keyword argument of the course's runner that tunelab cannot honour (``train(is_public=True)``, ``limit``, an API
key, ...) is answered with one ``UnsupportedArgument`` error naming what to do instead, never a ``TypeError``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunelab.api import evaluate_run
from tunelab.config import RunConfig, apply_overrides, load_config
from tunelab.errors import DataError, TunelabError
from tunelab.problem_spec import spec_of
from tunelab.rundir import write_rows
from tunelab.training.loop import RunResult
from tunelab.training.loop import train as _train


class UnsupportedArgument(TunelabError):
    """A keyword argument of another tool's runner (the Lamini course's) that tunelab does not take."""


# Keyword arguments the Lamini course's runners take and tunelab's Runner does not: what to do instead.
INSTEAD = {
    "is_public": "tunelab keeps runs local; share the run directory or export it (tunelab export RUN_DIR, then "
    "tunelab push to upload the export to the hub)",
    "limit": "to train on part of the rows, set dataset.data_sample (a share, or a row count): "
    "Runner(..., config={'dataset': {'data_sample': 500}})",
    "peft_args": "LoRA's settings are training.lora_r, lora_alpha, lora_dropout and lora_target_modules: "
    "train(training={'lora_r': 16})",
    "gpu_config": "tunelab trains on this machine; for several GPUs run 'tunelab train CONFIG --nproc N'",
    "api_key": "tunelab trains and answers on this machine: there is no API key",
    "api_url": "tunelab trains and answers on this machine: there is no API URL",
    "task_name": "name the run with Runner(..., experiment_name=NAME)",
    "id": "name the run with Runner(..., experiment_name=NAME)",
    "prompt_template": "set dataset.chat_template (a built-in name or a Jinja file): Runner(..., config={'dataset': "
    "{'chat_template': 'chatml'}})",
    "data_or_dataset_id": "load the rows first with load_data(rows) or load_data_from_jsonlines(path), then train()",
    "dataset_id": "load the rows first with load_data(rows) or load_data_from_jsonlines(path), then train()",
    "use_cached_model": "every train() makes a new run directory; a finished run answers with tunelab chat/serve",
    "local_cache_file": "answers are not cached; predict a whole file with 'tunelab predict RUN_DIR --input FILE'",
    "output_type": "Runner answers plain text",
    "max_tokens": "set prediction.max_length_inference: Runner(..., config={'prediction': "
    "{'max_length_inference': N}})",
    "max_new_tokens": "set prediction.max_length_inference: Runner(..., config={'prediction': "
    "{'max_length_inference': N}})",
    "system_prompt": "set it when making the Runner: Runner(..., system_prompt=TEXT)",
}


def _refuse(method: str, name: str, value: Any, accepted: str) -> UnsupportedArgument:
    hint = INSTEAD.get(name, f"{method}() takes {accepted}")
    return UnsupportedArgument(f"{method}() does not take {name}={value!r}", field=name, hint=hint)


def _adapter_for_peft(enable_peft: bool) -> str:
    """The course's ``enable_peft``: parameter-efficient (LoRA) or every weight."""
    return "lora" if enable_peft else "none"


class Runner:
    """Fine-tune and use a model in three lines; takes the calls of the Lamini course's ``BasicModelRunner`` too.

    Args:
        model_name: a built-in model name, local folder, .gguf file or hub id.
        problem_type: "causal_lm" or "classification".
        output_directory: where run directories go.
        experiment_name: the run's name; a timestamped one when None.
        config: more config data (sections as nested dicts), e.g. ``{"training": {"epochs": 2}}``.
        verbose: print progress while training.
        system_prompt: the system prompt of every conversation (``dataset.system_prompt``).
        enable_peft: train LoRA adapters (True) or every weight (False); default: ``training.adapter`` as configured.

    Raises:
        ConfigError: for a bad model name or config value.
        UnsupportedArgument: for another keyword argument, naming what to use instead.
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m-instruct",
        problem_type: str = "causal_lm",
        output_directory: str = "output",
        experiment_name: str | None = None,
        config: dict[str, Any] | None = None,
        verbose: bool = True,
        system_prompt: str | None = None,
        enable_peft: bool | None = None,
        **unsupported: Any,
    ):
        for name, value in unsupported.items():
            raise _refuse(
                "Runner",
                name,
                value,
                "model_name, problem_type, output_directory, experiment_name, "
                "config, verbose, system_prompt and enable_peft",
            )
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
        if system_prompt is not None:
            self.base.setdefault("dataset", {})["system_prompt"] = system_prompt
        if enable_peft is not None:
            self.base.setdefault("training", {})["adapter"] = _adapter_for_peft(enable_peft)
        self.verbose = verbose
        self._columns_set: list[str] = []
        self.result: RunResult | None = None
        self._loaded: Any = None
        load_config(base=self.base)  # fail now, not at train(), on a bad name or value

    @property
    def config(self) -> RunConfig:
        return load_config(base=self.base)

    def _dataset(self) -> dict[str, Any]:
        return self.base.setdefault("dataset", {})

    def _use_file(self, path: str | Path, keys: tuple[str, str] | None) -> None:
        dataset = self._dataset()
        dataset["train_dataframe"] = str(path)
        for field in self._columns_set:
            dataset.pop(field, None)  # an earlier load's columns (never ones given in config)
        self._columns_set = []
        if keys is None:
            return  # the configured columns, or those detected from the rows (alpaca, messages, ...)
        scored = spec_of(self.base["problem_type"]).labelled
        self._columns_set = ["prompt_column", "label_column" if scored else "answer_column"]
        dataset.update(dict(zip(self._columns_set, ([keys[0]], keys[1]))))

    def load_data_from_jsonlines(
        self,
        file_path: str | Path,
        verbose: bool = False,
        input_key: str | None = None,
        output_key: str | None = None,
    ) -> None:
        """Use a JSON-lines file as training data (a share is held out for validation).

        ``input_key``/``output_key`` name the prompt and answer fields; when both are left out, question/answer or
        input/output (the course's) are used when the rows have them, else the columns are detected from the rows.
        Loading again replaces the data.
        """
        if not Path(file_path).is_file():
            raise DataError("data file not found", file=str(file_path))
        first = _first_json_row(Path(file_path))
        self._use_file(file_path, _keys(first, input_key, output_key))
        if verbose:
            print(f"training data: {file_path}")

    def load_data_from_csv(
        self,
        file_path: str | Path,
        verbose: bool = False,
        input_key: str | None = None,
        output_key: str | None = None,
    ) -> None:
        """Use a CSV file as training data (columns as ``load_data_from_jsonlines`` picks them)."""
        import csv

        if not Path(file_path).is_file():
            raise DataError("data file not found", file=str(file_path))
        with open(file_path, encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
        self._use_file(file_path, _keys(dict.fromkeys(header, ""), input_key, output_key))
        if verbose:
            print(f"training data: {file_path}")

    def load_data(
        self,
        data: list[dict[str, Any]],
        verbose: bool = False,
        input_key: str | None = None,
        output_key: str | None = None,
    ) -> None:
        """Use in-memory rows (a list of dicts) as training data; they are written to the output directory."""
        if not isinstance(data, list) or not data:
            raise DataError("no rows given", hint="pass a list of dicts with input and output keys")
        if not all(isinstance(row, dict) for row in data):
            raise DataError("rows must be dicts", hint="pass a list of dicts with input and output keys")
        path = Path(self.base["output_directory"]) / f"{self.base['experiment_name']}-data.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_rows(path, data)
        self._use_file(path, _keys(data[0], input_key, output_key))
        if verbose:
            print(f"loaded {len(data)} rows into {path}")

    def load_data_from_dataframe(
        self, df: Any, verbose: bool = False, input_key: str | None = None, output_key: str | None = None
    ) -> None:
        """Use the rows of a pandas DataFrame as training data (columns as ``load_data_from_jsonlines`` picks)."""
        if not hasattr(df, "to_json") or not hasattr(df, "columns"):
            raise DataError(f"expected a pandas DataFrame, got {type(df).__name__}")
        rows = json.loads(df.to_json(orient="records", force_ascii=False))  # plain Python values, no numpy types
        self.load_data(rows, verbose, input_key, output_key)

    def train(
        self,
        overrides: list[str] | None = None,
        force: bool = False,
        verbose: bool | None = None,
        finetune_args: dict[str, Any] | None = None,
        is_public: bool = False,
        limit: int | None = None,
        enable_peft: bool | None = None,
        **sections: Any,
    ) -> RunResult:
        """Fine-tune; ``sections`` are config sections to change, e.g. ``training={"epochs": 3}``.

        The course's arguments: ``finetune_args`` are training settings (``{"max_steps": 100, "learning_rate":
        3e-4}``), ``enable_peft`` picks LoRA (True) or every weight (False), ``verbose`` prints progress;
        ``is_public=False`` and ``limit=None`` are what tunelab does anyway.

        Raises:
            UnsupportedArgument: for ``is_public=True``, a ``limit``, or another keyword, naming what to use instead.
        """
        from rich.console import Console

        from tunelab.config import SECTIONS

        accepted = "overrides, force, verbose, finetune_args, enable_peft and config sections (training={...})"
        if is_public:
            raise _refuse("train", "is_public", is_public, accepted)
        if limit is not None:
            raise _refuse("train", "limit", limit, accepted)
        for name, value in sections.items():
            if name not in SECTIONS or not isinstance(value, dict):
                raise _refuse("train", name, value, accepted)
        data = apply_overrides(json.loads(json.dumps(self.base)), overrides)
        for key, value in sections.items():
            data.setdefault(key, {}).update(value)
        if finetune_args:
            data.setdefault("training", {}).update(finetune_args)
        if enable_peft is not None:
            data.setdefault("training", {})["adapter"] = _adapter_for_peft(enable_peft)
        cfg = load_config(base=data)
        show = self.verbose if verbose is None else verbose
        self.result = _train(cfg, force=force, console=Console(soft_wrap=True) if show else None)
        self._loaded = None
        return self.result

    def _model(self) -> Any:
        if self._loaded is None:
            from tunelab.infer.model import load_base, load_run

            self._loaded = load_run(self.result.run_dir) if self.result else load_base(self.config)
        return self._loaded

    def __call__(self, prompt: str | list[str], **unsupported: Any) -> str | list[str]:
        """Answer a prompt (or a list) with the fine-tuned model — or the base model before ``train()``."""
        for name, value in unsupported.items():
            raise _refuse("Runner.__call__", name, value, "a prompt or a list of prompts")
        loaded = self._model()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not loaded.cfg.spec.generative:
            examples = [{"text": p} for p in prompts]
        else:
            examples = [{"messages": [{"role": "user", "content": p}]} for p in prompts]
        outputs = [o["prediction"] for o in loaded.problem.predict(loaded.model, examples)]
        return outputs[0] if isinstance(prompt, str) else outputs

    def evaluate(self, data: str | Path | None = None) -> dict[str, Any]:
        """Metrics of the trained model on its validation split, or on ``data``, and the answers.

        Returns:
            The metrics (``loss``, ...) and ``eval_results``: per row ``{"input", "reference", "outputs"}`` where
            ``outputs[0]`` is the trained model's answer and, on the validation split, ``outputs[1]`` the base
            model's from before training (the shape the course's table reads).
        """
        if self.result is None:
            raise TunelabError("nothing trained yet", hint="call train() first")
        metrics, path = evaluate_run(self.result.run_dir, data)
        before = {} if data is not None else _answers_before(Path(self.result.run_dir))
        cfg = self.config
        results = []
        for row in _read_csv(path):
            outputs = [{"model_name": str(self.result.run_dir), "output": row.get("prediction", "")}]
            if row.get("prompt") in before:
                outputs.append({"model_name": cfg.llm_backbone, "output": before[row["prompt"]]})
            results.append({"input": row.get("prompt", ""), "reference": row.get("reference", ""), "outputs": outputs})
        return {**metrics, "eval_results": results}


def _keys(first: dict[str, Any], input_key: str | None, output_key: str | None) -> tuple[str, str] | None:
    """The (prompt, answer) columns: as given, else question/answer or input/output when the rows have them, else
    None (detected from the rows)."""
    if input_key is not None or output_key is not None:
        return input_key or "question", output_key or "answer"
    for pair in (("question", "answer"), ("input", "output")):
        if all(key in first for key in pair) and "instruction" not in first:  # alpaca rows are detected whole
            return pair
    return None


def _first_json_row(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return {}  # the data check names the line
                return row if isinstance(row, dict) else {}
    return {}


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _answers_before(run_dir: Path) -> dict[str, str]:
    """The base model's validation answers recorded by the run (prompt -> answer), when it evaluated before training."""
    path = run_dir / "validation_predictions.csv"
    if not path.is_file():
        return {}
    rows = _read_csv(path)
    if not rows or "prediction_before" not in rows[0]:
        return {}
    return {row["prompt"]: row["prediction_before"] for row in rows}
