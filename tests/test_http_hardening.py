"""HTTP faces a hostile browser: the studio and the server answer only the names they are known by (DNS rebinding),
refuse oversized bodies before reading them, keep one large prompt from stalling the rest, hide the API schema behind
the key, and throttle password guessing."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import causal_config
from test_cli import TUNELAB, assert_one_line_error
from test_serve import running
from test_studio import BASE_URL, PASSWORD, all_routes, studio_client

from tunelab.api import train
from tunelab.errors import TunelabError
from tunelab.http_guard import HostAllowList
from tunelab.infer.model import load_run
from tunelab.infer.serve import bind_socket, build_server, create_app
from tunelab.runs import RunRegistry
from tunelab.ui.auth import LockedOut, LoginThrottle

EVIL = "evil.example:7860"  # the attacker's domain, re-pointed at 127.0.0.1
EVIL_HEADERS = {"Host": EVIL, "Origin": f"http://{EVIL}"}  # a same-origin request as the browser sends it
KEY = "hardening-key"


# ---------------------------------------------------------------------------------------------------------- hosts
@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("localhost:7860", True),
        ("LOCALHOST.:1234", True),
        ("127.0.0.1", True),
        ("127.0.0.1:8000", True),
        ("127.3.4.5:80", True),
        ("[::1]:7860", True),
        ("[::1]", True),
        ("studio.lan", True),
        ("studio.lan:7860", True),
        ("api.lan:9000", True),
        ("api.lan:9001", False),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("evil.studio.lan", False),
        ("192.168.1.5:7860", False),
        ("0.0.0.0:7860", False),
        ("", False),
        ("localhost:99999", False),
        ("http://localhost", False),
        ("local host", False),
    ],
)
def test_the_host_allow_list(host, allowed):
    hosts = HostAllowList("127.0.0.1", ["studio.lan", "api.lan:9000"])
    assert hosts.allows(host) is allowed


def test_a_server_on_every_address_takes_ip_literals_but_only_the_names_it_was_given():
    hosts = HostAllowList("0.0.0.0", ["studio.lan"])
    assert hosts.allows("192.168.1.5:7860") and hosts.allows("[fe80::1]:7860") and hosts.allows("studio.lan")
    assert not hosts.allows("evil.example:7860")
    assert HostAllowList("studio.lan").allows("studio.lan:7860")  # --host names itself
    assert HostAllowList("127.0.0.1", ["*"]).allows("anything.example")  # the explicit opt-out
    with pytest.raises(TunelabError, match="--allowed-host"):
        HostAllowList("127.0.0.1", ["http://studio.lan/"])


def test_a_bad_allowed_host_is_one_line_on_the_command_line(tmp_path):
    import subprocess

    proc = subprocess.run(
        [TUNELAB, "studio", "--allowed-host", "http://x/", "--data-dir", str(tmp_path / "d"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(proc, "not a host name", "--allowed-host")


def _ghost_run(out: Path) -> tuple[str, Path]:
    """A registered run whose process is gone, with a directory of files (what DELETE ?files=true removes)."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = out / "ghost"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("experiment_name: ghost\n")
    run_id = RunRegistry(out).add("ghost", run_dir, "classification", "tiny", "h", pid=dead.pid)
    return run_id, run_dir


def test_dns_rebinding_cannot_delete_a_run_or_read_a_file(tmp_path):
    client = studio_client(tmp_path)
    run_id, run_dir = _ghost_run(tmp_path / "out")
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"prompt": "the-secret-value", "answer": "private"}) + "\n")
    # The two attacks of the finding, as a rebound page sends them: refused before any route runs.
    deleted = client.delete(f"/api/runs/{run_id}?files=true", headers=EVIL_HEADERS)
    assert deleted.status_code == 400 and "evil.example" in deleted.json()["error"]["message"]
    assert "--allowed-host" in deleted.json()["error"]["message"]
    assert run_dir.is_dir() and (run_dir / "config.yaml").is_file()
    read = client.post("/api/datasets/inspect", json={"path": str(secret)}, headers=EVIL_HEADERS)
    assert read.status_code == 400 and "the-secret-value" not in read.text
    # The same requests under the studio's own name do what they do (so the 400s above are the Host check's).
    own = {"Origin": BASE_URL}
    assert "the-secret-value" in client.post("/api/datasets/inspect", json={"path": str(secret)}, headers=own).text
    assert client.delete(f"/api/runs/{run_id}?files=true", headers=own).status_code == 200
    assert not run_dir.exists()


