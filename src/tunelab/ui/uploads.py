"""Uploaded data files: written only into the studio's uploads folder, under a plain safe name, size-limited while
they stream in."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadError(TunelabError):
    """An upload the studio refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, what: str, status: int = 400, **where: Any):
        super().__init__(what, **where)
        self.status = status


def safe_name(name: str) -> str:
    """A plain file name for an upload: no folders, no '..', no hidden files; odd characters become '_'.

    Raises:
        UploadError: for a name with a path in it, or one that is not a data file.
    """
    if not name or "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise UploadError(
            f"'{name}' is not a plain file name", field="name", hint="send the file name only, without folders"
        )
    cleaned = UNSAFE.sub("_", name).lstrip(".")
    if not cleaned or ".." in cleaned:
        raise UploadError(f"'{name}' is not a usable file name", field="name")
    lower = cleaned.lower().removesuffix(".gz")
    if not lower.endswith(DATA_SUFFIXES):
        raise UploadError(
            f"'{name}' is not a data file tunelab reads",
            field="name",
            hint=f"upload one of {', '.join(DATA_SUFFIXES)} (optionally .gz)",
        )
    return cleaned


def inside(folder: Path, path: Path) -> bool:
    """Whether ``path``, with every symlink resolved, lies inside ``folder`` (also resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def free_target(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name-2.ext``... when taken; checked to stay inside ``folder``.

    Raises:
        UploadError: when the folder or the name leads outside the studio's data folder (a symlink).
    """
    stem, dot, suffix = name.partition(".")
    candidate, n = folder / name, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = folder / f"{stem}-{n}{dot}{suffix}"
    if not inside(folder, candidate.parent) or candidate.parent.resolve() != folder.resolve():
        raise UploadError("the upload would be written outside the studio's data folder", status=400, field="name")
    return candidate


async def save_upload(
    chunks: AsyncIterator[bytes], data_dir: Path, name: str, limit: int, declared: int | None = None
) -> Path:
    """Stream an upload into ``data_dir/uploads`` and return where it landed.

    The bytes go to a temporary file in the same folder, renamed into place when complete: an upload cut short or
    refused leaves nothing behind. The limit is enforced while reading, so an oversized body is never held whole.

    Args:
        chunks: the request body, in pieces.
        data_dir: the studio's data folder.
        name: the file name the client gave.
        limit: the most bytes accepted.
        declared: the Content-Length the client announced, if any (refused at once when over the limit).

    Raises:
        UploadError: a bad name (400), a folder escaping the data folder (400) or a body over the limit (413).
    """
    name = safe_name(name)
    folder = data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    if not inside(data_dir, folder):
        raise UploadError("the uploads folder leads outside the studio's data folder", field="name")
    too_big = UploadError(
        f"the file is larger than the upload limit of {limit / 2**20:.0f} MB",
        status=413,
        field="file",
        hint="start the studio with a higher --max-upload-mb, or point to the file on the server instead",
    )
    if declared is not None and declared > limit:
        raise too_big
    fd, tmp = tempfile.mkstemp(prefix=".upload.", dir=folder)
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_big
                fh.write(chunk)
        if size == 0:
            raise UploadError("the file is empty", field="file")
        target = free_target(folder, name)
        os.replace(tmp, target)
        return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def list_uploads(data_dir: Path) -> list[dict[str, Any]]:
    """The uploaded files, newest first."""
    folder = data_dir / "uploads"
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    files.sort(key=lambda p: -p.stat().st_mtime)
    return [{"name": p.name, "path": str(p.resolve()), "bytes": p.stat().st_size} for p in files]
