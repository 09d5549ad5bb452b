"""What a checkpoint was made from (the config and the data files), to refuse resuming something else."""

from __future__ import annotations

from typing import Any

from tunelab.config import RunConfig, flatten_fields
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


def data_sizes(names: list[str]) -> dict[str, int]:
    """Bytes of each local data file (a saved-dataset folder: of all its files), to say how a file changed."""
    from pathlib import Path

    out = {}
    for name in names:
        p = Path(name)
        if p.is_file():
            out[name] = p.stat().st_size
        elif p.is_dir():
            out[name] = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return out


def fingerprints(cfg: RunConfig) -> dict[str, Any]:
    digests = data_digests(cfg)
    return {"config": cfg.to_dict(), "data": digests, "data_sizes": data_sizes(list(digests))}


def describe_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints."""
    changes = []
    old, new = flatten_fields(saved["config"]), flatten_fields(current["config"])
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    for name in sorted(set(saved["data"]) | set(current["data"])):
        if saved["data"].get(name) != current["data"].get(name):
            changes.append(f"data file {name} {_data_change(name, saved, current)}")
    return changes


def _data_change(name: str, saved: dict[str, Any], current: dict[str, Any]) -> str:
    """How one data file differs from when the checkpoint was made: new, no longer read, missing, or changed how."""
    from pathlib import Path

    if name not in saved["data"]:
        return "is new"
    if name not in current["data"]:
        return "is no longer read"
    old, new = saved["data"][name], current["data"][name]
    if new == "hub" and not Path(name).exists():
        return "is missing (it was read from this path when the checkpoint was made)"
    if old == "hub":
        return "is now a local file (it was a hub dataset)"
    old_size, new_size = saved.get("data_sizes", {}).get(name), current.get("data_sizes", {}).get(name)
    hashes = f"SHA-256 {old[:12]}... -> {new[:12]}..."
    if old_size is None:  # a checkpoint of an earlier version recorded no sizes
        return f"changed ({hashes}, now {new_size} bytes)"
    if old_size != new_size:
        return f"changed (size {old_size} -> {new_size} bytes)"
    return f"changed (same size, {new_size} bytes, different content: {hashes})"


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
