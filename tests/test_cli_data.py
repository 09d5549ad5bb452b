"""`tunelab data check`, `tunelab data inspect` and the check that guards `tunelab train`."""

from __future__ import annotations

import json

from conftest import ASSETS, causal_config, classification_config
from test_cli import assert_one_line_error, run, write_config


def make(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_for(tmp_path, tiny_llama, data, **sections):
    cfg = causal_config(
        tiny_llama,
        data,
        tmp_path / "out",
        training={"max_steps": 1},
        prediction={"max_length_inference": 2},
        **sections,
    )
    return write_config(tmp_path / "c.yaml", cfg)


def test_data_check_stops_on_each_problem_with_one_line(tiny_llama, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    masked = make(tmp_path, "masked.jsonl", [{"question": f"q{i}", "answer": ""} for i in range(8)])
    config = config_for(
        tmp_path, tiny_llama, masked, dataset={"use_chat_template": False, "add_eos_token_to_answer": False}
    )
    assert_one_line_error(run("data", "check", config), "masked.jsonl", "nothing would be trained")

    long = make(tmp_path, "long.jsonl", [{"question": f"q{i}", "answer": "the lazy dog " * 20} for i in range(8)])
    config = config_for(tmp_path, tiny_llama, long, tokenizer={"max_length_answer": 8})
    assert_one_line_error(run("data", "check", config), "long.jsonl", "answers are cut", "max_length_answer")
    # the same check guards training; --no-check lets it through
    assert_one_line_error(run("train", config), "answers are cut")
    assert run("train", config, "--no-check").returncode == 0

    fine = make(tmp_path, "fine.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    config = config_for(
        tmp_path,
        tiny_llama,
        fine,
        dataset={"chat_template": str(ASSETS / "no_eos.jinja"), "add_eos_token_to_answer": False},
    )
    assert_one_line_error(run("data", "check", config), "fine.jsonl", "never learn to stop")

    one = tmp_path / "one.csv"
    one.write_text("text,label\n" + "".join(f"row {i},yes\n" for i in range(8)))
    config = write_config(tmp_path / "c2.yaml", classification_config(tiny_bert, one, tmp_path / "out"))
    assert_one_line_error(run("data", "check", config), "one.csv", "only one class")

    config = config_for(tmp_path, tiny_llama, fine)
    proc = run("data", "check", config)
    assert proc.returncode == 0 and "passed" in proc.stdout


def test_data_inspect_renders_rows_and_writes_a_histogram(tiny_llama, tmp_path):
    png = tmp_path / "lengths.png"
    proc = run(
        "data",
        "inspect",
        ASSETS / "formats" / "multiturn_messages.jsonl",
        "--rows",
        "1",
        "--histogram",
        png,
        "--set",
        f"llm_backbone={tiny_llama}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "format 'messages'" in proc.stdout and "row 1" in proc.stdout
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    proc = run(
        "data",
        "inspect",
        ASSETS / "formats" / "text.txt",
        "--text-mode",
        "file",
        "--histogram",
        png,
        "--set",
        f"llm_backbone={tiny_llama}",
    )
    assert proc.returncode == 0 and "1 rows, format 'text'" in proc.stdout
    assert_one_line_error(
        run("data", "inspect", tmp_path / "missing.csv", "--set", f"llm_backbone={tiny_llama}"),
        "missing.csv",
        "not found",
    )
