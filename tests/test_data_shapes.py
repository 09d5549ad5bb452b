"""Every dataset shape users bring (tests/assets/shapes, written from TRL's, LLaMA-Factory's, OpenAI's and Axolotl's
documented formats): detected from the rows, inspected with no config, and trained for 2 steps under every problem
type that can use it."""

from __future__ import annotations

import json

import pytest
from conftest import ASSETS

from tunelab.config import load_config
from tunelab.data.formats import ExampleReader, detect_source
from tunelab.errors import DataError

SHAPES = ASSETS / "shapes"
# file -> (detected format, the problem types that train on it)
EXPECTED = {
    "trl_language_modeling_standard.jsonl": ("text", ["causal_lm"]),
    "trl_language_modeling_conversational.jsonl": ("messages", ["causal_lm", "rl"]),
    "trl_prompt_only_standard.jsonl": ("prompt_only", ["rl"]),
    "trl_prompt_only_conversational.jsonl": ("prompt_only", ["rl"]),
    "trl_prompt_completion_standard.jsonl": ("columns", ["causal_lm", "rl"]),
    "trl_prompt_completion_conversational.jsonl": ("columns", ["causal_lm", "rl"]),
    "trl_preference_explicit_standard.jsonl": ("preference", ["causal_lm", "reward", "dpo", "kto", "rl"]),
    "trl_preference_explicit_conversational.jsonl": ("preference", ["causal_lm", "reward", "dpo", "kto", "rl"]),
    "trl_preference_implicit_standard.jsonl": ("preference", ["causal_lm", "reward", "dpo", "kto", "rl"]),
    "trl_preference_implicit_conversational.jsonl": ("preference", ["causal_lm", "reward", "dpo", "kto", "rl"]),
    "trl_unpaired_preference_standard.jsonl": ("unpaired_preference", ["kto"]),
    "trl_unpaired_preference_conversational.jsonl": ("unpaired_preference", ["kto"]),
    "trl_stepwise_supervision.jsonl": ("stepwise", ["rl"]),
    "llamafactory_alpaca.json": ("alpaca", ["causal_lm", "rl"]),
    "llamafactory_alpaca_preference.json": ("preference", ["causal_lm", "reward", "dpo", "kto", "rl"]),
    "llamafactory_sharegpt_tools.json": ("sharegpt", ["causal_lm", "rl"]),
    "llamafactory_sharegpt_preference.json": ("preference", ["causal_lm", "reward", "dpo", "kto", "rl"]),
    "llamafactory_messages.json": ("messages", ["causal_lm", "rl"]),
    "llamafactory_kto.json": ("unpaired_preference", ["kto"]),
    "llamafactory_raw.txt": ("text", ["causal_lm"]),
    "openai_chat.jsonl": ("messages", ["causal_lm", "rl"]),
    "axolotl_completion.jsonl": ("text", ["causal_lm"]),
    "axolotl_input_output.jsonl": ("input_output", ["causal_lm"]),
    "question_answer.jsonl": ("columns", ["causal_lm", "rl"]),
    "prompt_response.csv": ("columns", ["causal_lm", "rl"]),
    "instruction_response.jsonl": ("columns", ["causal_lm", "rl"]),
    "input_output.csv": ("columns", ["causal_lm", "rl"]),
    "query_response.jsonl": ("columns", ["causal_lm", "rl"]),
    "context_question_answer.jsonl": ("columns", ["causal_lm", "rl"]),
    "glue_sst2.tsv": ("classification", ["classification", "regression"]),
    "sentence_label.csv": ("classification", ["classification"]),
    "nli_pairs.tsv": ("classification", ["classification"]),
}


