"""tunelab serve honours every generation field of a request (OpenAI's and vLLM's extras), or refuses it by name:
each test sends a field and checks that the answer changes as the field specifies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from conftest import causal_config
from fastapi.testclient import TestClient

from tunelab.api import train
from tunelab.infer.model import LoadedRun, load_run
from tunelab.infer.serve import create_app

QUESTION = [{"role": "user", "content": "what is 2 and 3?"}]
TOKENS = 8
HOT = {"temperature": 2.0, "seed": 3}  # near-uniform sampling: answers differ from the greedy one


@pytest.fixture(scope="module")
def run_dir(tiny_llama, qa_jsonl, tmp_path_factory) -> Any:
    out = tmp_path_factory.mktemp("serve-settings")
    prediction = {"max_length_inference": TOKENS, "min_length_inference": 0}
    return train(causal_config(tiny_llama, qa_jsonl, out, training={"max_steps": 2}, prediction=prediction)).run_dir


@pytest.fixture(scope="module")
def reference(run_dir) -> LoadedRun:
    """A second copy of the run: the tests never touch the served model."""
    return load_run(run_dir, device="cpu")


def serving(loaded: LoadedRun) -> Iterator[TestClient]:
    with TestClient(create_app(loaded, batch_wait_ms=5), base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture(scope="module")
def client(run_dir) -> Iterator[TestClient]:
    yield from serving(load_run(run_dir, device="cpu"))


def ask(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"messages": QUESTION, "max_tokens": TOKENS, **fields}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def text(client: TestClient, **fields: Any) -> str:
    return ask(client, **fields)["choices"][0]["message"]["content"]


def prompt_ids(loaded: LoadedRun) -> list[int]:
    return loaded.problem.renderer.prompt_ids(QUESTION)


def eos_ids(loaded: LoadedRun) -> set[int]:
    config_eos = loaded.model.generation_config.eos_token_id
    return {loaded.tokenizer.eos_token_id, *(config_eos if isinstance(config_eos, list) else [config_eos])} - {None}


def generated(loaded: LoadedRun, **kwargs: Any) -> str:
    """What transformers' own ``generate`` answers with ``kwargs`` (greedy unless they say otherwise)."""
    ids = prompt_ids(loaded)
    settings = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "max_new_tokens": TOKENS}
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pad_token_id=loaded.tokenizer.pad_token_id,
            eos_token_id=sorted(eos_ids(loaded)),
            **{**settings, **kwargs},
        )
    new = out[0, len(ids) :].tolist()
    ended = next((i for i, t in enumerate(new) if t in eos_ids(loaded)), len(new))
    return loaded.tokenizer.decode(new[:ended], skip_special_tokens=True)


def penalised(loaded: LoadedRun, presence: float, frequency: float) -> str:
    """Greedy decoding with OpenAI's penalties written out: logit - frequency * count - presence * (count > 0),
    counting the tokens generated so far."""
    ids, new = prompt_ids(loaded), []
    with torch.inference_mode():
        for _ in range(TOKENS):
            logits = loaded.model(input_ids=torch.tensor([ids + new])).logits[0, -1].float()
            counts = torch.zeros_like(logits)
            for token in new:
                counts[token] += 1
            token = int((logits - frequency * counts - presence * (counts > 0).float()).argmax())
            if token in eos_ids(loaded):
                break
            new.append(token)
    return loaded.tokenizer.decode(new, skip_special_tokens=True)


# ------------------------------------------------------------------ sampling
def test_seed_makes_sampling_reproducible(client):
    first, again = text(client, **HOT), text(client, **HOT)
    other = text(client, temperature=2.0, seed=4)
    assert first == again and first != other
    # n choices of one seeded request differ from each other, and come back the same
    choices = [c["message"]["content"] for c in ask(client, n=3, **HOT)["choices"]]
    assert len(set(choices)) == 3 and choices == [c["message"]["content"] for c in ask(client, n=3, **HOT)["choices"]]


@pytest.mark.parametrize("field", [{"top_k": 1}, {"top_p": 1e-9}, {"min_p": 1.0}])
def test_top_k_top_p_and_min_p_narrow_sampling(client, reference, field):
    greedy = generated(reference)
    assert text(client, **HOT) != greedy  # hot sampling wanders off...
    assert text(client, **HOT, **field) == greedy  # ...unless only the most likely token is left


def test_temperature_zero_is_the_models_greedy_answer(client, reference):
    assert text(client, temperature=0, top_k=5, seed=9) == generated(reference) != ""


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ({"repetition_penalty": 3.0}, {"repetition_penalty": 3.0}),
        ({"no_repeat_ngram_size": 1}, {"no_repeat_ngram_size": 1}),
        ({"num_beams": 3}, {"num_beams": 3}),
    ],
)
def test_extra_fields_decode_as_transformers_does(client, reference, field, kwargs):
    assert text(client, temperature=0, **field) == generated(reference, **kwargs)


def test_no_repeat_ngram_size_changes_the_answer(client, reference):
    plain = reference.tokenizer(text(client, temperature=0), add_special_tokens=False)["input_ids"]
    assert len(set(plain)) < len(plain), "the tiny model repeats tokens, so forbidding that changes its answer"
    assert text(client, temperature=0, no_repeat_ngram_size=1) != text(client, temperature=0)


