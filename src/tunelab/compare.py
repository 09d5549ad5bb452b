"""Comparing runs: config differences, metrics side by side, and overlaid loss curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.config import flatten_fields


def config_differences(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The config fields whose values differ between runs (dotted name -> one value per run)."""
    flat = [flatten_fields(c) for c in configs]
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


SUMMARY_COLUMNS = (
    "run",
    "problem",
    "adapter",
    "trainable params",
    "total params",
    "metric",
    "before",
    "after",
    "train time",
    "peak memory",
    "trained tokens/s",
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """What a comparison of methods needs from one run directory (the seed material's full / head-only / PEFT
    table): adapter, trainable and total parameters, the chosen metric before and after, time, memory, speed.

    Raises:
        RunDirError: when ``run_dir`` holds no run.json.
    """
    import yaml

    from tunelab.config import metric_key
    from tunelab.errors import RunDirError

    path = Path(run_dir)
    info = _read_json(path / "run.json")
    if not info:
        raise RunDirError("not a tunelab run directory (no run.json)", file=str(path))
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    metrics = _read_json(path / "metrics.json")
    metric = metric_key(str((config.get("prediction") or {}).get("metric") or "loss"))
    before, after = metrics.get("before", {}), metrics.get("after", {})
    if metric not in after:
        metric = "loss"
    seconds = info.get("train_seconds")
    trained = info.get("trained_tokens")
    return {
        "run": str(config.get("experiment_name") or path.name),
        "problem": info.get("problem_type", "-"),
        "adapter": info.get("adapter", "-"),
        "trainable params": info.get("trainable_parameters"),
        "total params": info.get("total_parameters"),
        "share": info.get("trainable_share"),
        "metric": metric,
        "before": before.get(metric),
        "after": after.get(metric),
        "train time": seconds,
        "peak memory": info.get("peak_memory_gb"),
        "trained tokens/s": trained / seconds if trained and seconds else None,
        "status": info.get("status", "-"),
    }


def summary_cells(row: dict[str, Any]) -> list[str]:
    """One summary row as text, in ``SUMMARY_COLUMNS`` order."""

    def number(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    trainable = row["trainable params"]
    share = f" ({100 * row['share']:.2f}%)" if row.get("share") is not None else ""
    return [
        row["run"] if row["status"] == "finished" else f"{row['run']} ({row['status']})",
        str(row["problem"]),
        str(row["adapter"]),
        ("-" if trainable is None else f"{trainable:,}") + share,
        number(row["total params"], ","),
        row["metric"],
        number(row["before"], ".4g"),
        number(row["after"], ".4g"),
        "-" if row["train time"] is None else f"{row['train time']:.0f} s",
        "-" if row["peak memory"] is None else f"{row['peak memory']:.2f} GB",
        number(row["trained tokens/s"], ".0f"),
    ]
