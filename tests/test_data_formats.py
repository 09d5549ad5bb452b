"""Every format loads and renders to the same training example as plain prompt/answer columns."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import ASSETS, shared_file

from tunelab.config import load_config
from tunelab.data.formats import ExampleReader, detect_format, parse_hh_dialogue, split_shared_prefix
from tunelab.data.prompts import IGNORE_INDEX, PromptRenderer
from tunelab.data.readers import Record
from tunelab.errors import DataError
from tunelab.models.load import load_tokenizer

FORMATS = ASSETS / "formats"


def cfg(**dataset):
    problem = dataset.pop("problem_type", "causal_lm")
    return load_config(
        base={"problem_type": problem, "dataset": {"prompt_column": ["question"], "answer_column": "answer", **dataset}}
    )


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return load_tokenizer(str(tiny_tokenizer_dir))


def examples(path, c=None):
    reader = ExampleReader(c or cfg(), path)
    return [ex for _, ex in reader], reader.format


def rendered(tok, c, path):
    renderer = PromptRenderer(c, tok)
    exs, _ = examples(path, c)
    out = []
    for ex in exs:
        r = renderer.render(ex["messages"])
        out.append((r.input_ids, r.labels))
    return out


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("plain.jsonl", "columns"),
        ("plain.csv", "columns"),
        ("plain.tsv", "columns"),
        ("plain.json", "columns"),
        ("plain.jsonl.gz", "columns"),
        ("alpaca.json", "alpaca"),
        ("messages.jsonl", "messages"),
        ("sharegpt.json", "sharegpt"),
    ],
)
def test_single_turn_formats_render_like_plain_columns(tok, name, fmt):
    reference = rendered(tok, cfg(), FORMATS / "plain.jsonl")
    exs, detected = examples(FORMATS / name)
    assert detected == fmt
    assert rendered(tok, cfg(), FORMATS / name) == reference
    # ... with the chat template and without it
    plain = cfg(use_chat_template=False, text_answer_separator=" A: ")
    assert rendered(tok, plain, FORMATS / name) == rendered(tok, plain, FORMATS / "plain.jsonl")


def test_explicit_format_overrides_detection():
    exs, fmt = examples(
        FORMATS / "alpaca.json", cfg(format="columns", prompt_column=["instruction"], answer_column="output")
    )
    assert fmt == "columns" and exs[0]["messages"][-1]["content"] == "Paris is the capital of France."


def test_parquet_and_saved_dataset_folder(tmp_path, tok):
    import datasets

    rows = [json.loads(line) for line in (FORMATS / "plain.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "plain.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    reference = rendered(tok, cfg(), FORMATS / "plain.jsonl")
    assert rendered(tok, cfg(), tmp_path / "plain.parquet") == reference
    assert rendered(tok, cfg(), tmp_path / "saved") == reference


def test_several_files_and_globs(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.jsonl").write_text(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n")
    from_glob, _ = examples(str(tmp_path / "part*.jsonl"))
    from_list, _ = examples([str(tmp_path / "part0.jsonl"), str(tmp_path / "part2.jsonl")])
    assert [e["messages"][0]["content"] for e in from_glob] == ["q0", "q1", "q2"]
    assert [e["messages"][0]["content"] for e in from_list] == ["q0", "q2"]
    with pytest.raises(DataError, match="matches no files"):
        examples(str(tmp_path / "nothing*.jsonl"))


def test_multiturn_h2o_chain_equals_messages(tok):
    c = cfg(system_prompt="Be brief.")
    chained, fmt = examples(FORMATS / "h2o_multiturn.csv", c)
    assert fmt == "h2o_multiturn"
    assert [len(e["messages"]) for e in chained] == [3, 5, 7]  # system + 1, 2, 3 turns
    msgs, _ = examples(FORMATS / "multiturn_messages.jsonl", c)
    assert chained[-1] == msgs[0]
    history, fmt = examples(FORMATS / "alpaca_history.jsonl", c)
    assert fmt == "alpaca" and history[0] == msgs[0]


def test_train_on_all_answers_or_last_answer(tok):
    msgs, _ = examples(FORMATS / "multiturn_messages.jsonl")
    conversation = msgs[0]["messages"]
    every = PromptRenderer(cfg(train_on="all_answers"), tok).render(conversation)
    last = PromptRenderer(cfg(train_on="last_answer"), tok).render(conversation)
    assert every.input_ids == last.input_ids
    trained_every = [t for t, lab in zip(every.input_ids, every.labels) if lab != IGNORE_INDEX]
    trained_last = [t for t, lab in zip(last.input_ids, last.labels) if lab != IGNORE_INDEX]
    text_every = tok.decode(trained_every)
    assert all(part in text_every for part in ("Paris is the capital", "fine-tunes", "dog"))
    assert "Paris" not in tok.decode(trained_last) and "dog is lazy" in tok.decode(trained_last)
    assert trained_every.count(tok.eos_token_id) == 3  # each trained turn ends with EOS
    assert every.ends_with_eos


def test_text_format_for_continued_pretraining(tok):
    c = load_config(base={"dataset": {"format": "text"}})
    exs, fmt = examples(FORMATS / "text.txt", c)
    assert fmt == "text" and len(exs) == 3 and exs[0]["text"].startswith("What is the capital")
    renderer = PromptRenderer(c, tok)
    chunks = renderer.render_text(exs[0]["text"])
    assert chunks[0][-1] == tok.eos_token_id
    whole, _ = examples(FORMATS / "text.txt", load_config(base={"dataset": {"format": "text", "text_mode": "file"}}))
    assert len(whole) == 1 and whole[0]["text"].count("\n") == 3


def test_text_longer_than_max_length_is_chunked(tok):
    c = load_config(base={"dataset": {"format": "text"}, "tokenizer": {"max_length": 8}})
    chunks = PromptRenderer(c, tok).render_text("the quick brown fox jumps over the lazy dog " * 5)
    assert len(chunks) > 2 and all(len(ch) <= 8 for ch in chunks)


def test_classification_single_and_multi_label():
    c = cfg(problem_type="classification", prompt_column=["title", "body"])
    exs, fmt = examples(FORMATS / "classification.csv", c)
    # Two text columns are a sentence pair (encoded with the tokenizer's separator where it has one).
    assert fmt == "classification" and exs[0] == {"text": "title 0", "text_pair": "terrible movie", "label": "neg"}
    multi, _ = examples(FORMATS / "multilabel.jsonl", cfg(problem_type="classification", prompt_column=["text"]))
    assert [e["label"] for e in multi[:3]] == [["a"], ["b"], ["a", "b"]]
    delimited, _ = examples(
        FORMATS / "multilabel.csv", cfg(problem_type="classification", prompt_column=["text"], label_delimiter=";")
    )
    assert [e["label"] for e in delimited] == [e["label"] for e in multi]


@pytest.mark.parametrize("name", ["preference.jsonl", "preference_messages.jsonl", "preference_hh.jsonl"])
def test_preference_formats_agree(name):
    # Preference pairs are read by the format layer: the reward and dpo problem types train on the pairs, causal LM
    # fine-tuning on the chosen answers (the SFT step of RLHF).
    c = load_config(base={"problem_type": "dpo", "dataset": {"prompt_column": ["prompt"]}})
    reader = ExampleReader(c, FORMATS / name)
    exs = [ex for _, ex in reader]
    assert reader.format == "preference"
    question = {"role": "user", "content": "What is the capital of France?"}
    assert exs[0] == {"prompt": [question], "chosen": "Paris is the capital of France.", "rejected": "I don't know."}
    sft = ExampleReader(load_config(base={"dataset": {"prompt_column": ["prompt"]}}), FORMATS / name)
    first = next(iter(sft))[1]
    assert first == {"messages": [question, {"role": "assistant", "content": "Paris is the capital of France."}]}


def test_hh_shared_prefix_split_on_synthetic_dialogue():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: a good one"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: no"
    prefix, good, bad = split_shared_prefix(chosen, rejected)
    assert prefix.endswith("\n\nHuman: joke?\n\nAssistant:") and good == "a good one" and bad == "no"
    assert parse_hh_dialogue(prefix + " ") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "joke?"},
        {"role": "assistant", "content": ""},
    ]


def test_hh_rlhf_real_rows_split_at_the_last_assistant_turn():
    path = shared_file("hh_rlhf_harmless_test.jsonl.gz")
    c = load_config(base={"problem_type": "reward", "dataset": {"prompt_column": ["prompt"]}})
    reader = ExampleReader(c, path)
    checked = 0
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = [json.loads(next(fh)) for _ in range(200)]
    for (_, ex), row in zip(reader, raw):
        assert reader.format == "preference"
        prompt = ex["prompt"]
        assert prompt[-1]["role"] == "user"
        assert [m["role"] for m in prompt] == ["user", "assistant"] * (len(prompt) // 2) + ["user"]
        # chosen/rejected are exactly the last assistant turns, and the prompt is the shared prefix
        assert row["chosen"].rstrip().endswith(ex["chosen"]) and row["rejected"].rstrip().endswith(ex["rejected"])
        last_human = row["chosen"].rfind("\n\nHuman:")
        assert prompt[-1]["content"] in row["chosen"][last_human:]
        checked += 1
        if checked == 200:
            break
    assert checked == 200


@pytest.mark.parametrize(
    "record,why",
    [
        ({"messages": "hi"}, "non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "unknown role"),
        ({"conversations": [{"from": "human"}]}, "needs 'from' and 'value'"),
        ({"instruction": "x", "output": "y", "history": "nope"}, "history"),
    ],
)
def test_malformed_conversations_name_row_and_field(record, why):
    c = cfg()
    fmt = detect_format(Record(record, "f.jsonl", line=4), c)
    reader = ExampleReader(c, "unused")
    reader.format = fmt
    with pytest.raises(DataError) as err:
        reader.example(Record(record, "f.jsonl", line=4))
    assert why in str(err.value) and "f.jsonl, line 4" in str(err.value)


def test_h2o_chain_with_missing_parent(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("id,parent_id,question,answer\na,zz,q,r\n")
    with pytest.raises(DataError, match="parent id 'zz' does not exist"):
        examples(path)
