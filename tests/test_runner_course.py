"""The Runner takes the Lamini course's calls (BasicModelRunner): load_data*, train(is_public=...), evaluate()'s
eval_results and runner(prompt); a keyword it cannot honour is one clear error naming what to do instead."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import tunelab
from tunelab.errors import TunelabError
from tunelab.runner import UnsupportedArgument


def test_the_course_notebook_runs(tiny_llama, qa_jsonl, tmp_path):
    model = tunelab.Runner(
        str(tiny_llama),
        output_directory=str(tmp_path),
        verbose=False,
        config={"dataset": {"validation_size": 4}, "prediction": {"max_length_inference": 4}},
    )
    model.load_data_from_jsonlines(qa_jsonl, input_key="question", output_key="answer")
    result = model.train(is_public=False, finetune_args={"max_steps": 2, "learning_rate": 1e-2})
    assert json.loads((result.run_dir / "run.json").read_text())["steps"] == 2
    assert isinstance(model("what is 1 and 2?"), str)
    out = model.evaluate()
    assert out["loss"] == pytest.approx(result.metrics["after"]["loss"], rel=1e-5)
    # the course's table of trained vs base answers
    table = [
        {"question": e["input"], "trained model": e["outputs"][0]["output"], "Base Model": e["outputs"][1]["output"]}
        for e in out["eval_results"]
    ]
    assert len(table) == 4 and all(row["question"].startswith("what is") for row in table)


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda r: r.train(is_public=True), "tunelab keeps runs local; share the run directory or export it"),
        (lambda r: r.train(limit=100), "dataset.data_sample"),
        (lambda r: r.train(gpu_config={"gpus": 8}), "--nproc"),
        (lambda r: r.train(peft_args={"r": 8}), "training.lora_r"),
        (lambda r: r.train(training=3), "config sections"),
        (lambda r: r.train(bogus=1), "finetune_args"),
        (lambda r: r("hello", max_tokens=5), "prediction.max_length_inference"),
        (lambda r: r("hello", output_type={"answer": "str"}), "plain text"),
    ],
)
def test_unsupported_keywords_are_one_clear_error(call, needle, tmp_path):
    runner = tunelab.Runner("smollm2-135m-instruct", output_directory=str(tmp_path), verbose=False)
    with pytest.raises(UnsupportedArgument) as err:
        call(runner)
    assert isinstance(err.value, TunelabError) and needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs,needle", [({"api_key": "k"}, "no API key"), ({"task_name": "t"}, "experiment_name")])
def test_unsupported_runner_arguments(kwargs, needle):
    with pytest.raises(UnsupportedArgument, match=needle):
        tunelab.Runner("smollm2-135m-instruct", **kwargs)


def test_course_arguments_that_map_to_settings(tmp_path):
    runner = tunelab.Runner(
        "smollm2-135m-instruct", output_directory=str(tmp_path), system_prompt="Be brief.", enable_peft=False
    )
    assert runner.config.dataset.system_prompt == "Be brief." and runner.config.training.adapter == "none"


def test_data_with_the_course_default_keys(tmp_path, capsys):
    runner = tunelab.Runner("smollm2-135m-instruct", output_directory=str(tmp_path), verbose=False)
    rows = [{"input": f"question {i}", "output": f"answer {i}"} for i in range(6)]
    runner.load_data(rows, verbose=True)
    assert runner.config.dataset.prompt_column == ("input",) and runner.config.dataset.answer_column == "output"
    assert "loaded 6 rows" in capsys.readouterr().out
    runner.load_data_from_dataframe(pd.DataFrame({"q": ["a", "b"], "a": ["c", "d"], "n": [1, 2]}), False, "q", "a")
    assert runner.config.dataset.prompt_column == ("q",) and runner.config.dataset.answer_column == "a"
    csv_file = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(csv_file, index=False)
    runner.load_data_from_csv(csv_file)
    assert runner.config.dataset.train_dataframe == str(csv_file)
    assert runner.config.dataset.prompt_column == ("input",)
    with pytest.raises(TunelabError, match="DataFrame"):
        runner.load_data_from_dataframe(rows)
