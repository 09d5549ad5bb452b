"""tunelab serve: the official openai client against a real uvicorn server on tiny trained runs."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import torch
import uvicorn
from conftest import causal_config, classification_config

from tunelab.api import train
from tunelab.errors import RunDirError, TunelabError
from tunelab.infer.model import LoadedRun, load_run
from tunelab.infer.serve import bind_socket, build_server, check_bind, create_app, serve

KEY = "test-key-123"
QUESTION = [{"role": "user", "content": "what is 2 and 3?"}]


@dataclass
class Server:
    url: str
    reference: LoadedRun  # a second copy of the run: the test never touches the served model


@contextmanager
def running(server: uvicorn.Server, sock: socket.socket) -> Iterator[str]:
    """Run ``server`` in a background thread for the duration of the block."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    host, port = sock.getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def causal(tiny_llama, qa_jsonl, tmp_path_factory) -> Iterator[Server]:
    out = tmp_path_factory.mktemp("serve-runs")
    # No minimum answer length: the tests compare answers with the model's own greedy ones, which may end at once.
    prediction = {"max_length_inference": 8, "min_length_inference": 0}
    cfg = causal_config(tiny_llama, qa_jsonl, out, training={"max_steps": 2}, prediction=prediction)
    run_dir = train(cfg).run_dir
    app = create_app(load_run(run_dir, device="cpu"), batch_wait_ms=20)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    with running(server, bind_socket("127.0.0.1", 0)) as url:
        yield Server(url, load_run(run_dir, device="cpu"))
    assert app.state.worker.thread is None, "the worker thread stops with the server"


@pytest.fixture(scope="module")
def client(causal) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{causal.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def classifier(tiny_bert, sentiment_csv, tmp_path_factory) -> Iterator[Server]:
    """A classification run served the way ``serve`` does it, behind an API key."""
    out = tmp_path_factory.mktemp("serve-runs")
    run_dir = train(classification_config(tiny_bert, sentiment_csv, out, training={"max_steps": 6})).run_dir
    server, sock = build_server(run_dir, port=0, api_key=KEY, device="cpu", log_level="warning")
    with running(server, sock) as url:
        yield Server(url, load_run(run_dir, device="cpu"))


@dataclass
class Answer:
    text: str
    tokens: list[int]  # without the end-of-sequence token
    ended: bool  # the model ended it with an end-of-sequence token

    @property
    def generated(self) -> int:
        return len(self.tokens) + self.ended


def greedy(loaded: LoadedRun, ids: list[int], max_new_tokens: int) -> Answer:
    """What the model itself answers to one prompt alone, greedily."""
    tok = loaded.tokenizer
    config_eos = loaded.model.generation_config.eos_token_id
    eos = {tok.eos_token_id, *(config_eos if isinstance(config_eos, list) else [config_eos])} - {None}
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(eos),
        )
    new = out[0, len(ids) :].tolist()
    ended = next((i for i, t in enumerate(new) if t in eos), None)
    kept = new if ended is None else new[:ended]
    return Answer(tok.decode(kept, skip_special_tokens=True), kept, ended is not None)


# ------------------------------------------------------------------ causal
def test_models_lists_the_run(client):
    assert [m.id for m in client.models.list().data] == ["causal"]
    assert client.models.retrieve("causal").owned_by == "tunelab"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_completion_is_the_models_greedy_answer(causal, client):
    first = client.chat.completions.create(model="causal", messages=QUESTION, max_tokens=8, temperature=0)
    again = client.chat.completions.create(model="causal", messages=QUESTION, max_tokens=8)
    ids = causal.reference.problem.renderer.prompt_ids(QUESTION)
    expected = greedy(causal.reference, ids, 8)
    answer = first.choices[0]
    assert expected.text and answer.message.content == expected.text and answer.message.role == "assistant"
    assert again.choices[0].message.content == expected.text  # temperature defaults to the run's greedy decoding
    assert answer.finish_reason == ("stop" if expected.ended else "length")
    usage = first.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), expected.generated)
    assert usage.total_tokens == len(ids) + expected.generated


