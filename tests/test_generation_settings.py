"""One GenerationSettings for evaluation, predict and chat: the run's prediction section gives the defaults,
``--set prediction.X=...`` and chat's ``/params`` change them; seeds reproduce, beams work, stops never show."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import causal_config
from rich.console import Console

from tunelab.api import predict_file, train
from tunelab.config import PredictionConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.generation.constrain import PenaltyProcessor
from tunelab.generation.generate import generate_batched
from tunelab.generation.settings import GenerationSettings, generate_kwargs
from tunelab.infer.chat import apply_params, chat_repl
from tunelab.infer.model import load_run

TUNELAB = str(Path(sys.executable).with_name("tunelab"))
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


# Barely trained, the tiny random model answers greedily by repeating the prompt's last token (a newline, stripped
# away); forbidding repeats makes it answer with varied text to check stops and seeds on.
BARELY = {"max_steps": 1, "learning_rate": 1e-6}
VARIED = {"max_length_inference": 8, "min_length_inference": 0, "no_repeat_ngram_size": 1}


def cli(*args: Any, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TUNELAB, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tiny_llama, qa_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("settings-runs")
    return train(causal_config(tiny_llama, qa_jsonl, out, training=BARELY, prediction=VARIED)).run_dir


@pytest.fixture(scope="module")
def beam_run(tiny_llama, qa_jsonl, tmp_path_factory) -> Path:
    """A run whose own settings ask for beam search (its evaluation during training searched with beams too)."""
    out = tmp_path_factory.mktemp("beam-runs")
    prediction = {**VARIED, "num_beams": 2}
    return train(causal_config(tiny_llama, qa_jsonl, out, training=BARELY, prediction=prediction)).run_dir


# ------------------------------------------------------------------ the settings
def test_the_prediction_section_gives_every_default():
    prediction = PredictionConfig(
        max_length_inference=9,
        min_length_inference=3,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        min_p=0.05,
        num_beams=2,
        repetition_penalty=1.2,
        no_repeat_ngram_size=3,
        stop_tokens="###, END",
        seed=5,
        response_format="json_object",
    )
    settings = GenerationSettings.from_prediction(prediction)
    assert (settings.max_new_tokens, settings.min_new_tokens, settings.top_k, settings.min_p) == (9, 3, 20, 0.05)
    assert (settings.no_repeat_ngram_size, settings.num_beams, settings.seed) == (3, 2, 5)
    assert settings.stop == ("###", "END") and settings.response_format == "json_object"
    assert GenerationSettings.from_prediction(PredictionConfig()).seed is None  # -1: unseeded


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"num_beams": 0}, "num_beams"),
        ({"temperature": float("nan")}, "temperature"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logit_bias": {3: 101}}, "logit_bias"),
        ({"stop": ("",)}, "stop"),
        ({"seed": -3}, "seed"),
        ({"response_format": "{not json"}, "response_format"),
    ],
)
def test_a_value_out_of_range_is_one_line_naming_the_setting(changes, field):
    with pytest.raises(ConfigError) as caught:
        GenerationSettings().replace(**changes)
    assert caught.value.field == field and "\n" not in str(caught.value)


def test_transformers_gets_every_setting(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama)
    sampled = GenerationSettings(do_sample=True, top_k=20, min_p=0.1, no_repeat_ngram_size=2, stop_token_ids=(7,))
    kwargs = generate_kwargs(sampled, tokenizer, model, prompt_length=4)
    assert (kwargs["top_k"], kwargs["min_p"], kwargs["no_repeat_ngram_size"]) == (20, 0.1, 2)
    assert 7 in kwargs["eos_token_id"] and "logits_processor" not in kwargs
    greedy = generate_kwargs(GenerationSettings(top_k=20, presence_penalty=1), tokenizer, model, prompt_length=4)
    assert greedy["top_k"] is None and greedy["temperature"] is None and len(greedy["logits_processor"]) == 1


def test_penalties_count_only_generated_tokens():
    scores = torch.zeros(1, 6)
    ids = torch.tensor([[1, 1, 2, 2, 2, 3]])  # the prompt is [1, 1]; 2 came three times, 3 once
    out = PenaltyProcessor(2, presence=0.5, frequency=0.25, bias=((5, 4.0),))(ids, scores)
    assert out.tolist() == [[0.0, 0.0, -1.25, -0.75, 0.0, 4.0]]


# ------------------------------------------------------------------ predict and eval
def test_predict_with_a_seed_gives_identical_files(run_dir, qa_jsonl, tmp_path):
    sampled = ["--set", "prediction.do_sample=true", "--set", "prediction.temperature=1.5"]
    seeded = [*sampled, "--set", "prediction.top_k=20", "--set", "prediction.seed=1"]
    outputs = []
    for name, options in [("a", seeded), ("b", seeded), ("c", sampled)]:
        out = tmp_path / f"{name}.jsonl"
        proc = cli("predict", run_dir, "--input", qa_jsonl, "--output", out, *options)
        assert proc.returncode == 0, proc.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]
    greedy = tmp_path / "greedy.jsonl"
    assert cli("predict", run_dir, "--input", qa_jsonl, "--output", greedy).returncode == 0
    assert greedy.read_text() != outputs[0]  # the settings did change the answers


def test_only_prediction_settings_change_for_a_trained_run(run_dir, qa_jsonl, tmp_path):
    out = tmp_path / "p.jsonl"
    for option, needle in [("training.learning_rate=1", "only prediction settings"), ("prediction.top_k=-5", "top_k")]:
        proc = cli("predict", run_dir, "--input", qa_jsonl, "--output", out, "--set", option)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_eval_takes_generation_settings(run_dir, qa_jsonl):
    from tunelab.api import evaluate_run

    metrics, written = evaluate_run(run_dir, qa_jsonl)
    plain = written.read_text()
    proc = cli("eval", run_dir, "--data", qa_jsonl, "--set", "prediction.stop_tokens=a,e,i,o,u")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((Path(run_dir) / "evaluations" / "qa.json").read_text())["metrics"]
    assert saved["loss"] == pytest.approx(metrics["loss"]) and written.read_text() != plain
    assert not any(
        vowel in row["prediction"] for row in csv.DictReader(io.StringIO(written.read_text())) for vowel in "aeiou"
    )


def test_stop_strings_never_appear_in_predictions(run_dir, qa_jsonl, tmp_path):
    plain = [row["prediction"] for row in predict_rows(run_dir, qa_jsonl, tmp_path / "plain.jsonl")]
    stop = next(answer[3:5] for answer in plain if len(answer) > 6 and answer[3:5].strip())
    cut = predict_rows(run_dir, qa_jsonl, tmp_path / "cut.jsonl", [f"prediction.stop_tokens={stop}"])
    assert all(stop not in row["prediction"] for row in cut)
    assert [row["prediction"] for row in cut] != plain


def predict_rows(run_dir: Path, data: Path, out: Path, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    predict_file(run_dir, data, out, overrides=overrides)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_predict_answers_follow_a_json_schema(run_dir, qa_jsonl, tmp_path):
    schema = tmp_path / "verdict.json"
    schema.write_text(json.dumps(SCHEMA))
    # (no_repeat_ngram_size=0: JSON repeats its quotes)
    overrides = [f"prediction.response_format={schema}", "prediction.max_length_inference=40"]
    overrides.append("prediction.no_repeat_ngram_size=0")
    for row in predict_rows(run_dir, qa_jsonl, tmp_path / "json.jsonl", overrides):
        value = json.loads(row["prediction"])
        assert value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)


def test_beam_search_in_evaluation_and_predict(beam_run, qa_jsonl, tmp_path):
    loaded = load_run(beam_run, device="cpu")
    prompts = loaded.problem.prompt_ids([{"messages": [{"role": "user", "content": "what is 1 and 2?"}]}])
    beams = generate_batched(loaded.model, loaded.tokenizer, prompts, loaded.cfg.prediction, 0)
    greedy_settings = GenerationSettings.from_prediction(loaded.cfg.prediction, num_beams=1)
    greedy = generate_batched(loaded.model, loaded.tokenizer, prompts, greedy_settings, 0)
    assert beams != greedy  # the run's num_beams applies
    rows = predict_rows(beam_run, qa_jsonl, tmp_path / "beams.jsonl")
    assert len(rows) == 40


# ------------------------------------------------------------------ chat
def chat(run_dir: Path, lines: list[str]) -> tuple[str, list[list[dict[str, str]]]]:
    """Chat's printed output, and the conversation it sent with each answer."""
    import tunelab.infer.model as model_module

    seen: list[list[dict[str, str]]] = []
    original = model_module.load_run

    def recording(*args: Any, **kwargs: Any) -> Any:
        loaded = original(*args, **kwargs)
        render = loaded.problem.renderer.prompt_ids
        loaded.problem.renderer.prompt_ids = lambda messages: seen.append(list(messages)) or render(messages)
        return loaded

    turns = iter(lines)

    def read(_prompt: str) -> str:
        try:
            return next(turns)
        except StopIteration:
            raise EOFError from None

    sink = io.StringIO()
    model_module.load_run = recording
    try:
        chat_repl(run_dir, Console(file=sink, width=500), read=read)
    finally:
        model_module.load_run = original
    return sink.getvalue(), seen


