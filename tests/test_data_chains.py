"""H2O LLM Studio's data options: parent-id chains (limit, skip/random parents), data_sample_choice, personalize and
add_eos_token_to_system."""

from __future__ import annotations

import csv

import pytest
from conftest import ASSETS

from tunelab.config import load_config
from tunelab.data.chains import ParentAugmenter, chain_key
from tunelab.data.formats import ExampleReader
from tunelab.data.personalize import personalize_example, personalize_text
from tunelab.data.pipeline import build_splits, validation_data
from tunelab.data.prompts import PromptRenderer
from tunelab.models.load import load_tokenizer
from tunelab.problems import build_problem


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(ASSETS / "tiny-tokenizer"))


@pytest.fixture
def distinct_qa(tmp_path):
    """40 different question/answer rows (no row repeats, so no training row is dropped as a validation copy)."""
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(f'{{"question": "what is {i} + 1?", "answer": "{i + 1}"}}\n' for i in range(40)))
    return path


@pytest.fixture
def conversations(tmp_path):
    """8 conversations of 3 turns each (c<k>t0 -> c<k>t1 -> c<k>t2), rows shuffled, plus one branch of c0."""
    rows = []
    for k in range(8):
        for t in range(3):
            rows.append((f"c{k}t{t}", f"c{k}t{t - 1}" if t else "", f"question {k} {t}", f"answer {k} {t}"))
    rows.append(("c0b", "c0t1", "branch question", "branch answer"))
    path = tmp_path / "chains.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "parent_id", "question", "answer"])
        writer.writerows(rows[::-1])
    return path


def config(path, dataset=None, **sections):
    data = {
        "dataset": {
            "train_dataframe": str(path),
            "format": "h2o_multiturn",
            "prompt_column": ["question"],
            "answer_column": "answer",
            "validation_size": 4,
            **(dataset or {}),
        },
        **sections,
    }
    return load_config(base=data)


def splits(cfg, tok):
    problem = build_problem(cfg, tok)
    return problem, build_splits(cfg, problem)


def user_turns(tok, split, i):
    return tok.decode(split.ids(i).tolist()).count("<|im_start|>user")


def test_chain_keys_ignore_empty_and_nan_and_match_numbers():
    assert chain_key(None) is None and chain_key("") is None and chain_key(float("nan")) is None
    assert chain_key(3.0) == chain_key(3) == "3" and chain_key(" a ") == "a"


def test_limit_chained_samples_keeps_whole_conversations_only(conversations, tok):
    every = [ex for _, ex in ExampleReader(config(conversations), conversations)]
    assert len(every) == 25 and sorted(len(ex["messages"]) for ex in every)[:3] == [2, 2, 2]
    _, full = splits(config(conversations), tok)
    assert full.info["train_rows"] + full.info["validation_rows"] == 25
    _, limited = splits(config(conversations, {"limit_chained_samples": True}), tok)
    # 9 ends: t2 of each conversation and c0's branch; each is the whole conversation
    assert limited.info["train_rows"] + limited.info["validation_rows"] == 9
    assert all(len(ex["messages"]) == 6 for ex in limited.validation_examples)
    assert all(user_turns(tok, limited.train, i) == 3 for i in range(len(limited.train)))


def test_skip_parent_applies_to_training_rows_only(conversations, tok):
    cfg = config(conversations, {"limit_chained_samples": True}, augmentation={"skip_parent_probability": 1.0})
    _, data = splits(cfg, tok)
    assert all(user_turns(tok, data.train, i) == 1 for i in range(len(data.train)))  # only the row's own turn
    assert all(len(ex["messages"]) == 6 for ex in data.validation_examples)  # validation stays whole
    problem = build_problem(cfg, tok)
    again, examples = validation_data(cfg, problem)  # re-evaluation sees the same whole conversations
    assert examples == data.validation_examples and len(again) == len(data.validation)


def test_random_parent_is_seeded_and_prepends_one_training_turn(conversations, tok):
    aug = {"random_parent_probability": 1.0}
    cfg = config(conversations, {"limit_chained_samples": True}, augmentation=aug)
    _, data = splits(cfg, tok)
    assert all(user_turns(tok, data.train, i) == 4 for i in range(len(data.train)))
    assert all(len(ex["messages"]) == 6 for ex in data.validation_examples)
    _, rebuilt = splits(cfg, tok)
    assert rebuilt.info["cached"] and (rebuilt.train.input_ids == data.train.input_ids).all()
    fresh = build_splits(cfg, build_problem(cfg, tok), use_cache=False)
    assert (fresh.train.input_ids == data.train.input_ids).all()  # same seed, same draws
    _, plain = splits(config(conversations, {"limit_chained_samples": True}), tok)
    assert plain.info["cached"] is False  # the augmentation is part of the cache key


