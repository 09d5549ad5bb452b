"""The web studio's API: password on every route, uploads that cannot escape the data folder or exceed the limit,
field-level config errors, data preview, and runs that survive a studio restart, stop and resume."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import typing
import zipfile
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount
from test_cli import TUNELAB, assert_one_line_error

from tunelab.config import SECTIONS, RunConfig
from tunelab.problem_spec import problem_types
from tunelab.ui import StudioSettings, create_app
from tunelab.ui.auth import LoginThrottle
from tunelab.ui.processes import tunelab_process_alive
from tunelab.ui.server import check_bind

PASSWORD = "s3cret-pw"
BASE_URL = "http://127.0.0.1:7860"  # the address a browser uses for a studio on its default port


def studio_client(tmp_path: Path, password: str | None = None, max_upload_mb: float = 50, **settings) -> TestClient:
    studio = StudioSettings(tmp_path / "out", tmp_path / "studio_data", password, max_upload_mb, **settings)
    return TestClient(create_app(studio), base_url=BASE_URL)


def classification_values(model: Path, data: Path, name: str, steps: int) -> dict[str, str]:
    """Form values of a classification experiment on the tiny BERT that trains ``steps`` steps and checkpoints
    only when stopped (no periodic checkpoints: they would dominate the run time)."""
    return {
        "problem_type": "classification",
        "experiment_name": name,
        "llm_backbone": str(model),
        "dataset.train_dataframe": str(data),
        "dataset.prompt_column": "text",
        "dataset.label_column": "label",
        "dataset.validation_size": "0.2",
        "training.batch_size": "8",
        "training.learning_rate": "1e-3",  # fast enough, and never so sure that the loss is exactly 0
        "training.max_steps": str(steps),
        "training.logging_steps": "1",
        "training.evaluation_epochs": "1000",
        "training.save_epochs": "0",
        "environment.seed": "1",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def studio_server(
    out: Path, data: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> typing.Iterator[str]:
    """A real ``tunelab studio`` process; yields its base URL, and kills it (not its runs) at the end."""
    port = free_port()
    command = [TUNELAB, "studio", "--port", str(port), "-d", str(out), "--data-dir", str(data), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                httpx.get(f"{url}/login", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the studio did not come up in 60 s"
                time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def stop_leftovers(data: Path) -> None:
    """Kill what a failed test left running (runs and exports live in their own sessions, beyond pytest's reach)."""
    import signal

    for record in [*data.glob("launches/*.json"), *data.glob("export_jobs/*.json")]:
        pid = json.loads(record.read_text())["pid"]
        if tunelab_process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for(check: typing.Callable[[], typing.Any], timeout: float, what: str) -> typing.Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.25)