def test_every_fixture_is_listed():
    assert sorted(p.name for p in SHAPES.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shape_is_detected_with_no_config(name):
    detection = detect_source(str(SHAPES / name), load_config(base={}))
    fmt, problems = EXPECTED[name]
    assert (detection.format, detection.problem_types()) == (fmt, problems), detection.title


def read(name, **fields):
    cfg = load_config(base=fields)
    return [example for _, example in ExampleReader(cfg, str(SHAPES / name))], cfg


def test_prompt_answer_names_and_pairs_become_the_same_conversation():
    expected = [
        {"role": "user", "content": "What colour is item 1?"},
        {"role": "assistant", "content": "Item 1 is blue."},
    ]
    for name in (
        "question_answer.jsonl",
        "prompt_response.csv",
        "instruction_response.jsonl",
        "input_output.csv",
        "query_response.jsonl",
        "trl_prompt_completion_conversational.jsonl",
        "trl_language_modeling_conversational.jsonl",
    ):
        examples, _ = read(name)
        assert examples[1]["messages"] == expected, name
    context, cfg = read("context_question_answer.jsonl")
    assert context[1]["messages"][0]["content"] == "Item 1 is blue.\nWhat colour is item 1?"
    assert cfg.dataset.prompt_column == ("context", "question") and cfg.dataset.answer_column == "answer"


def test_preference_shapes_agree_on_the_pair():
    pairs = {}
    for name in (
        "trl_preference_explicit_standard.jsonl",
        "trl_preference_explicit_conversational.jsonl",
        "trl_preference_implicit_conversational.jsonl",
        "llamafactory_alpaca_preference.json",
        "llamafactory_sharegpt_preference.json",
    ):
        examples, _ = read(name, problem_type="dpo")
        pairs[name] = examples[3]
    expected = {
        "prompt": [{"role": "user", "content": "What colour is item 3?"}],
        "chosen": "Item 3 is black.",
        "rejected": "I do not know item 3.",
    }
    assert all(pair == expected for pair in pairs.values()), pairs
    implicit, _ = read("trl_preference_implicit_standard.jsonl", problem_type="reward")
    assert implicit[3] == expected  # the shared beginning of two plain texts is the prompt


def test_openai_chat_parts_weights_and_tools():
    examples, _ = read("openai_chat.jsonl")
    plain, tools = examples[0], examples[1]
    # weight 0: shown to the model, not learned; content parts joined.
    assert [m.get("train", True) for m in plain["messages"] if m["role"] == "assistant"] == [False, True]
    assert plain["messages"][-1]["content"] == "Item 0 is red." and "tools" not in plain
    call = tools["messages"][2]
    assert call["tool_calls"][0]["function"] == {"name": "lookup_colour", "arguments": {"item": 1}}
    assert tools["messages"][3] == {"role": "tool", "content": "blue"}
    assert tools["tools"][0]["function"]["name"] == "lookup_colour"


def test_sharegpt_function_call_and_observation_roles():
    examples, _ = read("llamafactory_sharegpt_tools.json")
    roles = [m["role"] for m in examples[1]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert examples[1]["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"item": 1}
    assert examples[1]["tools"][0]["function"]["name"] == "lookup_colour"


def test_tool_turns_are_trained_and_weight_zero_is_not(tiny_tokenizer_dir):
    from tunelab.data.prompts import IGNORE_INDEX, PromptRenderer
    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_tokenizer_dir))
    examples, cfg = read("openai_chat.jsonl", tokenizer={"max_length_prompt": 1024, "max_length": 1200})
    renderer = PromptRenderer(cfg, tok)
    for example, untrained_text in ((examples[0], "Let me think."), (examples[1], None)):
        rendered = renderer.render(example["messages"], example.get("tools"))
        trained = tok.decode([t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE_INDEX])
        assert "Item" in trained
        if untrained_text:
            assert untrained_text not in trained and untrained_text in tok.decode(rendered.input_ids)
        else:  # the tool call is an assistant turn, trained; the tool list is in the (untrained) prompt
            prompt = tok.decode([t for t, label in zip(rendered.input_ids, rendered.labels) if label == IGNORE_INDEX])
            assert "lookup_colour" in trained and "You can call these tools" in prompt


def test_classification_columns_are_found_in_either_order():
    glue, cfg = read("glue_sst2.tsv", problem_type="classification")
    assert glue[0] == {"text": "a great film number 0", "label": "1"} and cfg.dataset.prompt_column == ("sentence",)
    other, cfg = read("sentence_label.csv", problem_type="classification")
    assert other[1] == {"text": "a dull mess number 1", "label": "neg"} and cfg.dataset.label_column == "sentiment"
    pairs, cfg = read("nli_pairs.tsv", problem_type="classification")
    assert pairs[0]["text_pair"] == "Item 0 is square." and pairs[0]["label"] == "contradiction"


@pytest.mark.parametrize(
    "name,problem,why",
    [
        ("trl_prompt_only_standard.jsonl", "causal_lm", "it suits problem_type rl"),
        ("glue_sst2.tsv", "causal_lm", "it suits problem_type classification"),
        ("trl_unpaired_preference_standard.jsonl", "causal_lm", "it suits problem_type kto"),
        ("llamafactory_kto.json", "dpo", "it suits problem_type kto"),
        ("question_answer.jsonl", "dpo", "it suits problem_type causal_lm or rl"),
        ("trl_stepwise_supervision.jsonl", "reward", "it suits problem_type rl"),
    ],
)
def test_a_shape_the_problem_cannot_use_is_one_line(name, problem, why):
    with pytest.raises(DataError) as err:
        read(name, problem_type=problem)
    assert why in str(err.value) and "\n" not in str(err.value) and name in str(err.value)


def test_saved_dataset_dict_uses_its_validation_split(tmp_path):
    import datasets

    from tunelab.data.formats import resolve_data

    rows = [json.loads(line) for line in (SHAPES / "question_answer.jsonl").read_text().splitlines()]
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:9]), "validation": datasets.Dataset.from_list(rows[9:])}
    ).save_to_disk(str(folder))
    cfg = load_config(base={"dataset": {"train_dataframe": str(folder)}})
    notes = resolve_data(cfg)
    assert any("validating on 'validation'" in n for n in notes)
    assert cfg.dataset.validation_strategy == "custom" and cfg.dataset.validation_dataframe == f"{folder}@validation"
    assert len(read_source(cfg.dataset.train_dataframe, cfg)) == 9
    assert len(read_source(cfg.dataset.validation_dataframe, cfg)) == 3
    with pytest.raises(DataError, match="has no split 'nope'"):
        read_source(f"{folder}@nope", cfg)