def test_parent_augmenter_draws_per_parent(conversations):
    cfg = config(conversations, augmentation={"skip_parent_probability": 0.5, "random_parent_probability": 0.5})
    system = {"role": "system", "content": "s"}
    turns = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(6)]
    example = {"messages": [system, *(m for t in turns for m in t)]}
    pool = [[{"role": "user", "content": "pq"}, {"role": "assistant", "content": "pa"}]]
    lengths = set()
    for _ in range(50):
        out = ParentAugmenter(cfg, pool)(example)["messages"]
        assert out[0] == system and out[-2:] == turns[-1]  # system and own turn always stay
        lengths.add(len(out))
    assert len(lengths) == 1  # a new augmenter draws the same again (seeded)
    augmenter = ParentAugmenter(cfg, pool)
    shapes = {tuple(m["content"] for m in augmenter(example)["messages"]) for _ in range(200)}
    assert len(shapes) > 10 and any(s[1] == "pq" for s in shapes) and any(s[1] == "q0" for s in shapes)


def test_parent_options_refuse_unchained_formats(conversations):
    with pytest.raises(Exception, match="h2o_multiturn"):
        config(conversations, {"format": "columns"}, augmentation={"skip_parent_probability": 0.5})


def test_data_sample_choice_thins_the_chosen_splits(distinct_qa, tok):
    base = {"train_dataframe": str(distinct_qa), "prompt_column": ["question"], "answer_column": "answer"}
    base.update(validation_size=10, data_sample=0.5)

    def counts(choice):
        cfg = load_config(base={"dataset": {**base, "data_sample_choice": choice}})
        _, data = splits(cfg, tok)
        return data.info["train_rows"], data.info["validation_rows"]

    assert counts(["train"]) == (15, 10)
    assert counts(["validation"]) == (30, 5)  # held-out rows never train, sampled or not
    assert counts(["Train", "Validation"]) == (15, 5)  # H2O's spelling


def test_data_sample_choice_samples_a_custom_validation_file(distinct_qa, tmp_path, tok):
    val = tmp_path / "val.jsonl"
    val.write_text("".join(distinct_qa.read_text().splitlines(keepends=True)[:8]))
    dataset = {"train_dataframe": str(distinct_qa), "prompt_column": ["question"], "answer_column": "answer"}
    dataset.update(validation_strategy="custom", validation_dataframe=str(val), data_sample=0.5)
    cfg = load_config(base={"dataset": {**dataset, "data_sample_choice": ["validation"]}})
    problem, data = splits(cfg, tok)
    assert data.info["validation_rows"] == 4
    assert len(validation_data(cfg, problem)[0]) == 4


def test_personalize_renames_the_assistant_not_the_system(tmp_path, tok):
    assert personalize_text("I am Open Assistant by LAION.", "Tuna", "Lab") == "I am Tuna by Lab."
    assert personalize_text("Open Assitan here, LAION, Assistant", "Tuna", "Lab") == "Tuna here, Lab, Tuna"
    example = {"messages": [{"role": "system", "content": "Assistant"}, {"role": "user", "content": "Assistant?"}]}
    assert personalize_example(example, "T", "L")["messages"] == [
        {"role": "system", "content": "Assistant"},
        {"role": "user", "content": "T?"},
    ]
    data = tmp_path / "oasst.jsonl"
    line = '{{"q": "who are you {}?", "a": "I am OpenAssistant, trained by LAION."}}\n'
    data.write_text("".join(line.format(i) for i in range(3)))
    dataset = {"train_dataframe": str(data), "prompt_column": ["q"], "answer_column": "a", "validation_size": 1}
    dataset.update(personalize=True, chatbot_name="Tuna", chatbot_author="Lab", system_prompt="Assistant rules")
    _, out = splits(load_config(base={"dataset": dataset}), tok)
    messages = out.validation_examples[0]["messages"]
    assert messages[0]["content"] == "Assistant rules" and messages[-1]["content"] == "I am Tuna, trained by Lab."
    assert "Tuna" in tok.decode(out.train.ids(0).tolist())


def test_add_eos_token_to_system_ends_the_system_text(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    for flag, end in ((True, "Be brief." + tok.eos_token), (False, "Be brief.\n")):
        cfg = load_config(base={"dataset": {"use_chat_template": False, "add_eos_token_to_system": flag}})
        text = PromptRenderer(cfg, tok).prompt_text(messages)
        assert text.startswith(end) and text[len(end) :].startswith("hi")
