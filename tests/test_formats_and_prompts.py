"""Rendering rows into token ids and labels: columns, chat template, masking, truncation, EOS."""

from __future__ import annotations

import pytest

from tunelab.config import load_config
from tunelab.data.formats import classification_example, columns_example
from tunelab.data.prompts import IGNORE_INDEX, PromptRenderer
from tunelab.data.readers import Record
from tunelab.errors import DataError
from tunelab.models.load import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return load_tokenizer(str(tiny_tokenizer_dir))


def cfg(**dataset):
    tokenizer = dataset.pop("tokenizer", {})
    return load_config(
        base={"dataset": {"prompt_column": ["q"], "answer_column": "a", **dataset}, "tokenizer": tokenizer}
    )


def record(data, row=3):
    return Record(data, "f.csv", row=row)


def test_prompt_columns_are_joined_and_system_added():
    c = cfg(prompt_column=["q", "ctx"], system_column="sys")
    ex = columns_example(record({"q": "hi", "ctx": "there", "a": "yo", "sys": "be nice"}), c)
    assert ex["messages"] == [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi\nthere"},
        {"role": "assistant", "content": "yo"},
    ]


def test_numbers_become_text_and_bad_cells_name_row_and_field():
    c = cfg()
    assert [m["content"] for m in columns_example(record({"q": 12, "a": 3.5}), c)["messages"]] == ["12", "3.5"]
    with pytest.raises(DataError) as err:
        columns_example(record({"q": "x"}), c)
    assert err.value.row == 3 and err.value.field == "a" and "not found" in str(err.value)
    with pytest.raises(DataError, match="expected text, got a dict"):
        columns_example(record({"q": "x", "a": {"k": 1}}), c)
    with pytest.raises(DataError, match="null"):
        columns_example(record({"q": None, "a": "y"}), c)


def test_classification_labels_are_text():
    c = load_config(base={"problem_type": "classification", "dataset": {"prompt_column": ["t"]}})
    assert classification_example(record({"t": "good", "label": 1}), c) == {"text": "good", "label": "1"}
    with pytest.raises(DataError, match="label is empty"):
        classification_example(record({"t": "good", "label": " "}), c)


def test_chat_template_render_masks_prompt_and_ends_with_eos(tok):
    renderer = PromptRenderer(cfg(), tok)
    assert renderer.use_template
    messages = [{"role": "user", "content": "what is 2 and 2?"}, {"role": "assistant", "content": "4"}]
    r = renderer.render(messages)
    prompt_ids = renderer.prompt_ids(messages[:-1])
    assert r.input_ids[: len(prompt_ids)] == prompt_ids  # training starts from exactly the inference prompt
    assert r.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    answer = r.input_ids[len(prompt_ids) :]
    assert r.labels[len(prompt_ids) :] == answer
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(answer, skip_special_tokens=True) == "4"


def test_unmasked_prompt_trains_every_token(tok):
    r = PromptRenderer(cfg(mask_prompt_labels=False), tok).render(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    assert r.labels == r.input_ids


def test_plain_text_rendering_uses_h2o_fields(tok):
    c = cfg(
        use_chat_template=False, text_prompt_start="<q>", text_answer_separator="<a>", add_eos_token_to_prompt=False
    )
    renderer = PromptRenderer(c, tok)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert renderer.prompt_text(messages[:-1]) == "<q>hi<a>"
    assert renderer.segments(messages)[-1] == ("yo" + tok.eos_token, True)
    c2 = cfg(use_chat_template=False, add_eos_token_to_answer=False)
    assert PromptRenderer(c2, tok).segments(messages)[-1] == ("yo", True)


def test_truncation_cuts_prompt_left_and_answer_right(tok):
    c = cfg(
        tokenizer={"max_length_prompt": 6, "max_length_answer": 4, "max_length": 8},
        use_chat_template=False,
        add_eos_token_to_prompt=False,
    )
    renderer = PromptRenderer(c, tok)
    long_prompt = "the quick brown fox jumps over the lazy dog"
    long_answer = "paris is the capital of france and more"
    r = renderer.render([{"role": "user", "content": long_prompt}, {"role": "assistant", "content": long_answer}])
    full_prompt = tok(long_prompt)["input_ids"]
    full_answer = tok(long_answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert len(r.input_ids) == 8
    assert r.answer_truncated
    answer = r.input_ids[r.prompt_length :]
    assert answer == full_answer[: len(answer)]  # the answer keeps its start
    assert r.input_ids[: r.prompt_length] == full_prompt[-r.prompt_length :]  # the prompt keeps its end


def test_use_chat_template_true_without_template_is_an_error(tok):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tok.name_or_path)
    plain.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        PromptRenderer(cfg(use_chat_template=True), plain)