def test_completion_tokenises_the_raw_prompt_and_honours_limits(causal, client):
    prompt = "what is 4 and"
    ids = causal.reference.tokenizer(prompt)["input_ids"]
    expected = greedy(causal.reference, ids, 8)
    text = expected.text
    full = client.completions.create(model="causal", prompt=prompt, max_tokens=8, temperature=0)
    assert full.choices[0].text == text and full.usage.prompt_tokens == len(ids)
    assert len(expected.tokens) > 3 and len(text) >= 4, "the tiny model should say something before it ends"
    short = client.completions.create(model="causal", prompt=prompt, max_tokens=2, temperature=0)
    assert text.startswith(short.choices[0].text) and short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 2
    # A stop string across two tokens: its first part must not slip out before the second arrives.
    boundary = len(causal.reference.tokenizer.decode(expected.tokens[:2], skip_special_tokens=True))
    stop = text[boundary - 1 : boundary + 1]
    for stream in (False, True):
        cut = client.completions.create(
            model="causal", prompt=prompt, max_tokens=8, temperature=0, stop=[stop, "@@"], stream=stream
        )
        chunks = list(cut) if stream else [cut]
        assert "".join(c.choices[0].text for c in chunks) == text[: text.index(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_end_of_sequence_ends_an_answer(causal, client):
    """A prompt after which the model itself ends its answer (found with the reference copy)."""
    tokenizer = causal.reference.tokenizer
    candidates = [str(d) for d in range(10)] + list("%/+=?")
    answers = {p: greedy(causal.reference, tokenizer(p)["input_ids"], 6) for p in candidates}
    ending = [p for p, a in answers.items() if a.ended]
    assert ending, "the tiny model should end some answer within 6 tokens"
    for prompt in ending[:2]:
        served = client.completions.create(model="causal", prompt=prompt, max_tokens=6, temperature=0)
        assert served.choices[0].finish_reason == "stop" and served.choices[0].text == answers[prompt].text
        assert served.usage.completion_tokens == answers[prompt].generated


def test_streaming_chat_sends_the_same_text_token_by_token(client):
    plain = client.chat.completions.create(model="causal", messages=QUESTION, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(
        model="causal",
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == plain.choices[0].message.content != ""
    assert len(pieces) > 1, "a stream of several tokens arrives in several chunks"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage == plain.usage and not chunks[-1].choices
    assert {c.id for c in chunks} == {chunks[0].id}


def test_several_choices_streamed_and_not(client):
    plain = client.completions.create(model="causal", prompt="what is 7", max_tokens=6, n=2, temperature=0)
    assert [c.index for c in plain.choices] == [0, 1]
    assert plain.choices[0].text == plain.choices[1].text  # greedy: every choice is the same answer
    texts = {0: "", 1: ""}
    for chunk in client.completions.create(
        model="causal", prompt="what is 7", max_tokens=6, n=2, temperature=0, stream=True
    ):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == {0: plain.choices[0].text, 1: plain.choices[1].text}
    sampled = client.chat.completions.create(
        model="causal", messages=QUESTION, max_tokens=6, n=3, temperature=1.0, top_p=0.9
    )
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in sampled.choices)
    assert 3 <= sampled.usage.completion_tokens <= 18


class BatchLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.sizes: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"batch of (\d+) requests", record.getMessage())
        if found:
            self.sizes.append(int(found.group(1)))


def test_concurrent_requests_share_batches(causal):
    prompts = [f"{'so ' * (i % 5)}what is {i % 10} and {i // 10}?" for i in range(32)]
    expected = [greedy(causal.reference, causal.reference.tokenizer(p)["input_ids"], 5).text for p in prompts]

    async def ask_all() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=f"{causal.url}/v1", api_key="x", max_retries=0, timeout=60) as c:
            calls = [c.completions.create(model="causal", prompt=p, max_tokens=5, temperature=0) for p in prompts]
            return await asyncio.gather(*calls)

    logger, batches = logging.getLogger("tunelab.serve"), BatchLog()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(batches)
    try:
        answers = asyncio.run(ask_all())
    finally:
        logger.removeHandler(batches)
        logger.setLevel(level)
    assert sum(batches.sizes) == 32 and max(batches.sizes) > 1, batches.sizes
    # Left padding must not change an answer: each equals the model's own answer to that prompt alone.
    assert [a.choices[0].text for a in answers] == expected


def raw(url: str, path: str, body: Any, key: str | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(url + path, content=content, headers=headers, timeout=30)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "causal", "messages": QUESTION, "max_tokens": 4, **fields}


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [
        ("/v1/chat/completions", b'{"model": "causal", "messages": [', 400, None, "json_invalid"),
        ("/v1/chat/completions", b"[1, 2]", 400, None, None),
        ("/v1/chat/completions", {"model": "causal"}, 400, "messages", None),
        ("/v1/chat/completions", chat(messages=[]), 400, "messages", None),
        ("/v1/chat/completions", chat(messages=[{"role": "tool", "content": "x"}]), 400, "messages.0.role", None),
        ("/v1/chat/completions", chat(messages=[*QUESTION, {"role": "assistant", "content": "5"}]), 400, None, None),
        ("/v1/chat/completions", chat(max_tokens=0), 400, "max_tokens", None),
        ("/v1/chat/completions", chat(max_tokens=-3), 400, "max_tokens", None),
        ("/v1/chat/completions", chat(temperature=5), 400, "temperature", None),
        ("/v1/chat/completions", chat(n=0), 400, "n", None),
        ("/v1/chat/completions", chat(stop=""), 400, "stop", None),
        ("/v1/chat/completions", chat(logprobs=True), 400, "logprobs", None),
        ("/v1/chat/completions", chat(tools=[{"type": "function"}]), 400, "tools", None),
        ("/v1/chat/completions", chat(ignore_eos=True), 400, "ignore_eos", None),
        ("/v1/chat/completions", chat(presence_penalty=3), 400, "presence_penalty", None),
        ("/v1/chat/completions", chat(logit_bias={"x": 1}), 400, "logit_bias", None),
        ("/v1/chat/completions", chat(logit_bias={"99999": 1}), 400, "logit_bias", None),
        ("/v1/chat/completions", chat(stop_token_ids=[99999]), 400, "stop_token_ids", None),
        ("/v1/chat/completions", chat(response_format={"type": "json_schema"}), 400, "response_format", None),
        ("/v1/chat/completions", chat(response_format={"type": "yaml"}), 400, "response_format.type", None),
        ("/v1/chat/completions", chat(seed=-1), 400, "seed", None),
        ("/v1/chat/completions", chat(num_beams=0), 400, "num_beams", None),
        ("/v1/chat/completions", chat(model="gpt-4"), 404, "model", "model_not_found"),
        ("/v1/chat/completions", chat(max_tokens=100_000), 400, "messages", "context_length_exceeded"),
        (
            "/v1/chat/completions",
            chat(messages=[{"role": "user", "content": "seven " * 400}]),
            400,
            "messages",
            "context_length_exceeded",
        ),
        ("/v1/completions", {"model": "causal", "prompt": "ten " * 1000}, 400, "prompt", "context_length_exceeded"),
        ("/v1/completions", {"model": "causal", "prompt": []}, 400, "prompt", None),
        ("/v1/completions", {"model": "causal", "prompt": [1, 99999]}, 400, "prompt", None),
        ("/v1/completions", {"model": "causal", "prompt": 5}, 400, "prompt", None),
        ("/v1/classify", {"model": "causal", "input": "great"}, 400, None, "wrong_endpoint"),
        ("/v1/nowhere", {}, 404, None, "not_found"),
    ],
)
def test_bad_requests_get_openai_style_4xx(causal, path, body, status, param, code):
    response = raw(causal.url, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code), error