@pytest.mark.parametrize(("presence", "frequency"), [(2.0, 0.0), (0.0, 2.0), (-1.0, 1.5)])
def test_presence_and_frequency_penalties_follow_openai(client, reference, presence, frequency):
    answer = text(client, temperature=0, presence_penalty=presence, frequency_penalty=frequency)
    assert answer == penalised(reference, presence, frequency)
    if presence > 0 or frequency > 0:
        assert answer != generated(reference)


def test_logit_bias_forces_and_forbids_tokens(client, reference):
    tokenizer = reference.tokenizer
    token = tokenizer("seven", add_special_tokens=False)["input_ids"][0]
    forced = ask(client, temperature=0, logit_bias={str(token): 100})["choices"][0]
    assert forced["message"]["content"] == tokenizer.decode([token] * TOKENS)
    eos = tokenizer.eos_token_id
    ended = ask(client, temperature=0, logit_bias={str(eos): 100})
    assert ended["choices"][0]["message"]["content"] == "" and ended["choices"][0]["finish_reason"] == "stop"
    # min_tokens holds the end back for that many tokens
    held = ask(client, temperature=0, logit_bias={str(eos): 100}, min_tokens=3)
    assert held["usage"]["completion_tokens"] == 4 and held["choices"][0]["finish_reason"] == "stop"
    greedy = tokenizer(generated(reference), add_special_tokens=False)["input_ids"]
    assert text(client, temperature=0, logit_bias={str(greedy[0]): -100}) != generated(reference)


def test_stop_token_ids_end_the_answer_before_the_token(client, reference):
    plain = ask(client, temperature=0, max_tokens=6)
    tokenizer = reference.tokenizer
    ids = reference.problem.renderer.prompt_ids(QUESTION)
    with torch.inference_mode():
        out = reference.model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    tokens = out[0, len(ids) :].tolist()
    stop = tokens[2]
    first = tokens.index(stop)
    cut = ask(client, temperature=0, max_tokens=6, stop_token_ids=[stop])
    assert cut["choices"][0]["message"]["content"] == tokenizer.decode(tokens[:first])
    assert cut["choices"][0]["finish_reason"] == "stop" and cut["usage"]["completion_tokens"] == first + 1
    assert plain["choices"][0]["message"]["content"] != cut["choices"][0]["message"]["content"]


# ------------------------------------------------------------------ beam search and stop strings
def test_beam_search_streams_its_answer_once_without_stop_strings(client, reference):
    beams = generated(reference, num_beams=3)
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": QUESTION, "max_tokens": TOKENS, "num_beams": 3, "stream": True},
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("content") for e in events if e["choices"][0]["delta"].get("content")]
    assert pieces == [beams]
    stop = beams[2:4]
    assert stop in beams and stop not in text(client, num_beams=3, stop=[stop])  # (a stop also changes the search)


def test_the_runs_own_beams_and_minimum_length_are_served(run_dir, reference):
    loaded = load_run(run_dir, device="cpu")
    loaded.cfg.prediction.num_beams = 3
    loaded.cfg.prediction.min_length_inference = TOKENS  # every answer runs to max_tokens
    for client in serving(loaded):
        answer = ask(client, temperature=0)
        assert answer["choices"][0]["message"]["content"] == generated(reference, num_beams=3, min_new_tokens=TOKENS)
        assert answer["usage"]["completion_tokens"] == TOKENS


# ------------------------------------------------------------------ response_format
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("extra", [{}, {"num_beams": 2}, {"temperature": 1.5, "seed": 1, "n": 3}])
def test_json_schema_answers_validate_against_the_schema(client, extra):
    body = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}
    for choice in ask(client, max_tokens=40, response_format=body, **extra)["choices"]:
        value = json.loads(choice["message"]["content"])
        assert set(value) == {"answer", "sure"} and value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)
        assert choice["finish_reason"] == "stop"


def test_json_object_starts_an_object(client):
    assert not text(client, temperature=0).startswith("{")
    answer = ask(client, temperature=0, max_tokens=40, response_format={"type": "json_object"})["choices"][0]
    assert answer["message"]["content"].startswith("{")
    if answer["finish_reason"] == "stop":
        assert isinstance(json.loads(answer["message"]["content"]), dict)


def test_fields_that_only_identify_the_caller_change_nothing(client, reference):
    extra = {"user": "u1", "metadata": {"team": "a"}, "service_tier": "auto", "response_format": {"type": "text"}}
    assert text(client, temperature=0, **extra) == generated(reference)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
        ("best_of", 2),
        ("top_logprobs", 2),
        ("use_beam_search", True),
        ("min_p", 2),
        ("top_k", -2),
    ],
)
def test_what_is_not_honoured_is_refused_by_name(client, field, value):
    response = client.post("/v1/chat/completions", json={"messages": QUESTION, field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]


def test_the_studio_chat_takes_the_same_fields(run_dir, reference):
    import asyncio

    from tunelab.ui.chat import ChatModels, stream_answer
    from tunelab.ui.routes_infer import ChatRequest

    request = {"messages": QUESTION, "max_tokens": TOKENS, "num_beams": 3, "seed": 1, "top_k": 4}
    ChatRequest(run="x", **request)  # the route's own check lets them through

    async def chunks() -> list[str]:
        response = await stream_answer(models, str(run_dir), False, request)
        return [chunk async for chunk in response.body_iterator]

    models = ChatModels()
    try:
        events = [json.loads(c[6:]) for c in asyncio.run(chunks()) if c.startswith("data: {")]
    finally:
        models.close()
    pieces = [e["choices"][0]["delta"].get("content") for e in events if e["choices"][0]["delta"].get("content")]
    assert pieces == [generated(reference, num_beams=3)]
