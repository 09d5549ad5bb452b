"""LLM-as-judge against a scripted fake OpenAI-compatible server on 127.0.0.1: parsing, retries, limits, cache."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunelab.config import JudgeConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.evaluate import judge
from tunelab.evaluate.judge import JudgeResult, judge_answers, load_judge_template, parse_score, render_prompt

TEMPLATE = "Q={question} R={reference} A={answer}"
KEY_ENV = "TUNELAB_TEST_JUDGE_KEY"


@dataclass
class Reply:
    """What the fake judge sends back for one request."""

    content: str | None = "Score: 7"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def answer_of(prompt: str) -> str:
    """The answer a TEMPLATE prompt carries (the fake judge's scripts key on it)."""
    return prompt.rsplit("A=", 1)[-1]


class FakeJudge:
    """An OpenAI-style /v1/chat/completions endpoint whose replies a test scripts per (prompt, attempt number)."""

    def __init__(self) -> None:
        self.script: Callable[[str, int], Reply] = lambda prompt, attempt: Reply()
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.attempts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True  # a handler still sleeping past a client timeout must not block teardown
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def requests_for(self, answer: str) -> int:
        return sum(n for prompt, n in self.attempts.items() if answer_of(prompt) == answer)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with fake.lock:
                    fake.bodies.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.attempts[prompt] += 1
                    attempt = fake.attempts[prompt]
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    reply = fake.script(prompt, attempt)
                    time.sleep(reply.delay)
                finally:
                    with fake.lock:  # before answering, so the client cannot start its next request first
                        fake.in_flight -= 1
                if self.path != "/v1/chat/completions":
                    reply = Reply(status=404, content=None)
                payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content}}]}
                data = json.dumps(payload if reply.status == 200 else {"error": {"message": "scripted"}}).encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        return Handler

    @property
    def total(self) -> int:
        return sum(self.attempts.values())


@pytest.fixture
def fake() -> FakeJudge:
    server = FakeJudge()
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(judge, "BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(judge, "BACKOFF_CAP_S", 0.05)
    monkeypatch.delenv(KEY_ENV, raising=False)


def make_cfg(fake: FakeJudge | None = None, **overrides: object) -> JudgeConfig:
    values = {
        "base_url": fake.url if fake else "http://127.0.0.1:9/v1",
        "model": "fake-judge",
        "api_key_env": KEY_ENV,
        "prompt_template": TEMPLATE,
        "cache": False,
        "timeout": 5.0,
    }
    return JudgeConfig(**{**values, **overrides})


def run(cfg: JudgeConfig, answers: list[str], **kwargs: object) -> JudgeResult:
    return judge_answers(cfg, [f"q{i}" for i in range(len(answers))], ["ref"] * len(answers), answers, **kwargs)


def by_answer(replies: dict[str, Reply]) -> Callable[[str, int], Reply]:
    return lambda prompt, attempt: replies[answer_of(prompt)]


# --- parsing ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Score: 7", 0.7),
        ("score = 7/10", 0.7),
        ("7/10", 0.7),
        ("Overall 7/10.", 0.7),
        ("**8**", 0.8),
        ("**Score:** 8", 0.8),
        ("Rating: 9 out of 10", 0.9),
        ("Score: 7.5", 0.75),
        ("Score: 10.", 1.0),
        ("Score: 1", 0.1),
        ("8", 0.8),
        ("The answer matches the reference.\n\n6", 0.6),
        ("Score: 3\nOn reflection it is right after all.\nScore: 9", 0.9),  # the last explicit score decides
        ("Using a score of 1 to 10, I give it 8/10", 0.8),  # restating the scale is no verdict
        ("<think>Score: 2 maybe</think>\nScore: 8", 0.8),
        ("PASS", 1.0),
        ("FAIL", 0.0),
        ("pass", 1.0),
        ("fail", 0.0),
        ("**PASS** - it matches", 1.0),
        ("Verdict: FAIL", 0.0),
        ("Yes", 1.0),
        ("No.", 0.0),
        ("yes, the answer is correct", 1.0),
        ("Score: 11", None),
        ("Score: 0", None),
        ("15/10", None),
        ("Score: 4/5", None),  # another scale: not guessed
        ("I cannot judge this.", None),
        ("Failed to parse the question", None),
        ("No doubt about it", None),
        ("Yesterday it rained", None),
        ("", None),
    ],
)
def test_parse_score(reply: str, expected: float | None) -> None:
    assert parse_score(reply) == (None if expected is None else pytest.approx(expected))


# --- prompts ---------------------------------------------------------------------------------------------------------