def test_errors_reach_the_openai_client_as_its_exceptions(client):
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="causal", prompt="ten " * 1000, max_tokens=4)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    assert httpx.get(f"{client.base_url}chat/completions", timeout=10).status_code == 405
    assert client.chat.completions.create(model="causal", messages=QUESTION, max_tokens=2).choices  # still serving


# ------------------------------------------------------------------ classification
def test_classify_returns_labels_and_probabilities(classifier):
    texts = ["great movie 3 great", "terrible movie 4 terrible", "great"]
    response = raw(classifier.url, "/v1/classify", {"model": "cls", "input": texts}, key=KEY)
    assert response.status_code == 200, response.text
    body = response.json()
    reference = classifier.reference.problem.predict(classifier.reference.model, [{"text": t} for t in texts])
    assert [item["index"] for item in body["data"]] == [0, 1, 2] and body["usage"]["prompt_tokens"] > 0
    for item, expected in zip(body["data"], reference):
        probabilities = item["probabilities"]
        assert set(probabilities) == {"negative", "positive"}
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert item["label"] == max(probabilities, key=probabilities.get) == expected["prediction"]
        assert probabilities["positive"] == pytest.approx(expected["prob_positive"], abs=1e-5)
    single = raw(classifier.url, "/v1/classify", {"input": "great"}, key=KEY).json()
    assert len(single["data"]) == 1


