"""`tunelab compare` and `tunelab runs compare` with two or more runs: the methods table (full / head-only / LoRA)."""

from __future__ import annotations

import json

from conftest import classification_config
from test_cli import run

from tunelab.compare import run_summary
from tunelab.config import load_config


def test_compare_three_methods(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    dirs = []
    for adapter in ("none", "head_only", "lora"):
        cfg = classification_config(
            tiny_bert, sentiment_csv, tmp_path / "out", experiment_name=adapter, training={"adapter": adapter}
        )
        cfg["training"].update(epochs=1)
        dirs.append(train(load_config(base=cfg)).run_dir)
    rows = [run_summary(d) for d in dirs]
    info = [json.loads((d / "run.json").read_text()) for d in dirs]
    assert [r["adapter"] for r in rows] == ["none", "head_only", "lora"]
    assert rows[0]["trainable params"] == rows[0]["total params"] > rows[2]["trainable params"] > 0
    assert rows[1]["trainable params"] < rows[0]["trainable params"]
    assert all(r["metric"] == "accuracy" and r["before"] is not None and r["after"] is not None for r in rows)
    assert all(i["peak_memory_gb"] > 0.05 and r["trained tokens/s"] > 0 for r, i in zip(rows, info))
    proc = run("compare", *dirs, "--output", tmp_path / "methods.html", "--force")
    assert proc.returncode == 0, proc.stderr
    for needle in ("head_only", "lora", "accuracy", f"{rows[0]['total params']:,}", " GB"):
        assert needle in proc.stdout, (needle, proc.stdout)
    page = (tmp_path / "methods.html").read_text(encoding="utf-8")
    assert page.count("<tr>") == 4 and "trainable params" in page
    listed = run("runs", "compare", "none", "head_only", "lora", "--output-directory", tmp_path / "out")
    assert listed.returncode == 0 and "trained tokens/s" in listed.stdout, listed.stderr
    one = run("compare", dirs[0])
    assert one.returncode == 2 and "at least two runs" in one.stderr