def read_source(source, cfg):
    return [example for _, example in ExampleReader(cfg, source)]


TRAINED = [(name, problem) for name, (_, problems) in sorted(EXPECTED.items()) for problem in problems]


@pytest.mark.parametrize("name,problem", TRAINED)
def test_each_shape_trains_two_steps_under_each_problem_that_can_use_it(
    name, problem, tiny_llama, tiny_bert, tmp_path, monkeypatch
):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    scored = problem in ("classification", "regression")
    data = {
        "problem_type": problem,
        "llm_backbone": str(tiny_bert if scored else tiny_llama),
        "output_directory": str(tmp_path / "out"),
        "experiment_name": "shape",
        "dataset": {"train_dataframe": str(SHAPES / name), "validation_size": 2},  # no column names: detected
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "evaluate_before_training": False},
        "prediction": {"max_length_inference": 4},
        "environment": {"seed": 1},
    }
    if problem == "rl":
        data["rl"] = {"reward_function": "tunelab.rewards:length_reward", "num_generations": 2, "max_new_tokens": 4}
    result = train(load_config(base=data))
    info = json.loads((result.run_dir / "run.json").read_text())
    assert result.metrics["after"] and all(v == v for v in result.metrics["after"].values() if isinstance(v, float))
    assert info["train_rows"] == 10 and info["format"] == EXPECTED[name][0], info


@pytest.mark.parametrize(
    "name,needles",
    [
        (
            "llamafactory_sharegpt_preference.json",
            ["LLaMA-Factory sharegpt preference", "reward, dpo", "shown as problem_type dpo", "I do not know item 0."],
        ),
        (
            "glue_sst2.tsv",
            ["text sentence, label label", "labels: 0 6 (50%), 1 6 (50%)", "problem_type classification"],
        ),
        ("question_answer.jsonl", ["question -> answer", "dataset.answer_column", "format 'columns'"]),
        ("openai_chat.jsonl", ["OpenAI chat", "with tools", "format 'messages'", "Let me think."]),
        (
            "llamafactory_kto.json",
            ["can use it: kto", "shown as problem_type kto", "12 rows, format 'unpaired_preference'", "item 0."],
        ),
    ],
)
def test_data_inspect_needs_no_config(name, needles, tiny_llama, tmp_path):
    from test_cli import run

    # No config, no column names: only a small backbone instead of the default one, to keep the test fast.
    proc = run("data", "inspect", SHAPES / name, "--rows", "1", "--set", f"llm_backbone={tiny_llama}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for needle in needles:
        assert needle in proc.stdout, (needle, proc.stdout)
    assert not list(tmp_path.iterdir())  # nothing written unasked (no histogram without --histogram)


@pytest.mark.parametrize("spelling", ["NaN", "nan", "None", "null", "NA", ""])
def test_missing_label_spellings_are_missing_not_a_class(spelling, tmp_path):
    path = tmp_path / "labels.csv"
    rows = [f"good film {i},pos" if i % 2 else f"bad film {i},neg" for i in range(8)]
    rows[3] = f"odd film 3,{spelling}"
    rows[6] = f"odd film 6,{spelling}"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        read_source(str(path), load_config(base={"problem_type": "classification"}))
    assert "2 rows have no label" in str(err.value) and "rows 4, 7" in str(err.value)
    cfg = load_config(base={"problem_type": "classification", "dataset": {"drop_missing_labels": True}})
    reader = ExampleReader(cfg, str(path))
    examples = [example for _, example in reader]
    assert len(examples) == 6 and {e["label"] for e in examples} == {"pos", "neg"}
    assert "left out 2 rows without a label" in reader.notes[-1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_shape_is_inspected_with_no_config(name, tiny_llama):
    from rich.console import Console

    from tunelab.data_inspect import inspect_file

    console = Console(record=True, width=200)
    inspect_file(str(SHAPES / name), None, [f"llm_backbone={tiny_llama}"], 1, None, console)
    out = console.export_text()
    fmt, problems = EXPECTED[name]
    assert f"format: {fmt}:" in out and (", ".join(problems) if problems else "none yet") in out, out
    assert ("row 1" in out or "row 2" in out) if problems else "12 rows read" in out, out
