"""Checkpoints that survive a crash: written whole or not at all, and enough to continue exactly.

A checkpoint is a folder ``run_dir/checkpoints/step-000040/`` holding the trained weights, the optimizer and scheduler
states, the RNG states, the training state (step, epoch, position in the epoch, best metric, evaluation history) and
the fingerprints of the config and data. It is written into a hidden temporary folder and renamed into place, so a
run killed at any moment leaves only complete checkpoints; half-written ones are never picked.

``manifest.json``, written last, holds each file's size and SHA-256. A resume checks it and skips a damaged checkpoint
(a truncated or overwritten file) for the newest intact one. Checkpoints of earlier versions have no manifest: they
are checked for truncation only, and resume with a note.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.errors import RunDirError
from tunelab.io import atomic_dir
from tunelab.models.adapters import trainable_state

STEP_DIR = re.compile(r"^step-(\d+)$")
STALE_DIR = re.compile(r"^\.step-\d+\.")  # the temporary folder of a save that was killed
FILES = ("weights.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
MANIFEST = "manifest.json"


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
    rng: dict[str, Any] | None = None,
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
        rng: the RNG states to save (default: the current ones).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    root = checkpoint_root(run_path)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    with atomic_dir(target) as work:
        weights = {k: v.contiguous() for k, v in trainable_state(model).items()}
        save_file(weights, str(work / "weights.safetensors"))
        torch.save(optimizer.state_dict(), work / "optimizer.pt")
        torch.save(scheduler.state_dict(), work / "scheduler.pt")
        torch.save(rng if rng is not None else rng_states(), work / "rng.pt")
        (work / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        # The manifest comes last: a checkpoint whose files don't match it was damaged after it was written.
        manifest = {"files": {name: _describe(work / name) for name in FILES}}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        for f in work.iterdir():  # on disk before the rename makes the checkpoint visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)
    remove_stale(run_path)
    if keep > 0:
        old = list_checkpoints(run_path)[:-keep]
        for old_step, folder in old:
            if old_step != protect:
                shutil.rmtree(folder, ignore_errors=True)
    return target


def _describe(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale(run_path: Path) -> list[str]:
    """Delete the temporary folders of saves that were killed half-way; returns their names."""
    root = checkpoint_root(run_path)
    if not root.is_dir():
        return []
    stale = [folder for folder in root.iterdir() if folder.is_dir() and STALE_DIR.match(folder.name)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return [folder.name for folder in stale]


def verify_checkpoint(folder: Path) -> tuple[bool, str | None]:
    """Whether a checkpoint's files are as they were written, and a note on what is wrong or unchecked.

    Returns:
        (True, None) for a checkpoint matching its manifest; (True, note) for one of an earlier version without a
        manifest that looks whole; (False, reason) for a damaged one.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        problem = _legacy_problem(folder)
        if problem:
            return False, problem
        return True, "it has no checksums (written by an earlier tunelab version): resuming without verifying them"
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"its {MANIFEST} is unreadable"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return False, f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return False, f"{name} is {size} bytes, {expected['size']} when written (truncated or overwritten)"
        if _sha256(path) != expected["sha256"]:
            return False, f"{name} does not match its SHA-256 checksum (its bytes changed after it was written)"
    return True, None


def _legacy_problem(folder: Path) -> str | None:
    """What is visibly wrong with a checkpoint that has no manifest: a truncated weights file or torch archive."""
    weights = folder / "weights.safetensors"
    size = weights.stat().st_size
    try:
        with open(weights, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len)) if 0 < header_len <= size - 8 else None
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict):
        return "weights.safetensors has no readable header (truncated or overwritten)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + header_len + end:
        return f"weights.safetensors is {size} bytes, its header says {8 + header_len + end} (truncated)"
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        if not zipfile.is_zipfile(folder / name):
            return f"{name} is not a whole torch archive (truncated)"
    try:
        json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "state.json is unreadable"
    return None


def latest_checkpoint(run_path: Path, say: Callable[[str], None] | None = None) -> Path:
    """The newest intact checkpoint of a run; each newer damaged one is skipped with a line saying why.

    Args:
        run_path: the run directory.
        say: where the lines about skipped or unverified checkpoints go.

    Raises:
        RunDirError: when the run has no checkpoint, or none is intact.
    """
    found = list_checkpoints(run_path)
    if not found:
        raise RunDirError(
            "this run has no complete checkpoint to resume from",
            file=str(run_path),
            hint="checkpoints are written every training.save_steps / save_epochs",
        )
    damaged = []
    for _, folder in reversed(found):
        ok, note = verify_checkpoint(folder)
        if ok:
            if note and say:
                say(f"checkpoint {folder.name}: {note}")
            return folder
        damaged.append(f"{folder.name}: {note}")
        if say:
            say(f"skipping damaged checkpoint {folder.name}: {note}")
    raise RunDirError(
        "no intact checkpoint to resume from (" + "; ".join(damaged) + ")",
        file=str(run_path),
        hint="start the run again with --force",
    )


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


class CheckpointWriter:
    """The newest consistent state of a run, written as a checkpoint every ``save_every`` steps or on a stop.

    ``mark()`` records what a checkpoint would hold at a point where the run is consistent: right after a training
    step (``pending``: that step's evaluation and log record are still to come, and a resume does them first), and
    again once they are done. A stop in any phase writes the last mark unless a checkpoint of that step exists, so
    no finished step is lost and none is half-saved.
    """

    def __init__(self, s: Any, run_path: Path, fingerprints: dict[str, Any], saved_step: int = 0):
        self.s = s
        self.run_path = run_path
        self.fingerprints = fingerprints
        self.saved_step = saved_step  # the step of the newest checkpoint on disk (0: none yet, or a fresh run)
        self.evaluator: Any = None
        self.payload: dict[str, Any] | None = None
        self.rng: dict[str, Any] | None = None

    @property
    def step(self) -> int:
        return self.payload["train_state"]["step"] if self.payload else 0

    def mark(self, state: Any, evaluator: Any, logger: Any, pending: bool = False) -> None:
        self.evaluator = evaluator
        self.payload = {
            "train_state": state.to_dict(),
            "evaluator": evaluator.to_state(),
            "logger": logger.to_state(),
            "fingerprints": self.fingerprints,
            "pending": pending,
        }
        self.rng = rng_states()

    def save(self, barrier: bool = True) -> None:
        """Write the last mark (on the main process; the others wait unless ``barrier`` is off)."""
        assert self.payload is not None
        if self.s.accelerator.is_main_process:
            save_checkpoint(
                self.run_path,
                self.step,
                self.s.model,
                self.s.optimizer,
                self.s.scheduler,
                self.payload,
                keep=self.s.cfg.training.save_total_limit,
                rng=self.rng,
            )
        self.saved_step = self.step
        if barrier:
            self.s.accelerator.wait_for_everyone()

    def save_on_stop(self, mid_step: bool) -> bool:
        """On a stop: write the last mark when a step finished since the last checkpoint; whether one was written.

        Nothing is written when the stop cut a step in two, or after the best weights replaced the trained ones.
        """
        if self.payload is None or self.step <= self.saved_step or mid_step:
            return False
        if getattr(self.evaluator, "loaded_best", False):
            return False
        self.save(barrier=False)  # the other processes may be stopping elsewhere
        return True
