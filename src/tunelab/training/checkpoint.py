"""Checkpoints that survive a crash: written whole or not at all, and enough to continue exactly.

A checkpoint is a folder ``run_dir/checkpoints/step-000040/`` holding the trained weights, the optimizer and scheduler
states, the RNG states, the training state (step, epoch, position in the epoch, best metric, evaluation history) and
the fingerprints of the config and data. It is written into a hidden temporary folder and renamed into place, so a
run killed at any moment leaves only complete checkpoints; half-written ones are never picked.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.errors import RunDirError
from tunelab.models.adapters import trainable_state

STEP_DIR = re.compile(r"^step-(\d+)$")
FILES = ("weights.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


def checkpoint_root(run_path: Path) -> Path:
    return run_path / "checkpoints"


def list_checkpoints(run_path: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = checkpoint_root(run_path)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = STEP_DIR.match(folder.name)
        if match and all((folder / f).is_file() for f in FILES):
            found.append((int(match.group(1)), folder))
    return sorted(found)


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    run_path: Path,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 0,
    protect: int | None = None,
) -> Path:
    """Write a checkpoint atomically, then drop old ones beyond ``keep`` (never the ``protect`` step).

    Args:
        run_path: the run directory.
        step: the optimizer step just finished.
        model: the model whose trainable tensors are saved.
        optimizer: its optimizer (state saved whole).
        scheduler: the learning-rate scheduler.
        state: JSON-able training state (step, epoch, position, best metric, evaluations, fingerprints).
        keep: how many step checkpoints to keep (0 = all).
        protect: a step never deleted (the best checkpoint).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    root = checkpoint_root(run_path)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    work = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.", dir=root))
    try:
        weights = {k: v.contiguous() for k, v in trainable_state(model).items()}
        save_file(weights, str(work / "weights.safetensors"))
        torch.save(optimizer.state_dict(), work / "optimizer.pt")
        torch.save(scheduler.state_dict(), work / "scheduler.pt")
        torch.save(rng_states(), work / "rng.pt")
        (work / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        for f in work.iterdir():  # on disk before the rename makes the checkpoint visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():
            shutil.rmtree(target)
        os.rename(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if keep > 0:
        old = list_checkpoints(run_path)[:-keep]
        for old_step, folder in old:
            if old_step != protect:
                shutil.rmtree(folder, ignore_errors=True)
    return target


def latest_checkpoint(run_path: Path) -> Path:
    """The newest complete checkpoint of a run.

    Raises:
        RunDirError: when the run has none.
    """
    found = list_checkpoints(run_path)
    if not found:
        raise RunDirError(
            "this run has no complete checkpoint to resume from",
            file=str(run_path),
            hint="checkpoints are written every training.save_steps / save_epochs",
        )
    return found[-1][1]


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states; returns the saved training state."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "weights.safetensors"))
    missing = set(weights) - {name for name, _ in model.named_parameters()}
    if missing:
        raise RunDirError(f"checkpoint weights do not fit the model ({sorted(missing)[:2]})", file=str(folder))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    set_rng_states(torch.load(folder / "rng.pt", weights_only=False))
    return state
