"""Standard logs: TensorBoard under the Hugging Face Trainer's names, MLflow (local SQLite store) and W&B (offline),
read back with each tool's own reader from one shared tiny run."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path

import pytest
from conftest import causal_config

from tunelab.config import load_config

TAGS = ("train/loss", "train/grad_norm", "train/epoch", "train/learning_rate", "eval/loss")


def needs(package: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None,
        reason=f"{package} is not installed (pip install 'tunelab[trackers]')",
    )


@pytest.fixture(scope="module")
def tracked_cfg(tiny_llama, tmp_path_factory):
    """The config of a tiny causal-LM run logging to every tracker, with the trackers' environment of a test."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("trackers")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_PROJECT"):
        mp.delenv(name, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for name in ("CACHE", "CONFIG", "DATA"):
        mp.setenv(f"WANDB_{name}_DIR", str(root / f"wandb-{name.lower()}"))
    mp.setenv("TUNELAB_CACHE", str(root / "cache"))
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}"}) + "\n" for i in range(16)))
    yield causal_config(
        tiny_llama,
        data,
        root / "out",
        experiment_name="tracked",
        training={"epochs": 2, "batch_size": 4, "logging_steps": 1, "eval_steps": 2, "gradient_clip": 1.0},
        prediction={"max_length_inference": 2},
        environment={"seed": 1, "trackers": ["tensorboard", "mlflow", "wandb"]},
    )
    mp.undo()


@pytest.fixture(scope="module")
def tracked_run(tracked_cfg):
    """One shared run of ``tracked_cfg``."""
    from tunelab.training.loop import train

    return train(load_config(base=tracked_cfg))


def test_metrics_jsonl_keeps_its_keys_and_gains_grad_norm(tracked_run):
    records = [json.loads(line) for line in (tracked_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert train and all(
        {"step", "epoch", "loss", "learning_rate", "tokens_per_s", "trained_tokens_per_s", "grad_norm"} <= set(r)
        for r in train
    )
    assert all(r["grad_norm"] > 0 and math.isfinite(r["grad_norm"]) for r in train)


def test_tensorboard_has_the_trainer_tags(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run.run_dir / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(TAGS) <= tags, tags
    values = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in TAGS}
    assert all(v > 0 and math.isfinite(v) for _, v in values["train/grad_norm"])
    assert all(math.isfinite(v) for _, v in values["train/loss"] + values["eval/loss"])
    epochs = [v for _, v in values["train/epoch"]]
    assert epochs == sorted(epochs) and epochs[0] <= 0.5 and epochs[-1] == pytest.approx(2.0)
    assert [s for s, _ in values["train/loss"]] == list(range(1, len(values["train/loss"]) + 1))
    assert all(v > 0 for _, v in values["train/learning_rate"][:-1])


@needs("mlflow")
def test_mlflow_run_has_params_metrics_and_artifacts(tracked_run):
    from mlflow.tracking import MlflowClient

    out = tracked_run.run_dir.parent
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    info = json.loads((tracked_run.run_dir / "run.json").read_text())
    run = client.get_run(info["trackers"]["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.info.experiment_id == client.get_experiment_by_name("tunelab").experiment_id
    params = run.data.params
    assert float(params["training.learning_rate"]) == 1e-2 and params["environment.trackers"].startswith("[")
    assert set(TAGS) <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, len(history) + 1))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.html", "metrics.json", "config.yaml"}
    assert (out / "mlartifacts").is_dir()


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (LevelDB log format: 32 KiB blocks of CRC, length, type, data)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


@needs("wandb")
def test_wandb_offline_run_has_config_history_and_files(tracked_run):
    folders = list((tracked_run.run_dir / "logs" / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    info = json.loads((tracked_run.run_dir / "run.json").read_text())
    assert folders[0].name.endswith(info["trackers"]["wandb"])
    records = wandb_records(next(folders[0].glob("run-*.wandb")))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["training"]["learning_rate"] == 1e-2
    history: dict[str, list] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                history.setdefault(key, []).append((items["_step"], value))
    assert set(TAGS) <= set(history), sorted(history)
    assert all(v > 0 for _, v in history["train/grad_norm"])
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]
    files = {p.name for p in (folders[0] / "files").iterdir()}
    assert {"report.html", "metrics.json", "config.yaml"} <= files


def test_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    """A listed tracker that is not installed: one line naming the install command, and TensorBoard goes on."""
    import sys

    from rich.console import Console

    from tunelab.rundir import RunDirectory
    from tunelab.training.logger import Trackers

    for name in ("mlflow", "mlflow.tracking", "mlflow.entities", "wandb"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    console = Console(record=True, width=200)
    trackers = Trackers(RunDirectory(tmp_path), ["tensorboard", "mlflow", "wandb"], {}, console)
    trackers.log({"train/loss": 1.0}, 1)
    trackers.finish()
    text = console.export_text()
    assert "mlflow is not installed" in text and "wandb is not installed" in text
    assert text.count("pip install 'tunelab[trackers]'") == 2
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


@needs("mlflow")
@needs("wandb")
def test_failed_run_ends_its_tracker_runs_once_as_failed(tracked_cfg, tracked_run):
    """A run that fails after its first evaluation: the MLflow run ends FAILED, the W&B run with exit code 1, once."""
    from mlflow.tracking import MlflowClient

    from tunelab.training.loop import train

    def fail(step, metrics):
        raise RuntimeError("stop here")

    cfg = load_config(base=dict(tracked_cfg, experiment_name="failing"))
    with pytest.raises(RuntimeError, match="stop here"):
        train(cfg, on_eval=fail)
    info = json.loads((cfg.run_dir / "run.json").read_text())
    assert info["status"] == "failed"
    client = MlflowClient(f"sqlite:///{cfg.run_dir.parent / 'mlflow.db'}")
    run = client.get_run(info["trackers"]["mlflow"])
    assert run.info.status == "FAILED" and run.info.run_name == "failing"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml"}
    (folder,) = (cfg.run_dir / "logs" / "wandb").glob("offline-run-*")
    records = wandb_records(next(folder.glob("run-*.wandb")))
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1]


def test_mlflow_params_fit_mlflow_limits():
    from tunelab.training.logger import mlflow_params

    params = mlflow_params({"a": {"b c": [1, 2], "long": "x" * 7000, "none": None}, "k" * 300: 1, "bad:key": "v"})
    assert params["a.b c"] == "[1, 2]" and params["a.none"] == "null"
    assert len(params["a.long"]) == 6000 and params["a.long"].endswith("...")
    assert max(len(k) for k in params) == 250 and "bad_key" in params


def test_test_metrics_are_logged_at_the_end(tmp_path):
    """metrics.json's test metrics go to the trackers as test/<metric> at the last step, when the run ends."""
    from rich.console import Console
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tunelab.rundir import RunDirectory
    from tunelab.training.logger import Trackers

    trackers = Trackers(RunDirectory(tmp_path), ["tensorboard"], {}, Console(quiet=True))
    trackers.log({"train/loss": 1.0}, 7)
    (tmp_path / "metrics.json").write_text(json.dumps({"after": {"loss": 1.0}, "test": {"loss": 0.5, "x": None}}))
    trackers.finish()
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("test/loss")] == [(7, 0.5)]
    assert "test/x" not in events.Tags()["scalars"]