def answers(output: str) -> list[str]:
    return [line.split("model> ", 1)[1] for line in output.splitlines() if "model> " in line]


def test_chat_searches_with_beams_and_prints_the_answer_once(beam_run):
    output, seen = chat(beam_run, ["what is 1 and 2?", "and 3?"])
    loaded = load_run(beam_run, device="cpu")
    prompt = loaded.problem.renderer.prompt_ids(seen[0])
    expected = generate_batched(loaded.model, loaded.tokenizer, [prompt], loaded.cfg.prediction, 0)
    assert answers(output)[0] == expected[0] and len(answers(output)) == 2
    assert seen[1][1] == {"role": "assistant", "content": expected[0]}


def test_chat_never_shows_or_keeps_a_stop_string(run_dir):
    output, _ = chat(run_dir, ["what is 1 and 2?"])
    plain = answers(output)[0]
    assert len(plain) > 6
    stop = plain[3:5]
    for beams in (1, 2):
        output, seen = chat(run_dir, [f"/params stop='{stop}' num_beams={beams}", "what is 1 and 2?", "and 3?"])
        shown = answers(output)[0]
        assert f"stop={stop} " in output and f"num_beams={beams} " in output  # the settings took
        assert stop not in shown and seen[1][1] == {"role": "assistant", "content": shown}
        if beams == 1:
            assert plain.startswith(shown) and len(shown) < len(plain)


def test_chat_params_show_and_set_every_setting():
    settings = GenerationSettings.from_prediction(PredictionConfig())
    changed = apply_params(
        settings,
        "max_tokens=5 min_new_tokens=1 temperature=0.9 top_p=0.8 top_k=7 min_p=0.1 num_beams=2 "
        "repetition_penalty=1.1 no_repeat_ngram_size=3 stop='a b,###' stop_token_ids=4,5 seed=3 "
        "presence_penalty=0.5 frequency_penalty=-0.5 logit_bias=9:-2 response_format=json_object",
    )
    shown = changed.describe()
    for part in ("max_new_tokens=5", "do_sample=true", "top_k=7", "min_p=0.1", "num_beams=2", "stop=a b,###"):
        assert part in shown
    assert changed.seed == 3 and changed.logit_bias == ((9, -2.0),) and changed.stop_token_ids == (4, 5)
    assert apply_params(changed, "temperature=0 seed=none").do_sample is False
    with pytest.raises(TunelabError, match="top_p"):
        apply_params(settings, "top_k=3 top_p=7")  # all or nothing
    with pytest.raises(TunelabError, match="unknown setting"):
        apply_params(settings, "bogus=1")
