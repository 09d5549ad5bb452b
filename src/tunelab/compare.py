"""Comparing runs: config differences, metrics side by side, and overlaid loss curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.training.fingerprint import _flatten


def config_differences(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The config fields whose values differ between runs (dotted name -> one value per run)."""
    flat = [_flatten(c) for c in configs]
    keys = sorted(set().union(*flat))
    return {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1}


def read_curve(run_path: Path, key: str = "loss") -> tuple[list[int], list[float]]:
    """(steps, values) of one metric from a run's metrics.jsonl."""
    steps, values = [], []
    path = run_path / "metrics.jsonl"
    if not path.is_file():
        return steps, values
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get(key) is not None:
            steps.append(record["step"])
            values.append(record[key])
    return steps, values


def plot_curves(runs: list[tuple[str, Path]], path: Path, keys: tuple[str, ...] = ("loss", "eval_loss")) -> Path:
    """Overlaid training and validation loss curves of several runs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.2))
    axes = axes if len(keys) > 1 else [axes]
    for ax, key in zip(axes, keys):
        for label, run_path in runs:
            steps, values = read_curve(run_path, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
