"""The Python API: the three-line Runner and tunelab.train()."""

from __future__ import annotations

import pytest
from conftest import causal_config

import tunelab
from tunelab.errors import ConfigError, DataError, TunelabError


def test_runner_three_lines(tiny_llama, qa_jsonl, tmp_path):
    r = tunelab.Runner(
        str(tiny_llama),
        output_directory=str(tmp_path),
        verbose=False,
        config={
            "training": {"epochs": 2, "learning_rate": 1e-2},
            "dataset": {"validation_size": 4},
            "prediction": {"max_length_inference": 6},
        },
    )
    r.load_data_from_jsonlines(qa_jsonl, input_key="question", output_key="answer")
    result = r.train()
    assert result.metrics["after"]["loss"] < result.metrics["before"]["loss"]
    answer = r("what is 1 and 2?")
    assert isinstance(answer, str)
    assert len(r(["what is 1 and 2?", "what is 3 and 4?"])) == 2
    metrics = r.evaluate()
    assert metrics["loss"] == pytest.approx(result.metrics["after"]["loss"], rel=1e-5)


def test_runner_answers_with_the_base_model_before_training(tiny_llama, tmp_path):
    r = tunelab.Runner(
        str(tiny_llama),
        output_directory=str(tmp_path),
        verbose=False,
        config={"prediction": {"max_length_inference": 3}},
    )
    assert isinstance(r("hello"), str)
    with pytest.raises(TunelabError, match="train"):
        r.evaluate()


def test_runner_load_data_in_memory(tiny_llama, tmp_path):
    r = tunelab.Runner(str(tiny_llama), output_directory=str(tmp_path), verbose=False)
    r.load_data([{"q": f"question {i}", "a": f"answer {i}"} for i in range(8)], input_key="q", output_key="a")
    assert r.config.dataset.prompt_column == ("q",)
    with pytest.raises(DataError):
        r.load_data([])


def test_runner_rejects_bad_settings_at_once(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):
        tunelab.Runner("smollm2-135m-instruct", config={"training": {"learning_rate": -1}})
    with pytest.raises(DataError, match="not found"):
        tunelab.Runner("smollm2-135m-instruct").load_data_from_jsonlines(tmp_path / "none.jsonl")


def test_train_function_takes_a_dict_or_a_path(tiny_llama, qa_jsonl, tmp_path):
    import yaml

    data = causal_config(
        tiny_llama, qa_jsonl, tmp_path, training={"max_steps": 1}, prediction={"max_length_inference": 2}
    )
    result = tunelab.train(data)
    assert isinstance(result, tunelab.RunResult) and (result.run_dir / "metrics.json").is_file()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    again = tunelab.train(path, overrides=["experiment_name=second"])
    assert again.run_dir.name == "second"
