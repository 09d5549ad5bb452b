"""The tunelab command: bad input ends in one line and exit code 2; the commands work on a tiny run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import causal_config, classification_config

TUNELAB = str(Path(sys.executable).parent / "tunelab")


def run(*args, stdin=None, cwd=None):
    return subprocess.run([TUNELAB, *map(str, args)], capture_output=True, text=True, input=stdin, cwd=cwd, timeout=600)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tiny_cfg(tiny_llama, qa_jsonl, tmp_path):
    return causal_config(
        tiny_llama, qa_jsonl, tmp_path / "out", training={"max_steps": 2}, prediction={"max_length_inference": 4}
    )


# ------------------------------------------------------------------------------------------ bad input
def test_missing_column(tiny_cfg, tmp_path):
    # A column the user chose is never replaced by a detected one: it is an error naming row and field.
    tiny_cfg["dataset"]["prompt_column"] = ["query_text"]
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(run("train", config), "qa.jsonl", "line 1", "field 'query_text'", "not found")


def test_malformed_jsonl_line(tiny_cfg, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n')
    tiny_cfg["dataset"]["train_dataframe"] = str(data)
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(run("train", config), "broken.jsonl", "line 2", "not valid JSON")


def test_empty_file(tiny_cfg, tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text("")
    tiny_cfg["dataset"]["train_dataframe"] = str(data)
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(run("train", config), "empty.csv", "empty")


def test_wrong_value_type_in_a_row(tiny_cfg, tmp_path):
    data = tmp_path / "typed.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": ["x"]}\n')
    tiny_cfg["dataset"]["train_dataframe"] = str(data)
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(run("train", config), "typed.jsonl", "line 2", "field 'answer'", "expected text")


def test_unknown_config_key(tiny_cfg, tmp_path):
    tiny_cfg["training"]["learnig_rate"] = 0.1
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(
        run("train", config), "c.yaml", "training.learnig_rate", "did you mean 'training.learning_rate'"
    )


def test_wrong_config_type(tiny_cfg, tmp_path):
    tiny_cfg["training"]["batch_size"] = "four"
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(run("train", config), "c.yaml", "training.batch_size", "'four'")


def test_wrong_type_from_set_override(tiny_cfg, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(run("train", config, "--set", "training.epochs=many"), "training.epochs")


def test_missing_config_file(tmp_path):
    assert_one_line_error(run("train", tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_unknown_backbone_and_offline_hub_id(tiny_cfg, tmp_path):
    tiny_cfg["llm_backbone"] = "not a model"
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(run("train", config), "not a valid hub id", "llm_backbone")
    tiny_cfg["llm_backbone"] = "some-org/some-model"
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    assert_one_line_error(run("train", config), "some-org/some-model", "Hugging Face hub")


def test_single_class_label_column(tiny_bert, tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"row {i},yes\n" for i in range(10)))
    config = write_config(tmp_path / "c.yaml", classification_config(tiny_bert, data, tmp_path / "out"))
    assert_one_line_error(run("train", config), "one.csv", "only one class", "field 'label'")


def test_existing_run_is_refused(tiny_cfg, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    run_dir = Path(tiny_cfg["output_directory"]) / tiny_cfg["experiment_name"]
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("precious: true\n")
    assert_one_line_error(run("train", config), "already exists", "--force")
    assert (run_dir / "config.yaml").read_text() == "precious: true\n"


def test_predict_on_something_that_is_not_a_run(tmp_path):
    assert_one_line_error(
        run("predict", tmp_path, "--input", "x.csv", "--output", tmp_path / "o.csv"), "not a tunelab run directory"
    )


# ------------------------------------------------------------------------------------------ happy paths
def test_config_init_and_validate(tmp_path, qa_jsonl):
    out = tmp_path / "c.yaml"
    proc = run("config", "init", "--problem-type", "causal_lm", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "# Peak learning rate." in out.read_text()
    assert run("config", "init", "--output", out).returncode == 2  # no silent overwrite
    proc = run("config", "validate", out)
    assert_one_line_error(proc, "train_dataframe")
    proc = run("config", "validate", out, "--set", f"dataset.train_dataframe={qa_jsonl}")
    # The default columns (instruction/output) are not in a question/answer file: detection finds the right ones.
    assert proc.returncode == 0, proc.stderr
    assert "using prompt question, answer answer" in proc.stdout and "format 'columns'" in proc.stdout
    proc = run(
        "config",
        "validate",
        out,
        "--set",
        f"dataset.train_dataframe={qa_jsonl}",
        "--set",
        "dataset.prompt_column=question",
        "--set",
        "dataset.answer_column=answer",
    )
    assert proc.returncode == 0 and "40 training rows" in proc.stdout


def test_train_predict_eval_chat(tiny_cfg, tmp_path, qa_jsonl):
    config = write_config(tmp_path / "c.yaml", tiny_cfg)
    proc = run("train", config)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(tiny_cfg["output_directory"]) / tiny_cfg["experiment_name"]
    assert (run_dir / "metrics.json").is_file()
    assert "validation metrics" in proc.stdout

    out = tmp_path / "pred.jsonl"
    proc = run("predict", run_dir, "--input", qa_jsonl, "--output", out)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and all("prediction" in r and "question" in r for r in rows)
    assert_one_line_error(run("predict", run_dir, "--input", qa_jsonl, "--output", out), "already exists")

    proc = run("eval", run_dir, "--data", qa_jsonl)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((run_dir / "evaluations" / "qa.json").read_text())
    assert {"loss", "perplexity", "bleu"} <= set(saved["metrics"])

    proc = run("chat", run_dir, stdin="what is 1 and 2?\nand 3 and 4?\n/reset\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model>") == 2 and "conversation cleared" in proc.stdout

    script = "/params temperature=0.7 max_tokens=3\n/params top_p=7\n/params bogus=1\n/system be brief\n/nope\nhi\n"
    proc = run("chat", run_dir, stdin=script)
    assert proc.returncode == 0, proc.stderr
    assert "max_new_tokens=3 " in proc.stdout and "do_sample=true temperature=0.7 top_p=1.0 " in proc.stdout
    assert "'top_p': 7 is out of range" in proc.stdout  # out of range: refused, kept
    assert "unknown setting 'bogus=1'" in proc.stdout and "unknown command /nope" in proc.stdout
    assert "system prompt set" in proc.stdout and proc.stdout.count("model>") == 1


def test_chat_sends_the_system_prompt_and_the_whole_conversation(tiny_cfg, tmp_path, monkeypatch):
    from rich.console import Console

    import tunelab.infer.model as model_module
    from tunelab.infer.chat import chat_repl

    assert run("train", write_config(tmp_path / "c.yaml", tiny_cfg)).returncode == 0
    run_dir = Path(tiny_cfg["output_directory"]) / tiny_cfg["experiment_name"]
    seen: list[list[dict]] = []
    original = model_module.load_run

    def recording_load_run(*args, **kwargs):
        loaded = original(*args, **kwargs)
        render = loaded.problem.renderer.prompt_ids
        loaded.problem.renderer.prompt_ids = lambda messages: seen.append(list(messages)) or render(messages)
        return loaded

    monkeypatch.setattr(model_module, "load_run", recording_load_run)
    lines = iter(["/system you add numbers", "what is 1 and 2?", "and 3?", "/reset", "again?"])

    def read(_prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    with open(os.devnull, "w") as sink:
        chat_repl(run_dir, Console(file=sink), read=read)
    assert [m["role"] for m in seen[0]] == ["system", "user"] and seen[0][0]["content"] == "you add numbers"
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]
    assert [m["role"] for m in seen[2]] == ["system", "user"]  # /reset keeps the system prompt


def test_classification_predict_writes_labels_and_probabilities(tiny_bert, sentiment_csv, tmp_path):
    cfg = classification_config(tiny_bert, sentiment_csv, tmp_path / "out", training={"max_steps": 2})
    config = write_config(tmp_path / "c.yaml", cfg)
    assert run("train", config).returncode == 0
    out = tmp_path / "pred.csv"
    proc = run("predict", tmp_path / "out" / "cls", "--input", sentiment_csv, "--output", out)
    assert proc.returncode == 0, proc.stderr
    import csv

    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 60
    assert {"prediction", "confidence", "prob_negative", "prob_positive"} <= set(rows[0])
    assert all(r["prediction"] in ("negative", "positive") for r in rows)