# ---------------------------------------------------------------------------------------------------------- auth
def test_a_public_host_needs_a_password():
    with pytest.raises(Exception, match="without a password"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", PASSWORD)
    check_bind("127.0.0.1", None)
    check_bind("localhost", None)
    proc = subprocess.run([TUNELAB, "studio", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "without a password", "--password")


def all_routes(app) -> list:
    """Every route of the app, those of included routers too (newer FastAPI wraps them)."""
    out = []
    for route in app.routes:
        out += route.original_router.routes if hasattr(route, "original_router") else [route]
    return out


def _unauthenticated_answers(client: TestClient) -> dict[str, int]:
    """The status of every route of the app (path parameters filled in) when called without credentials."""
    answers = {}
    for route in all_routes(client.app):
        if isinstance(route, Mount):
            answers[f"GET {route.path}/app.js"] = client.get(f"{route.path}/app.js", follow_redirects=False).status_code
            continue
        path = getattr(route, "path", "")
        for method in getattr(route, "methods", None) or ():
            if method == "HEAD" or path == "/login":
                continue
            url = path.replace("{run_id}", "abc").replace("{name}", "x")
            response = client.request(method, url, follow_redirects=False, json={} if method == "POST" else None)
            answers[f"{method} {path}"] = response.status_code
    return answers


def test_every_page_and_api_call_requires_the_password(tmp_path):
    client = studio_client(tmp_path, password=PASSWORD, throttle=LoginThrottle(delay_s=0.01))
    answers = _unauthenticated_answers(client)
    api_routes = [r for r in all_routes(client.app) if isinstance(r, APIRoute) and r.path.startswith("/api/")]
    assert len(api_routes) >= 20 and len(answers) >= len(api_routes) + 2  # the index page and the static files too
    for key, status in answers.items():
        expected = 401 if key.split(" ", 1)[1].startswith("/api/") else 303
        assert status == expected, f"{key} answered {status} without the password"
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")
    # HTTP Basic for scripts: the right password opens, a wrong one does not
    good = {"Authorization": "Basic " + base64.b64encode(f"me:{PASSWORD}".encode()).decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"me:guess").decode()}
    assert client.get("/api/runs", headers=good).status_code == 200
    assert client.get("/api/runs", headers=bad).status_code == 401
    # the login form sets a signed session cookie
    refused = client.post("/login", content="password=guess&next=/", follow_redirects=False)
    assert refused.status_code == 401 and "wrong password" in refused.text
    assert client.get("/api/runs").status_code == 401
    ok = client.post("/login", content=f"password={PASSWORD}&next=/%23/runs", follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/#/runs"
    assert client.get("/api/runs").status_code == 200 and client.get("/").status_code == 200
    cookie = client.cookies.get("tunelab_studio")
    expires, _, signature = cookie.partition(".")
    client.cookies.clear()
    client.cookies.set("tunelab_studio", f"{int(expires) + 1000}.{signature}")  # a forged expiry
    assert client.get("/api/runs").status_code == 401
    # the login page never redirects to another site
    away = client.post("/login", content=f"password={PASSWORD}&next=//evil.example/", follow_redirects=False)
    assert away.headers["location"] == "/"


def test_cross_site_writes_are_refused(tmp_path):
    client = studio_client(tmp_path)
    response = client.post(
        "/api/datasets/upload?name=a.csv", content=b"text,label\n", headers={"Origin": "http://evil.example"}
    )
    assert response.status_code == 403
    assert not (tmp_path / "studio_data" / "uploads" / "a.csv").exists()
    same = client.post("/api/datasets/upload?name=a.csv", content=b"text,label\nx,y\n", headers={"Origin": BASE_URL})
    assert same.status_code == 200


# ---------------------------------------------------------------------------------------------------------- uploads
def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def test_uploads_cannot_write_outside_the_data_folder(tmp_path):
    client = studio_client(tmp_path)
    data = tmp_path / "studio_data"
    outside = tmp_path / "outside.csv"
    outside.write_text("keep me\n")
    before = _files_under(tmp_path)
    for name in ("../evil.csv", "..\\evil.csv", "/tmp/evil.csv", "a/b.csv", "..", "evil.exe", "sub/../../evil.csv"):
        response = client.post("/api/datasets/upload", params={"name": name}, content=b"text,label\nx,y\n")
        assert response.status_code == 400, name
        assert response.json()["error"]["field"] == "name" and response.json()["error"]["message"]
    encoded = client.post("/api/datasets/upload?name=%2e%2e%2Fevil.csv", content=b"text,label\nx,y\n")
    assert encoded.status_code == 400
    assert _files_under(tmp_path) - before == set()
    # a symlink planted in the uploads folder is not written through
    uploads = data / "uploads"
    uploads.mkdir()
    (uploads / "link.csv").symlink_to(outside)
    response = client.post("/api/datasets/upload", params={"name": "link.csv"}, content=b"text,label\nx,y\n")
    assert response.status_code == 200 and response.json()["name"] == "link-2.csv"
    assert outside.read_text() == "keep me\n"
    # an odd but harmless name is cleaned, and lands inside
    response = client.post("/api/datasets/upload", params={"name": ".my data (1).csv"}, content=b"text,label\nx,y\n")
    assert response.json()["name"] == "my_data_1_.csv" and Path(response.json()["path"]).parent == uploads.resolve()
    # an uploads folder that is a symlink out of the data folder is refused
    (uploads / "link.csv").unlink()
    for path in uploads.iterdir():
        path.unlink()
    uploads.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    uploads.symlink_to(elsewhere, target_is_directory=True)
    response = client.post("/api/datasets/upload", params={"name": "a.csv"}, content=b"text,label\nx,y\n")
    assert response.status_code == 400 and "outside" in response.json()["error"]["message"]
    assert list(elsewhere.iterdir()) == []


def test_uploads_over_the_limit_are_refused_with_a_message(tmp_path):
    client = studio_client(tmp_path, max_upload_mb=0.01)  # 10 KiB
    body = b"text,label\n" + b"a,b\n" * 5000  # 20 KB
    response = client.post("/api/datasets/upload", params={"name": "big.csv"}, content=body)
    assert response.status_code == 413
    assert "larger than the upload limit" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(50):
            yield b"a,b\n" * 256

    response = client.post("/api/datasets/upload", params={"name": "big.csv"}, content=chunks())
    assert response.status_code == 413
    uploads = tmp_path / "studio_data" / "uploads"
    assert list(uploads.iterdir()) == []  # nothing half-written is left behind
    small = client.post("/api/datasets/upload", params={"name": "small.csv"}, content=b"text,label\nx,y\n")
    assert small.status_code == 200 and small.json()["columns"] == ["text", "label"]
    assert [u["name"] for u in client.get("/api/datasets").json()["uploads"]] == ["small.csv"]


# ---------------------------------------------------------------------------------------------------------- form
def test_the_form_has_every_field_with_its_help_and_the_schema_choices(tmp_path):
    client = studio_client(tmp_path)
    schema = client.get("/api/schema").json()
    fields = {f["path"]: f for g in schema["groups"] for f in g["fields"]}
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            assert fields[f"{section}.{name}"]["description"] == field.description
    assert schema["problem_types"] == problem_types()  # the registry (problem_type is a str checked against it)
    assert fields["problem_type"]["kind"] == "choice" and fields["problem_type"]["choices"] == problem_types()
    assert fields["training.adapter"]["kind"] == "choice" and "lora" in fields["training.adapter"]["choices"]
    assert {b["name"] for b in schema["backbones"]} == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    defaults = client.get("/api/defaults", params={"problem_type": "classification"}).json()["values"]
    assert defaults["llm_backbone"] == "all-minilm-l6-v2" and defaults["prediction.metric"] == "Accuracy"


def test_every_field_default_survives_the_form():
    """Each field's default, shown as text and read back, is the same value (new field types included)."""
    from pydantic import TypeAdapter

    from tunelab.ui.form import parse_text, value_text

    fields = [(n, f) for n, f in RunConfig.model_fields.items() if n not in SECTIONS]
    fields += [(f"{s}.{n}", f) for s, model in SECTIONS.items() for n, f in model.model_fields.items()]
    for path, field in fields:
        default = field.get_default(call_default_factory=True)
        adapter = TypeAdapter(field.annotation)
        again = adapter.validate_python(parse_text(value_text(default), field.annotation))
        assert again == adapter.validate_python(default), path


def test_config_errors_are_reported_by_field(tmp_path, tiny_bert, sentiment_csv):
    client = studio_client(tmp_path)
    values = classification_values(tiny_bert, sentiment_csv, "bad", 3)
    answer = client.post("/api/validate", json={"values": values}).json()
    assert answer == {"ok": True, "problems": []}
    broken = {**values, "training.learning_rate": "fast", "dataset.validation_size": "-1", "training.adapter": "magic"}
    problems = client.post("/api/validate", json={"values": broken}).json()["problems"]
    assert {p["field"] for p in problems} == {"training.learning_rate", "dataset.validation_size", "training.adapter"}
    assert all(p["message"] for p in problems)
    cross = {**values, "prediction.metric": "BLEU", "training.packing": "true"}
    problems = client.post("/api/validate", json={"values": cross}).json()["problems"]
    assert {p["field"] for p in problems} == {"prediction.metric", "training.packing"}
    unknown = client.post("/api/validate", json={"values": {**values, "training.learning_rat": "1"}}).json()
    assert unknown["problems"] == [{"field": "training.learning_rat", "message": "not a config field"}]
    refused = client.post("/api/experiments", json={"values": broken})
    assert refused.status_code == 400 and refused.json()["error"]["field"] in (
        "training.learning_rate",
        "dataset.validation_size",
        "training.adapter",
    )
    assert len(refused.json()["error"]["problems"]) == 3
    assert client.get("/api/runs").json()["runs"] == []  # nothing was started


def test_data_preview_marks_trained_tokens(tmp_path, tiny_llama, qa_jsonl):
    client = studio_client(tmp_path)
    values = {
        "problem_type": "causal_lm",
        "llm_backbone": str(tiny_llama),
        "dataset.prompt_column": "question",
        "dataset.answer_column": "answer",
    }
    data = client.post("/api/datasets/inspect", json={"path": str(qa_jsonl), "values": values, "rows": 3}).json()
    assert data["format"] == "columns" and data["columns"] == ["question", "answer"]
    assert data["report"]["rows"] == 40 and len(data["preview"]) == 3
    for row in data["preview"]:
        trained = "".join(s["text"] for s in row["segments"] if s["trained"])
        masked = "".join(s["text"] for s in row["segments"] if not s["trained"])
        assert "is" in trained and "what is" in masked  # the answer trains, the prompt does not
    assert sum(data["histogram"]["series"]["total"]) == 40
    duplicates = data["report"]["duplicate_rows"]
    assert duplicates > 0  # 40 random sums of two digits repeat
    assert {"level": "warning", "message": f"{duplicates} duplicated rows"} in data["findings"]
    assert "error" not in {f["level"] for f in data["findings"]}
    wrong = client.post(
        "/api/datasets/inspect", json={"path": str(qa_jsonl), "values": {**values, "dataset.answer_column": "nope"}}
    )
    assert wrong.status_code == 400 and "nope" in wrong.json()["error"]["message"]


def test_plan_estimate_before_starting(tmp_path, tiny_bert, sentiment_csv):
    client = studio_client(tmp_path)
    plan = client.post("/api/plan", json={"values": classification_values(tiny_bert, sentiment_csv, "p", 7)}).json()
    assert plan["fits"] and plan["total_steps"] == 7 and plan["train_rows"] == 48
    assert (
        0 < plan["peak_gb"] < plan["budget_gb"]
        and plan["estimated_seconds"] > 0
        and plan["summary"].startswith("plan:")
    )


# ---------------------------------------------------------------------------------------------------------- runs
def test_lost_and_failed_runs_show_their_error_and_last_log_lines(tmp_path):
    from tunelab.runs import RunRegistry

    client = studio_client(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    registry = RunRegistry(tmp_path / "out")
    run_id = registry.add("ghost", tmp_path / "out" / "ghost", "classification", "tiny", "h", pid=dead.pid)
    view = client.get(f"/api/runs/{run_id}").json()
    assert view["status_text"] == "failed (process ended)" and "gone" in view["error"]
    # a studio launch that fails before it registers: its one-line error and the last lines of its output
    values = classification_values(Path("/nonexistent/model"), tmp_path / "missing.csv", "broken", 3)
    started = client.post("/api/experiments", json={"values": values}).json()
    assert started["status"] == "starting"
    failed = wait_for(
        lambda: (v := client.get(f"/api/runs/{started['id']}").json())["status"] == "failed" and v, 120, "failure"
    )
    assert "missing.csv" in failed["error"] or "nonexistent" in failed["error"]
    assert 1 <= len(failed["log_tail"]) <= 30 and any(line.startswith("error:") for line in failed["log_tail"])
    table = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert table["broken"]["status"] == "failed" and table["ghost"]["status"] == "failed"
    assert client.post(f"/api/runs/{run_id}/resume").status_code == 409  # no checkpoint
    assert client.delete(f"/api/runs/{started['id']}").status_code == 200
    assert "broken" not in {r["name"] for r in client.get("/api/runs").json()["runs"]}


def test_a_run_survives_a_studio_restart_then_stops_and_resumes(tmp_path, tiny_bert, sentiment_csv, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny model gains nothing from a second thread, and waits for it
    out, data = tmp_path / "out", tmp_path / "studio_data"
    try:
        _survive_stop_resume_export(tmp_path, out, data, tiny_bert, sentiment_csv)
    finally:
        stop_leftovers(data)


def _survive_stop_resume_export(tmp_path: Path, out: Path, data: Path, tiny_bert: Path, sentiment_csv: Path) -> None:
    values = classification_values(tiny_bert, sentiment_csv, "survivor", 600)
    with studio_server(out, data) as url:
        launch = httpx.post(f"{url}/api/experiments", json={"values": values}, timeout=30).json()
        wait_for(lambda: httpx.get(f"{url}/api/runs/{launch['id']}").json()["step"], 120, "the first logged step")
    pid = json.loads(next((data / "launches").glob("*.json")).read_text())["pid"]
    assert tunelab_process_alive(pid)  # the studio was killed; its run was not
    client = studio_client(tmp_path)  # a new studio over the same folders
    runs = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in runs] == ["survivor"] and runs[0]["status"] == "running"
    run_id = runs[0]["id"]
    seen = len(client.get(f"/api/runs/{run_id}/metrics").json()["records"])
    wait_for(lambda: len(client.get(f"/api/runs/{run_id}/metrics").json()["records"]) > seen, 60, "the chart to grow")
    assert any("step" in line for line in client.get(f"/api/runs/{run_id}/log").json()["lines"])

    assert client.post(f"/api/runs/{run_id}/stop").json()["status"] in ("stopping", "stopped")
    wait_for(lambda: client.get(f"/api/runs/{run_id}").json()["status"] == "stopped", 120, "the run to stop")
    stopped_at = max(r["step"] for r in client.get(f"/api/runs/{run_id}/metrics").json()["records"])
    assert 1 <= stopped_at < 600 and not tunelab_process_alive(pid)
    assert client.post(f"/api/runs/{run_id}/stop").status_code == 409  # nothing to stop any more

    assert client.post(f"/api/runs/{run_id}/resume").json()["status"] in ("resuming", "running")
    assert client.delete(f"/api/runs/{run_id}").status_code == 409  # a running run is not deleted
    wait_for(lambda: client.get(f"/api/runs/{run_id}").json()["status"] == "finished", 300, "the resumed run to finish")
    final = client.get(f"/api/runs/{run_id}").json()
    assert final["metrics"]["after"]["accuracy"] >= 0.9 and final["shown_metrics"]["accuracy"] >= 0.9
    steps = [r["step"] for r in client.get(f"/api/runs/{run_id}/metrics").json()["records"] if "loss" in r]
    assert steps == list(range(1, 601))  # every step once: the resumed run continued where the first stopped
    kinds = [json.loads(p.read_text())["kind"] for p in sorted((data / "launches").glob("*.json"))]
    assert sorted(kinds) == ["resume", "train"] and len(final["launch_ids"]) == 2
    assert any("resuming" in line for line in client.get(f"/api/runs/{run_id}/log?lines=5000").json()["lines"])

    again = client.get(f"/api/runs/{run_id}/config").json()["values"]  # "start from a previous run"
    assert again["training.max_steps"] == "600" and again["llm_backbone"] == str(tiny_bert)
    assert client.post("/api/validate", json={"values": again}).json()["ok"]
    # export: the adapter with its parity check, then downloaded as a zip
    assert client.post(f"/api/runs/{run_id}/exports", json={"format": "onnx"}).status_code == 400
    assert client.post(f"/api/runs/{run_id}/exports", json={"format": "adapter"}).json()["running"]
    exports = wait_for(lambda: client.get(f"/api/runs/{run_id}/exports").json()["exports"], 300, "the export")
    assert exports[0]["name"] == "adapter" and exports[0]["parity"]["passed"] is True
    names = zipfile.ZipFile(io.BytesIO(client.get(f"/api/runs/{run_id}/exports/adapter/download").content)).namelist()
    assert "adapter/adapter_config.json" in names and "adapter/parity.json" in names
    assert client.get(f"/api/runs/{run_id}/exports/%2E%2E/download").status_code == 400
    # chat is for causal LMs: a classification run is refused with a reason, before any model is loaded
    chat = client.post("/api/chat", json={"run": run_id, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "causal-LM" in chat.json()["error"]["message"]