def test_every_studio_route_refuses_a_foreign_host(tmp_path):
    client = studio_client(tmp_path, password=PASSWORD)
    auth = {"Authorization": "Basic " + base64.b64encode(f"me:{PASSWORD}".encode()).decode()}
    answers = {}
    for route in all_routes(client.app):
        path = getattr(route, "path", "")
        methods = getattr(route, "methods", None) or {"GET"}
        for method in methods - {"HEAD"}:
            url = path.replace("{run_id}", "abc").replace("{name}", "x").replace("{path:path}", "app.js")
            body = {"path": "x.csv", "values": {}, "ids": ["a", "b"]} if method != "GET" else None
            response = client.request(method, url, json=body, headers={**EVIL_HEADERS, **auth}, follow_redirects=False)
            answers[f"{method} {path}"] = response.status_code
    writes = [k for k in answers if not k.startswith("GET ")]
    assert len(writes) >= 10 and "DELETE /api/runs/{run_id}" in writes and "POST /api/datasets/inspect" in writes
    assert "POST /login" in answers and "POST /api/datasets/upload" in writes
    assert {k: v for k, v in answers.items() if v != 400} == {}
    assert client.post("/login", content="password=x", headers={"Host": EVIL}).status_code == 400
    assert client.get("/api/runs", headers=auth).status_code == 200  # the studio's own name still works


def test_loopback_names_on_any_port_and_allowed_hosts_pass(tmp_path):
    client = studio_client(tmp_path, allowed_hosts=("studio.lan", "box.lan:8443"))
    for host in ("localhost", "localhost:1234", "127.0.0.1:7860", "[::1]:7860", "studio.lan:7860", "box.lan:8443"):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 200, host
    for host in ("box.lan:7860", "studio.lan.evil.example"):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 400, host
    # Origin still has to match the Host the browser used
    cross = client.post("/api/validate", json={"values": {}}, headers={"Host": "studio.lan", "Origin": BASE_URL})
    assert cross.status_code == 403


# ---------------------------------------------------------------------------------------------------------- sizes
def test_the_studio_bounds_its_json_and_form_bodies(tmp_path):
    client = studio_client(tmp_path, max_request_mb=0.01)  # 10 KiB; uploads keep their own, larger limit
    big = {"values": {"experiment_name": "x" * 20_000}}
    response = client.post("/api/validate", json=big)
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body streams in
        yield b'{"values": {"experiment_name": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}}'

    assert (
        client.post("/api/validate", content=chunks(), headers={"Content-Type": "application/json"}).status_code == 413
    )
    assert client.post("/login", content=b"password=" + b"x" * 20_000).status_code == 413
    assert client.post("/api/validate", json={"values": {}}).status_code == 200
    upload = client.post("/api/datasets/upload", params={"name": "a.csv"}, content=b"text,label\n" + b"a,b\n" * 5000)
    assert upload.status_code == 200  # 20 KB: over the JSON limit, under the upload limit


def test_a_json_syntax_error_is_told_as_such(tmp_path):
    client = studio_client(tmp_path)
    response = client.post("/api/validate", content=b'{"values": [', headers={"Content-Type": "application/json"})
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and message.startswith("the request body is not valid JSON"), message
    assert response.json()["error"]["field"] is None  # a character position is not a field