def test_api_key_is_required_and_accepted(classifier):
    missing = raw(classifier.url, "/v1/classify", {"input": "great"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert raw(classifier.url, "/v1/classify", {"input": "great"}, key="wrong").status_code == 401
    assert httpx.get(f"{classifier.url}/health", timeout=10).json()["status"] == "ok"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{classifier.url}/v1", api_key="wrong", max_retries=0).models.list()
    keyed = openai.OpenAI(base_url=f"{classifier.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    assert [m.id for m in keyed.models.list().data] == ["cls"]
    with pytest.raises(openai.BadRequestError, match="classify"):
        keyed.chat.completions.create(model="cls", messages=QUESTION)


# ------------------------------------------------------------------ binding
def test_public_host_needs_an_api_key(tmp_path):
    with pytest.raises(TunelabError, match="API key"):
        serve(tmp_path / "no-run", host="0.0.0.0")  # refused before the run is even read
    with pytest.raises(TunelabError, match="API key"):
        check_bind("192.168.1.5", None)
    for host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        check_bind(host, None)
    with pytest.raises(RunDirError):
        build_server(tmp_path / "no-run", host="0.0.0.0", port=0, api_key="k")  # the key lets it through
    with pytest.raises(TunelabError, match="max_batch_size"):
        build_server(tmp_path / "no-run", port=0, max_batch_size=0)
    with bind_socket("127.0.0.1", 0) as busy:
        busy.listen()
        with pytest.raises(TunelabError, match="cannot listen"):
            bind_socket("127.0.0.1", busy.getsockname()[1])


def test_regression_runs_serve_values(tiny_bert, tmp_path):
    data = tmp_path / "scores.csv"
    data.write_text(
        "text,score\n" + "".join(f"great movie {i},{30 + i % 3}\nbad movie {i},{10 - i % 3}\n" for i in range(10))
    )
    cfg = classification_config(
        tiny_bert,
        data,
        tmp_path / "out",
        problem_type="regression",
        dataset={"label_column": "score"},
        training={"max_steps": 2},
    )
    run_dir = train(cfg).run_dir
    server, sock = build_server(run_dir, port=0, device="cpu", log_level="warning")
    with running(server, sock) as url:
        got = raw(url, "/v1/classify", {"input": ["great movie", "bad movie"]})
        assert got.status_code == 200, got.text
        values = [item["value"] for item in got.json()["data"]]
        assert len(values) == 2 and all(isinstance(v, float) for v in values)
        refused = raw(url, "/v1/chat/completions", {"messages": QUESTION})
        assert refused.status_code == 400 and "/v1/classify" in refused.json()["error"]["message"]


def test_a_nan_temperature_is_called_not_finite(causal):
    body = json.dumps(chat()).encode()[:-1] + b', "temperature": NaN, "top_p": Infinity}'
    response = raw(causal.url, "/v1/chat/completions", body)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "temperature", error
    assert "finite number" in error["message"] and "2" not in error["message"], error