def test_default_template_and_request_body(fake: FakeJudge, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sekret")
    result = judge_answers(make_cfg(fake, prompt_template="", max_tokens=33), ["What is 2+2?"], ["4"], ["four"])
    assert result.scores == [pytest.approx(0.7)]
    body = fake.bodies[0]
    assert body["model"] == "fake-judge" and body["temperature"] == 0 and body["max_tokens"] == 33
    prompt = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user"
    assert "What is 2+2?" in prompt and "four" in prompt and "\n4\n" in prompt
    assert prompt.rstrip().endswith("Score: N")
    assert fake.headers[0]["Authorization"] == "Bearer sekret"


def test_no_authorization_header_without_key(fake: FakeJudge) -> None:
    run(make_cfg(fake), ["a"])
    assert "Authorization" not in fake.headers[0]


def test_template_from_txt_file(fake: FakeJudge, tmp_path: Path) -> None:
    path = tmp_path / "judge.txt"
    path.write_text('Grade {answer} for {question}; reply as JSON {"score": N} or {{literal}}\n', encoding="utf-8")
    judge_answers(make_cfg(fake, prompt_template=str(path)), ["q"], ["r"], ["ans"])
    assert fake.bodies[0]["messages"][0]["content"] == 'Grade ans for q; reply as JSON {"score": N} or {literal}\n'


def test_render_prompt_is_one_pass() -> None:
    # An answer that mentions a placeholder must not receive the reference.
    assert render_prompt(TEMPLATE, "q", "SECRET", "see {reference}") == "Q=q R=SECRET A=see {reference}"


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("Is {question} answered by {anwser}?", ["{anwser}", "unknown"]),
        ("Question {question}, reference {reference}", ["{answer}"]),
        ("Answer: {{answer}}", ["{answer}", "single braces"]),
    ],
)
def test_bad_template_is_a_config_error(template: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_judge_template(make_cfg(prompt_template=template))
    assert info.value.field == "judge.prompt_template" and info.value.hint
    for word in words:
        assert word in str(info.value)


def test_missing_template_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        load_judge_template(make_cfg(prompt_template=str(tmp_path / "nope.txt")))
    assert info.value.field == "judge.prompt_template"


@pytest.mark.parametrize("url", ["", "localhost:8000/v1", "ftp://host/v1", "http://"])
def test_bad_endpoint_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        run(make_cfg(base_url=url), ["a"])
    assert info.value.field == "judge.base_url" and info.value.hint


# --- scoring and failures --------------------------------------------------------------------------------------------


def test_scores_unparsable_and_metrics(fake: FakeJudge) -> None:
    fake.script = by_answer({"a": Reply("Score: 8"), "b": Reply("Score: 6"), "c": Reply("I like it")})
    seen: list[int] = []
    result = run(make_cfg(fake), ["a", "b", "c"], progress=seen.append)
    assert result.scores == [pytest.approx(0.8), pytest.approx(0.6), None]
    assert result.replies == ["Score: 8", "Score: 6", "I like it"]
    assert result.mean == pytest.approx(0.7) and result.unparsable == 1 and result.failed == 0
    assert result.metrics() == {"judge": pytest.approx(0.7), "judge_unparsable": 1, "judge_failed": 0}
    assert sum(seen) == 3


def test_nothing_parsable_gives_nan(fake: FakeJudge) -> None:
    fake.script = lambda prompt, attempt: Reply("no opinion")
    result = run(make_cfg(fake), ["a", "b"])
    assert math.isnan(result.mean) and result.unparsable == 2 and result.failed == 0


def test_empty_input_sends_nothing(fake: FakeJudge) -> None:
    result = run(make_cfg(fake), [])
    assert result.scores == [] and math.isnan(result.mean) and fake.total == 0


def test_duplicate_rows_are_asked_once(fake: FakeJudge) -> None:
    result = judge_answers(make_cfg(fake), ["q", "q", "q"], ["r", "r", "r"], ["same", "same", "other"])
    assert fake.total == 2 and result.scores == [pytest.approx(0.7)] * 3


def test_5xx_is_retried_until_success(fake: FakeJudge) -> None:
    fake.script = lambda prompt, attempt: Reply(status=500) if attempt <= 2 else Reply("Score: 9")
    result = run(make_cfg(fake, max_retries=3), ["a"])
    assert fake.total == 3 and result.scores == [pytest.approx(0.9)] and result.failed == 0


def test_request_failing_every_retry_is_counted_and_evaluation_goes_on(fake: FakeJudge) -> None:
    fake.script = by_answer({"bad": Reply(status=503), "good": Reply("Score: 7")})
    result = run(make_cfg(fake, max_retries=2), ["bad", "good"])
    assert fake.requests_for("bad") == 3 and fake.requests_for("good") == 1
    assert result.scores == [None, pytest.approx(0.7)] and result.replies == [None, "Score: 7"]
    assert result.failed == 1 and result.unparsable == 0 and result.mean == pytest.approx(0.7)


def test_4xx_is_not_retried(fake: FakeJudge) -> None:
    fake.script = by_answer({"bad": Reply(status=400), "good": Reply("Score: 5")})
    result = run(make_cfg(fake, max_retries=3), ["bad", "good"])
    assert fake.requests_for("bad") == 1 and result.failed == 1 and result.scores[1] == pytest.approx(0.5)


def test_every_request_refused_is_one_clear_error(fake: FakeJudge) -> None:
    fake.script = lambda prompt, attempt: Reply(status=401)
    with pytest.raises(TunelabError) as info:
        run(make_cfg(fake, max_retries=3), ["a", "b"])
    message = str(info.value)
    assert "\n" not in message and "401" in message and KEY_ENV in message
    assert fake.total == 2


def test_429_retry_after_is_honoured(fake: FakeJudge) -> None:
    fake.script = lambda prompt, attempt: Reply(status=429, headers={"Retry-After": "0.3"}) if attempt == 1 else Reply()
    start = time.monotonic()
    result = run(make_cfg(fake, max_retries=1), ["a"])
    assert time.monotonic() - start >= 0.3  # the backoff alone would wait at most 0.05 s here
    assert fake.total == 2 and result.scores == [pytest.approx(0.7)]


def test_429_retry_after_is_capped(fake: FakeJudge, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(judge, "RETRY_AFTER_CAP_S", 0.05)
    fake.script = lambda prompt, attempt: Reply(status=429, headers={"Retry-After": "3"}) if attempt < 3 else Reply()
    start = time.monotonic()
    result = run(make_cfg(fake, max_retries=3), ["a"])
    assert time.monotonic() - start < 2 and fake.total == 3 and result.failed == 0


def test_timeout_counts_as_failed_after_retries(fake: FakeJudge) -> None:
    fake.script = by_answer({"slow": Reply(delay=1.0), "quick": Reply("Score: 4")})
    start = time.monotonic()
    result = run(make_cfg(fake, timeout=0.2, max_retries=1), ["slow", "quick"])
    assert time.monotonic() - start < 1.0
    assert fake.requests_for("slow") == 2 and result.failed == 1
    assert result.scores == [None, pytest.approx(0.4)]


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_is_bounded(fake: FakeJudge, limit: int) -> None:
    fake.script = lambda prompt, attempt: Reply(delay=0.1)
    result = run(make_cfg(fake, max_concurrency=limit), [f"a{i}" for i in range(6)])
    assert result.failed == 0 and fake.total == 6
    assert fake.max_in_flight <= limit
    if limit > 1:
        assert fake.max_in_flight > 1


def test_unreachable_judge_is_one_line_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(TunelabError) as info:
        run(make_cfg(base_url=url + "/", max_retries=1), ["a", "b"])
    message = str(info.value)
    assert "\n" not in message and f"the judge at {url} did not answer" in message and info.value.hint


# --- cache -----------------------------------------------------------------------------------------------------------


def test_cache_makes_a_second_run_free(fake: FakeJudge, tmp_path: Path) -> None:
    fake.script = by_answer({"a": Reply("Score: 8"), "b": Reply("meh"), "c": Reply(status=500)})
    cfg = make_cfg(fake, cache=True, max_retries=0)
    first = run(cfg, ["a", "b", "c"], cache_dir=tmp_path)
    assert fake.total == 3 and first.failed == 1
    seen: list[int] = []
    second = run(cfg, ["a", "b", "c"], cache_dir=tmp_path, progress=seen.append)
    assert fake.requests_for("a") == 1 and fake.requests_for("b") == 1  # replies, even unparsable, are remembered
    assert fake.requests_for("c") == 2  # a failure is not
    assert second.scores == first.scores and second.replies == first.replies and sum(seen) == 3
    assert len(list(tmp_path.rglob("*.json"))) == 2 and not list(tmp_path.rglob("*.tmp"))

    run(make_cfg(fake, cache=True, model="other-judge"), ["a"], cache_dir=tmp_path)
    run(make_cfg(fake, cache=False), ["a"], cache_dir=tmp_path)
    assert fake.requests_for("a") == 3


def test_cache_defaults_to_user_cache_dir(fake: FakeJudge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    run(make_cfg(fake, cache=True), ["a"])
    run(make_cfg(fake, cache=True), ["a"])
    assert fake.total == 1 and len(list((tmp_path / "judge").rglob("*.json"))) == 1


def test_corrupt_cache_entry_is_asked_again(fake: FakeJudge, tmp_path: Path) -> None:
    run(make_cfg(fake, cache=True), ["a"], cache_dir=tmp_path)
    (entry,) = tmp_path.rglob("*.json")
    entry.write_text("{not json", encoding="utf-8")
    result = run(make_cfg(fake, cache=True), ["a"], cache_dir=tmp_path)
    assert fake.total == 2 and result.scores == [pytest.approx(0.7)]
    assert re.search(r'"reply": "Score: 7"', entry.read_text(encoding="utf-8"))