# ---------------------------------------------------------------------------------------------------------- logins
class FakeTime:
    """A clock that only moves when the throttle sleeps (or the test says so), and the delays asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds


def test_wrong_passwords_are_slowed_then_locked_out_for_basic_and_the_form(tmp_path):
    fake = FakeTime()
    throttle = LoginThrottle(delay_s=1, max_delay_s=4, max_failures=5, lockout_s=60, clock=fake.clock, sleep=fake.sleep)
    client = studio_client(tmp_path, password=PASSWORD, throttle=throttle)

    def basic(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}

    assert client.get("/api/runs", headers=basic("guess1")).status_code == 401
    assert client.get("/api/runs", headers=basic("guess2")).status_code == 401
    assert client.post("/login", content="password=guess3").status_code == 401
    assert client.get("/api/runs").status_code == 401  # no credentials at all: not a guess, not delayed
    assert client.post("/login", content="password=guess4").status_code == 401
    assert fake.delays == [1, 2, 4, 4]  # each wrong password waits longer, Basic and form alike
    assert client.get("/api/runs", headers=basic("guess5")).status_code == 401
    # Locked out: even the right password is not checked, and the answer says when to come back.
    for attempt in (
        lambda: client.get("/api/runs", headers=basic(PASSWORD)),
        lambda: client.post("/login", content=f"password={PASSWORD}", follow_redirects=False),
    ):
        locked = attempt()
        assert locked.status_code == 429 and 60 <= int(locked.headers["Retry-After"]) <= 64, locked.text
        assert "too many wrong passwords" in locked.text
    assert len(fake.delays) == 5  # refused at once, without a delay or a check
    fake.now += 65
    assert client.get("/api/runs", headers=basic(PASSWORD)).status_code == 200
    assert client.get("/api/runs", headers=basic("again")).status_code == 401 and fake.delays[-1] == 1  # reset


def test_other_addresses_are_not_locked_out(tmp_path):
    from fastapi.testclient import TestClient

    throttle = LoginThrottle(delay_s=0, max_failures=2, lockout_s=60)
    first = studio_client(tmp_path, password=PASSWORD, throttle=throttle)
    for _ in range(2):
        first.post("/login", content="password=guess")
    assert first.post("/login", content=f"password={PASSWORD}").status_code == 429
    other = TestClient(first.app, base_url=BASE_URL, client=("10.0.0.9", 5555))
    assert other.post("/login", content=f"password={PASSWORD}", follow_redirects=False).status_code == 303


def test_the_default_throttle_makes_200_guesses_take_minutes_and_locks_out():
    fake = FakeTime()
    throttle = LoginThrottle(clock=fake.clock, sleep=fake.sleep)  # the real timings, on a fake clock
    checked, locked = [], 0

    async def guess_200() -> None:
        nonlocal locked
        for i in range(200):
            try:
                await throttle.check("203.0.113.7", lambda i=i: checked.append(i) or False)
            except LockedOut as exc:
                locked += 1
                assert exc.retry_after > 60

    start = fake.now
    asyncio.run(guess_200())
    assert fake.now - start > 60 and len(checked) <= 10 and locked >= 190


def test_parallel_guesses_queue_behind_each_other():
    throttle = LoginThrottle(delay_s=0.001, max_failures=10, lockout_s=60)
    checked = []

    async def guess(i: int) -> str:
        try:
            return "ok" if await throttle.check("203.0.113.7", lambda: checked.append(i) or False) else "wrong"
        except LockedOut:
            return "locked"

    async def all_at_once() -> list[str]:
        return await asyncio.gather(*(guess(i) for i in range(50)))

    results = asyncio.run(all_at_once())
    assert len(checked) == 10 and results.count("wrong") == 10 and results.count("locked") == 40


# ---------------------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def run_dir(tiny_llama, qa_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hardening-runs")
    cfg = causal_config(tiny_llama, qa_jsonl, out, training={"max_steps": 2}, prediction={"max_length_inference": 4})
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def server(run_dir) -> Iterator[str]:
    """``tunelab serve`` with a key, one more allowed name and a 0.5 MB request limit."""
    srv, sock = build_server(
        run_dir, port=0, api_key=KEY, device="cpu", log_level="warning", allowed_hosts=["api.lan"], max_request_mb=0.5
    )
    with running(srv, sock) as url:
        yield url


def _chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "what is 2 and 3?"}], "max_tokens": 2, **fields}


SERVER_ROUTES = [
    ("GET", "/health", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/causal", None),
    ("POST", "/v1/chat/completions", _chat()),
    ("POST", "/v1/completions", {"prompt": "what is", "max_tokens": 2}),
    ("POST", "/v1/classify", {"input": "great"}),
    ("POST", "/v1/score", {"prompt": "q", "responses": ["a"]}),
    ("GET", "/docs", None),
    ("GET", "/redoc", None),
    ("GET", "/openapi.json", None),
]


def test_the_server_refuses_a_foreign_host_on_every_endpoint(server):
    port = server.rsplit(":", 1)[1]
    auth = {"Authorization": f"Bearer {KEY}"}
    for method, path, body in SERVER_ROUTES:
        evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}", **auth}
        response = httpx.request(method, server + path, json=body, headers=evil, timeout=30)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "host_not_allowed" and error["type"] == "invalid_request_error", error
    for host in (f"localhost:{port}", f"api.lan:{port}", f"[::1]:{port}"):
        ok = httpx.post(server + "/v1/chat/completions", json=_chat(), headers={"Host": host, **auth}, timeout=60)
        assert ok.status_code == 200, (host, ok.text)


def test_docs_and_schema_need_the_key_when_there_is_one(server, run_dir):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(server + path, timeout=30).status_code == 401, path
        assert httpx.get(server + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 200
    schema = httpx.get(server + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert "/v1/chat/completions" in schema["paths"]
    assert httpx.get(server + "/health", timeout=30).status_code == 200  # load balancers need no key
    open_server = build_server(run_dir, port=0, device="cpu", log_level="warning")
    with running(*open_server) as url:  # no key: nothing to hide
        assert httpx.get(url + "/openapi.json", timeout=30).status_code == 200


def test_an_oversized_body_is_refused_before_it_is_sent(server):
    """The server answers 413 on the headers alone: the client has sent none of the 50 MB it announced."""
    host, port = server.removeprefix("http://").split(":")
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {50 * 2**20}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(request.encode() + b'{"messages": [')
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and "--max-request-mb" in error["message"], error


def test_a_streamed_body_without_length_is_cut_at_the_limit(server):
    def chunks() -> Iterator[bytes]:
        yield b'{"max_tokens": 2, "prompt": "'
        for _ in range(200):  # 2 MB of prompt if it were all read
            yield b"ten " * 2560
        yield b'"}'

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(server + "/v1/completions", content=chunks(), headers=headers, timeout=60)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "0.5 MB" in error["message"], error
    assert httpx.post(server + "/v1/chat/completions", json=_chat(), headers=headers, timeout=60).status_code == 200


class GatedTokenizer:
    """The run's tokenizer, except that tokenising a text holding ``GATE`` waits until the test opens the gate: a
    stand-in for a prompt that takes long to tokenise. Copies share the gate."""

    def __init__(self, real: Any, entered: threading.Event, gate: threading.Event):
        self.__dict__.update(real=real, entered=entered, gate=gate)

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(text, str) and "GATE" in text:
            self.entered.set()
            assert self.gate.wait(60), "the gate was never opened"
        return self.real(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.real, name, value)

    def __len__(self) -> int:
        return len(self.real)

    def __deepcopy__(self, memo: dict) -> GatedTokenizer:
        return GatedTokenizer(copy.deepcopy(self.real, memo), self.entered, self.gate)


def test_a_slow_prompt_does_not_stall_other_requests(run_dir):
    loaded = load_run(run_dir, device="cpu")
    entered, gate = threading.Event(), threading.Event()
    loaded.tokenizer = GatedTokenizer(loaded.tokenizer, entered, gate)
    loaded.problem.renderer.tokenizer = loaded.tokenizer
    app = create_app(loaded)
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    with running(srv, bind_socket("127.0.0.1", 0)) as url:
        slow: dict[str, Any] = {}

        def send_slow() -> None:
            body = {"prompt": "GATE what is", "max_tokens": 2}
            slow["response"] = httpx.post(url + "/v1/completions", json=body, timeout=90)

        thread = threading.Thread(target=send_slow)
        thread.start()
        try:
            assert entered.wait(30), "the slow prompt never reached its tokenizer"
            started = time.monotonic()
            quick = httpx.post(url + "/v1/chat/completions", json=_chat(), timeout=20)
            assert quick.status_code == 200, quick.text
            assert "response" not in slow  # answered while the slow prompt was still being tokenised
            assert time.monotonic() - started < 20
        finally:
            gate.set()
            thread.join(60)
        assert slow["response"].status_code == 200, slow["response"].text
