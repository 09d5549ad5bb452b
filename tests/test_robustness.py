"""Never lose work: checksummed checkpoints and the fallback past a damaged one, SIGTERM / SIGINT in every phase,
an unusable output directory, a diverging loss, and what a resume says about changed data."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import causal_config
from rich.console import Console
from test_cli import TUNELAB, assert_one_line_error, write_config

from tunelab.config import load_config
from tunelab.errors import ConfigError, RunDirError
from tunelab.training.checkpoint import list_checkpoints, save_checkpoint
from tunelab.training.guards import TrainingFailed, TrainingStopped
from tunelab.training.loop import train


class SignalNotHandled(AssertionError):
    pass


@pytest.fixture(autouse=True)
def signals_reach_the_test():
    """A signal tunelab does not handle fails the test instead of killing pytest."""

    def handler(signum, frame):
        raise SignalNotHandled(f"{signal.Signals(signum).name} was not handled by tunelab")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, old in previous.items():
        signal.signal(sig, old)


@pytest.fixture
def base(tiny_llama, qa_jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return causal_config(
        tiny_llama,
        qa_jsonl,
        tmp_path / "out",
        training={
            "max_steps": 3,
            "batch_size": 4,
            "logging_steps": 1,
            "save_steps": 1,
            "save_total_limit": 3,
            "evaluate_before_training": False,
            "eval_steps": 2,
            "learning_rate": 5e-3,
        },
        prediction={"max_length_inference": 2},
    )


def with_training(cfg: dict, **training) -> dict:
    return dict(cfg, training=dict(cfg["training"], **training))


def quiet() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=400), out


def status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def busy(seconds: float, counter: dict) -> None:
    """Stand-in for a long phase: counts its slices, so a test sees whether it ran to the end."""
    for _ in range(int(seconds / 0.01)):
        counter["slices"] = counter.get("slices", 0) + 1
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------- checkpoints
def _tiny_checkpoint(root: Path, step: int, keep: int = 0) -> Path:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return save_checkpoint(root, step, model, optimizer, scheduler, {"train_state": {"step": step}}, keep=keep)


def test_checkpoint_manifest_catches_truncated_and_overwritten_files(tmp_path):
    from tunelab.training.checkpoint import verify_checkpoint

    folder = _tiny_checkpoint(tmp_path, 1)
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    weights = folder / "weights.safetensors"
    assert manifest["weights.safetensors"]["size"] == weights.stat().st_size
    assert verify_checkpoint(folder) == (True, None)
    data = bytearray(weights.read_bytes())
    data[-8:] = os.urandom(8)  # same size, other bytes: loads silently without a checksum
    weights.write_bytes(bytes(data))
    ok, why = verify_checkpoint(folder)
    assert not ok and "weights.safetensors" in why and "SHA-256" in why
    weights.write_bytes(bytes(data[:-20]))
    ok, why = verify_checkpoint(folder)
    assert not ok and "truncated" in why and str(len(data)) in why


def test_checkpoint_without_manifest_is_checked_for_truncation(tmp_path):
    from tunelab.training.checkpoint import verify_checkpoint

    folder = _tiny_checkpoint(tmp_path, 1)
    (folder / "manifest.json").unlink()  # as written by an earlier version
    ok, note = verify_checkpoint(folder)
    assert ok and "no checksums" in note
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    ok, why = verify_checkpoint(folder)
    assert not ok and "truncated" in why
    _tiny_checkpoint(tmp_path, 2)
    legacy = tmp_path / "checkpoints" / "step-000002"
    (legacy / "manifest.json").unlink()
    optimizer = legacy / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    ok, why = verify_checkpoint(legacy)
    assert not ok and "optimizer.pt" in why


def test_retention_removes_temporary_folders_of_killed_saves(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / ".step-000007.k1ll3d").mkdir()  # a save killed half-way
    ((root / ".step-000007.k1ll3d") / "optimizer.pt").write_bytes(b"half")
    _tiny_checkpoint(tmp_path, 1, keep=2)
    _tiny_checkpoint(tmp_path, 2, keep=2)
    _tiny_checkpoint(tmp_path, 3, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000003"]


def test_resume_skips_damaged_checkpoints_and_stops_in_one_line_when_none_is_intact(base):
    cfg = load_config(base=base)
    run_dir = train(cfg).run_dir
    expected = adapter(run_dir)
    newest = run_dir / "checkpoints" / "step-000003"
    stale = run_dir / "checkpoints" / ".step-000004.x"
    stale.mkdir()

    weights = newest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    console, out = quiet()
    train(cfg, console=console, resume_from=run_dir)
    text = out.getvalue()
    assert "skipping damaged checkpoint step-000003" in text and "truncated" in text
    assert "from step 2" in text and not stale.exists()
    assert all(torch.equal(expected[k], v) for k, v in adapter(run_dir).items())  # the same result as before
    assert status(run_dir) == "finished"

    weights = newest / "weights.safetensors"  # written again by the resumed run
    data = bytearray(weights.read_bytes())
    data[-64:] = os.urandom(64)  # random bytes, same size
    weights.write_bytes(bytes(data))
    console, out = quiet()
    train(cfg, console=console, resume_from=run_dir)
    assert "step-000003" in out.getvalue() and "SHA-256" in out.getvalue() and "from step 2" in out.getvalue()
    assert all(torch.equal(expected[k], v) for k, v in adapter(run_dir).items())

    for _, folder in list_checkpoints(run_dir):
        (folder / "weights.safetensors").write_bytes(b"\0" * 10)
    proc = subprocess.run([TUNELAB, "train", "--resume", run_dir], capture_output=True, text=True, timeout=600)
    assert_one_line_error(proc, "no intact checkpoint", "step-000001", "step-000003")


def test_checkpoint_of_an_earlier_version_resumes_with_a_note(base):
    cfg = load_config(base=with_training(base, max_steps=2))
    run_dir = train(cfg).run_dir
    for _, folder in list_checkpoints(run_dir):
        (folder / "manifest.json").unlink()
    console, out = quiet()
    train(cfg, console=console, resume_from=run_dir)
    assert "checkpoint step-000002: it has no checksums" in out.getvalue() and "from step 2" in out.getvalue()


# ---------------------------------------------------------------------------------------------- signals
def kill_self(sig: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), sig)


def test_sigterm_during_data_check_stops_before_anything_is_written(base, monkeypatch):
    import tunelab.training.setup as setup_module

    counter: dict = {}
    original = setup_module.enforce

    def slow_check(report, cfg):
        kill_self()
        busy(5, counter)
        return original(report, cfg)

    monkeypatch.setattr(setup_module, "enforce", slow_check)
    cfg = load_config(base=base)
    with pytest.raises(TrainingStopped) as err:
        train(cfg)
    assert err.value.exit_code == 143 and "SIGTERM before the first training step" in str(err.value)
    assert counter.get("slices", 0) < 100 and not cfg.run_dir.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_training_step_finishes_it_and_checkpoints_it(base, monkeypatch, sig):
    from tunelab.problems.causal_lm import CausalLMProblem

    original, calls = CausalLMProblem.loss, {"n": 0}

    def signalling(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 3:  # inside step 3 (one micro-batch per step)
            kill_self(sig)
        return original(self, model, batch)

    monkeypatch.setattr(CausalLMProblem, "loss", signalling)
    cfg = load_config(base=with_training(base, max_steps=40, save_steps=0, save_epochs=0, eval_steps=3))
    with pytest.raises(TrainingStopped) as err:
        train(cfg)
    assert err.value.exit_code == 128 + sig and "tunelab train --resume" in str(err.value)
    assert [step for step, _ in list_checkpoints(cfg.run_dir)] == [3]
    saved = json.loads((cfg.run_dir / "checkpoints" / "step-000003" / "state.json").read_text())
    assert saved["pending"]  # stopped before step 3's evaluation: a resume does it first
    assert status(cfg.run_dir) == "stopped"


def test_sigterm_during_evaluation_stops_at_once_and_resume_matches_the_uninterrupted_run(base, monkeypatch):
    from tunelab.problems.causal_lm import CausalLMProblem

    settings = with_training(base, max_steps=4, save_steps=0, save_epochs=0)
    reference = train(load_config(base=dict(settings, experiment_name="reference"))).run_dir
    original, counter = CausalLMProblem.validation_loss, {}

    def slow_evaluation(self, model, split):
        kill_self()
        busy(5, counter)
        return original(self, model, split)

    monkeypatch.setattr(CausalLMProblem, "validation_loss", slow_evaluation)
    cfg = load_config(base=settings)
    started = time.perf_counter()
    with pytest.raises(TrainingStopped) as err:
        train(cfg)
    assert err.value.exit_code == 143 and counter.get("slices", 0) < 100, f"{time.perf_counter() - started:.1f} s"
    assert [step for step, _ in list_checkpoints(cfg.run_dir)] == [2]  # the step finished before the evaluation
    assert status(cfg.run_dir) == "stopped"
    monkeypatch.setattr(CausalLMProblem, "validation_loss", original)
    train(cfg, resume_from=cfg.run_dir)
    assert status(cfg.run_dir) == "finished"
    got, want = records(cfg.run_dir), records(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    assert [r["step"] for r in got if "eval_loss" in r] == [r["step"] for r in want if "eval_loss" in r] == [2, 4]
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a.get("eval_loss", 0) == pytest.approx(b.get("eval_loss", 0), abs=1e-6)


def test_sigterm_during_generation_stops_between_tokens(base, monkeypatch):
    from transformers import LlamaForCausalLM
    from transformers.generation.utils import GenerationMixin

    generate, forward, calls = GenerationMixin.generate, LlamaForCausalLM.forward, {"generating": False, "tokens": 0}

    def counting_generate(self, *args, **kwargs):
        calls["generating"] = True
        try:
            return generate(self, *args, **kwargs)
        finally:
            calls["generating"] = False

    def counting_forward(self, *args, **kwargs):
        if calls["generating"]:
            calls["tokens"] += 1
            if calls["tokens"] == 3:  # the third token of the first answer
                kill_self()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", counting_generate)
    monkeypatch.setattr(LlamaForCausalLM, "forward", counting_forward)
    settings = with_training(base, save_steps=0, save_epochs=0)
    prediction = {"max_length_inference": 20, "min_length_inference": 20, "batch_size_inference": 1}
    with pytest.raises(TrainingStopped) as err:
        train(load_config(base=dict(settings, prediction=prediction)))
    assert err.value.exit_code == 143 and calls["tokens"] == 3  # not the other 97 tokens of 5 answers
    run_dir = Path(base["output_directory"]) / base["experiment_name"]
    assert [step for step, _ in list_checkpoints(run_dir)] == [2] and status(run_dir) == "stopped"


def test_sigterm_during_export_removes_the_half_written_export(base, monkeypatch):
    import tunelab.infer.export as export_module

    run_dir = train(load_config(base=with_training(base, max_steps=1))).run_dir
    counter: dict = {}
    original = export_module._write

    def slow_write(fmt, loaded, folder, *args):
        (folder / "model.safetensors").write_bytes(b"half")
        kill_self()
        busy(5, counter)
        return original(fmt, loaded, folder, *args)

    monkeypatch.setattr(export_module, "_write", slow_write)
    with pytest.raises(export_module.ExportError) as err:
        export_module.export_run(run_dir, "merged")
    assert err.value.exit_code == 143 and counter.get("slices", 0) < 100
    exports = run_dir / "exports"
    assert not exports.exists() or not any(exports.iterdir())


def test_cli_sigterm_while_generating_validation_answers_ends_within_30_s_and_resumes(tiny_llama, qa_jsonl, tmp_path):
    """`timeout`, SLURM and Kubernetes send SIGTERM, then SIGKILL 30-60 s later: the run must be saved by then."""
    cfg = causal_config(
        tiny_llama,
        qa_jsonl,
        tmp_path / "out",
        training={
            "max_steps": 4,
            "batch_size": 4,
            "evaluate_before_training": False,
            "eval_steps": 2,
            "save_epochs": 0,
        },
        prediction={"max_length_inference": 400, "min_length_inference": 400, "batch_size_inference": 1},
    )
    config = write_config(tmp_path / "c.yaml", cfg)
    run_dir = tmp_path / "out" / "causal"
    env = dict(os.environ, TUNELAB_CACHE=str(tmp_path / "cache"))
    child = subprocess.Popen(
        [TUNELAB, "train", config], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    for line in child.stdout:  # 5 answers of 400 tokens each: far longer than the test waits
        if "evaluating (during training)" in line:
            break
    time.sleep(1.0)
    assert child.poll() is None, "the evaluation ended before the signal"
    sent = time.perf_counter()
    child.send_signal(signal.SIGTERM)
    try:
        _, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail("still running 60 s after SIGTERM")
    seconds = time.perf_counter() - sent
    assert child.returncode == 143, err[-2000:]
    assert seconds < 30, f"took {seconds:.1f} s after SIGTERM"
    assert "Traceback" not in err and f"tunelab train --resume {run_dir}" in err
    assert status(run_dir) == "stopped" and [s for s, _ in list_checkpoints(run_dir)] == [2]
    proc = subprocess.run(
        [TUNELAB, "train", "--resume", run_dir, "--allow-changes"]
        + ["--set", "prediction.max_length_inference=2", "--set", "prediction.min_length_inference=0"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert status(run_dir) == "finished" and [r["step"] for r in records(run_dir)] == [2, 4]
    print(f"SIGTERM during generation: exit 143 after {seconds:.2f} s")


# ---------------------------------------------------------------------------------------------- output directory
@pytest.mark.parametrize("where", ["under_a_file", "proc", "sys"])
def test_unusable_output_directory_fails_in_one_line_before_reading_data(tiny_llama, tmp_path, where):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = {"under_a_file": a_file / "out", "proc": Path("/proc/tunelab-test/out"), "sys": Path("/sys/tunelab-test")}
    # The data file does not exist: the output directory must be judged first.
    cfg = causal_config(tiny_llama, tmp_path / "missing.jsonl", out[where])
    started = time.perf_counter()
    proc = subprocess.run([TUNELAB, "train", write_config(tmp_path / "c.yaml", cfg)], capture_output=True, text=True)
    line = assert_one_line_error(proc, str(out[where]))
    assert "missing.jsonl" not in line and ("cannot" in line), line
    assert time.perf_counter() - started < 60


# ---------------------------------------------------------------------------------------------- divergence
def test_a_loss_growing_past_the_limit_stops_the_run_naming_the_learning_rate(base, monkeypatch):
    from tunelab.problems.causal_lm import CausalLMProblem

    original, calls = CausalLMProblem.loss, {"n": 0}

    def diverging(self, model, batch):
        calls["n"] += 1
        loss_sum, count = original(self, model, batch)
        return loss_sum * (1 + 20 * max(0, calls["n"] - 6)), count  # 20x its start more with each step after 6

    monkeypatch.setattr(CausalLMProblem, "loss", diverging)
    cfg = load_config(base=with_training(base, max_steps=30, save_steps=2, eval_steps=0))
    with pytest.raises(TrainingFailed) as err:
        train(cfg)
    message = str(err.value)
    assert err.value.exit_code == 3 and "diverged" in message
    assert "training.learning_rate" in message and "max_loss_growth" in message
    stopped_at = int(message.split("at step ")[1].split(":")[0])
    assert 7 < stopped_at < 12
    assert status(cfg.run_dir) == "failed" and list_checkpoints(cfg.run_dir)[-1][0] < stopped_at

    calls["n"] = 0
    off = load_config(base=dict(with_training(base, max_steps=12, max_loss_growth=0), experiment_name="off"))
    assert train(off).metrics["after"]["loss"] > 0


def test_max_loss_growth_is_a_factor_above_one_or_zero(base):
    with pytest.raises(ConfigError, match="max_loss_growth"):
        load_config(base=with_training(base, max_loss_growth=0.5))
    assert load_config(base=with_training(base, max_loss_growth=0)).training.max_loss_growth == 0


# ---------------------------------------------------------------------------------------------- changed data
def test_resume_says_how_a_data_file_changed(base, qa_jsonl, tmp_path):
    data = tmp_path / "data.jsonl"
    text = qa_jsonl.read_text()
    data.write_text(text)
    cfg = load_config(base=dict(base, dataset=dict(base["dataset"], train_dataframe=str(data))))
    run_dir = train(cfg).run_dir

    data.write_text(text.replace("what", "WHAT", 1))  # same size, other bytes
    with pytest.raises(RunDirError) as err:
        train(cfg, resume_from=run_dir)
    assert "data.jsonl changed (same size" in str(err.value) and "SHA-256" in str(err.value)

    data.write_text(text + text.splitlines()[0] + "\n")
    with pytest.raises(RunDirError) as err:
        train(cfg, resume_from=run_dir)
    grown = len((text + text.splitlines()[0] + "\n").encode())
    assert f"data.jsonl changed (size {len(text.encode())} -> {grown} bytes)" in str(err.value)

    data.unlink()
    with pytest.raises(RunDirError) as err:
        train(cfg, resume_from=run_dir)
    assert "data.jsonl is missing" in str(err.value)
