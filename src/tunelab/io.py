"""Small file-system helpers: atomic writes and tunelab's cache folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def user_cache_dir() -> Path:
    """tunelab's cache folder: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab, else ~/.cache/tunelab."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunelab"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path`` in one step.

    A crash while writing leaves the old file (or nothing) in place, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a private, empty folder next to ``target``; when the block succeeds it becomes ``target`` in one rename.

    A crash or an error inside the block leaves the old ``target`` (or nothing), never a half-written folder.

    Args:
        target: the folder to create.
        replace: True: an existing ``target`` is replaced. False (a cache entry): when another process puts ``target``
            in place first, it stays and this folder is dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield work
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(work, target)
        except OSError:
            if replace or not target.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line, flushed to disk so a crash keeps every complete line."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
