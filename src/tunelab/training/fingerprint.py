"""What a checkpoint was made from (the config and the data files), to refuse resuming something else."""

from __future__ import annotations

from typing import Any

from tunelab.config import RunConfig
from tunelab.data.pipeline import file_digest
from tunelab.data.readers import expand_sources
from tunelab.errors import RunDirError


def data_digests(cfg: RunConfig) -> dict[str, str]:
    """SHA-256 of every local data file the config reads (hub datasets are named, not hashed)."""
    from pathlib import Path

    out = {}
    ds = cfg.dataset
    for source in (ds.train_dataframe, ds.validation_dataframe, ds.test_dataframe):
        if not source:
            continue
        for name in expand_sources(source):
            out[name] = file_digest(name) if Path(name).exists() else "hub"
    return out


def fingerprints(cfg: RunConfig) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "data": data_digests(cfg)}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints."""
    changes = []
    old, new = _flatten(saved["config"]), _flatten(current["config"])
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    for name in sorted(set(saved["data"]) | set(current["data"])):
        if saved["data"].get(name) != current["data"].get(name):
            what = "is new" if name not in saved["data"] else "is gone" if name not in current["data"] else "changed"
            changes.append(f"data file {name} {what}")
    return changes


def check_fingerprints(saved: dict[str, Any], current: dict[str, Any], allow_changes: bool, console: Any) -> None:
    """Refuse to resume from a checkpoint made with another config or other data (or warn with allow_changes).

    Raises:
        RunDirError: naming what changed.
    """
    changes = describe_changes(saved, current)
    if not changes:
        return
    if not allow_changes:
        raise RunDirError(
            "cannot resume: " + "; ".join(changes) + " since the checkpoint",
            hint="restore them, or pass --allow-changes to resume anyway",
        )
    console.print("[yellow]resuming with changes[/]: " + "; ".join(changes))
