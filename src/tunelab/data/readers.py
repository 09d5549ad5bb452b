"""Readers: turn data sources into a stream of records, each knowing where it came from.

Sources: CSV, TSV, JSON (a list of records), JSONL, Parquet, plain text (one document per line, or per file), a gzip
of any of these (``.jsonl.gz``), a folder written by ``datasets.save_to_disk``, several files or a glob, and Hugging
Face hub datasets (``org/name[:config][@split]``, needs the network).

Readers stream — a line, a CSV row or a Parquet batch at a time — so a large file is never held as Python lists.
Every problem is a ``DataError`` naming the file and the row or line.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tunelab.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")
SUPPORTED = TABLE_SUFFIXES + tuple(s + ".gz" for s in TABLE_SUFFIXES if s != ".parquet")


@dataclass(frozen=True)
class Record:
    """One row of a data source and its location (``row`` for tables, ``line`` for line-oriented files)."""

    data: dict[str, Any]
    file: str
    row: int | None = None
    line: int | None = None

    def error(self, what: str, field: str | None = None, hint: str | None = None) -> DataError:
        """A ``DataError`` located at this record."""
        return DataError(what, file=self.file, row=self.row, line=self.line, field=field, hint=hint)

    @property
    def position(self) -> int:
        """The row (or line) number, for reports."""
        return self.row if self.row is not None else (self.line or 0)


def expand_sources(source: str | list[str] | tuple[str, ...]) -> list[str]:
    """The data sources named by ``source``: a path, a glob, a list of those, or a hub dataset name.

    Raises:
        DataError: when a glob matches nothing.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    out: list[str] = []
    for item in items:
        item = str(item)
        if any(ch in item for ch in "*?[") and not Path(item).exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError("the pattern matches no files", file=item, hint="check the folder and the pattern")
            out += matches
        else:
            out.append(item)
    return out


def iter_records(source: str | os.PathLike | list[str] | tuple[str, ...], text_mode: str = "line") -> Iterator[Record]:
    """Stream the records of one or more data sources (see the module docstring for what is accepted).

    Args:
        source: a path, glob, hub dataset name, or a list of those.
        text_mode: for .txt files: "line" = one document per line, "file" = one document per file.

    Yields:
        One ``Record`` per data row; text files give records with a single ``text`` field.

    Raises:
        DataError: when a source is missing, empty, of an unknown type or malformed.
    """
    for name in expand_sources(source):
        yield from _iter_one(name, text_mode)


def _iter_one(name: str, text_mode: str) -> Iterator[Record]:
    path = Path(name)
    folder, _, split = name.rpartition("@")
    if not path.exists() and folder and Path(folder).is_dir():
        yield from _iter_saved_dataset(Path(folder), name, split)
        return
    if not path.exists() and path.is_symlink():
        raise DataError(
            "is a symbolic link that leads nowhere (a loop, or its target is missing)",
            file=name,
            hint="point at the data file itself",
        )
    if not path.exists():
        if is_hub_name(name):
            yield from _iter_hub(name)
            return
        raise DataError(
            "data file not found",
            file=name,
            hint="check the path (relative paths start from the directory you run tunelab in)",
        )
    if path.is_dir():
        yield from _iter_saved_dataset(path, name)
        return
    suffix = _suffix(path)
    if suffix not in SUPPORTED:
        raise DataError(
            f"unsupported file type '{suffix or path.name}'", file=name, hint=f"use one of {', '.join(SUPPORTED)}"
        )
    if path.stat().st_size == 0:
        raise DataError("data file is empty", file=name)
    base = suffix.removesuffix(".gz")
    readers = {
        ".csv": _iter_csv,
        ".tsv": _iter_csv,
        ".json": _iter_json,
        ".jsonl": _iter_jsonl,
        ".parquet": _iter_parquet,
        ".txt": _iter_text,
    }
    count = 0
    try:
        for record in readers[base](path, name, text_mode=text_mode):
            count += 1
            yield record
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"the gzip file is damaged or cut short ({exc})", file=name) from None
    if count == 0:
        raise DataError("data file has no data rows", file=name, hint="a header alone is not data")


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) >= 2:
        return suffixes[-2] + ".gz"
    return suffixes[-1] if suffixes else ""


def is_hub_name(name: str) -> bool:
    """Whether ``name`` looks like a hub dataset (``org/name`` with optional ``:config`` and ``@split``)."""
    base = name.split("@")[0].split(":")[0]
    parts = base.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and "\\" not in name


def _open_text(path: Path) -> TextIO:
    """A text handle that reads UTF-8 (dropping a byte-order mark), through gzip for .gz files."""
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _decode_error(name: str, exc: UnicodeDecodeError, line: int | None) -> DataError:
    return DataError(
        f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x})", file=name, line=line, hint="save the file as UTF-8"
    )


def _iter_csv(path: Path, name: str, **_: Any) -> Iterator[Record]:
    delimiter = "\t" if _suffix(path).startswith(".tsv") else ","
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    line = 0
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader, None)
            line = reader.line_num
            if header is None:
                raise DataError("data file has no header row", file=name)
            header = [h.strip() for h in header]
            if not any(header):
                raise DataError("header row is empty", file=name, line=1)
            _check_header(header, name, delimiter)
            for row_number, values in enumerate(reader, start=1):
                line = reader.line_num
                if not values or values == [""]:
                    continue
                if len(values) != len(header):
                    raise DataError(
                        f"has {len(values)} fields but the header has {len(header)}",
                        file=name,
                        row=row_number,
                        line=line,
                        hint="check the delimiter and quoting"
                        + (" (TSV files are tab-separated)" if delimiter == "\t" else ""),
                    )
                yield Record(dict(zip(header, values)), name, row=row_number)
        except UnicodeDecodeError as exc:
            raise _decode_error(name, exc, line + 1) from None
        except csv.Error as exc:
            raise DataError(f"malformed CSV ({exc})", file=name, line=line + 1) from None


def _check_header(header: list[str], name: str, delimiter: str) -> None:
    seen = set()
    for column in header:
        if column in seen:
            raise DataError(f"column '{column}' appears twice in the header", file=name, line=1, field=column)
        seen.add(column)
    if len(header) == 1:
        other = "," if delimiter == "\t" else "\t"
        if other in header[0] or ";" in header[0]:
            raise DataError(
                f"the header has a single column '{header[0][:60]}'",
                file=name,
                line=1,
                hint="the file seems to use another delimiter: CSV files are comma-separated, .tsv files tab-separated",
            )


def _as_record(obj: Any, name: str, line: int | None = None, row: int | None = None) -> Record:
    if not isinstance(obj, dict):
        raise DataError(
            f"expected a JSON object with named fields, got {_json_type(obj)}", file=name, line=line, row=row
        )
    return Record(obj, name, row=row, line=line)


def _json_type(obj: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(obj), "a number"
    )


def _loads(text: str, name: str, line: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "each line of a .jsonl file must be one complete JSON object" if line else None
        if line is None and "Extra data" in exc.msg:
            hint = "this looks like JSON lines: rename the file to .jsonl"
        raise DataError(
            f"not valid JSON ({exc.msg} at column {exc.colno})",
            file=name,
            line=line if line is not None else exc.lineno,
            hint=hint,
        ) from None
    except RecursionError:
        raise DataError("JSON is nested too deeply", file=name, line=line) from None


def _iter_jsonl(path: Path, name: str, **_: Any) -> Iterator[Record]:
    line = 0
    with _open_text(path) as fh:
        try:
            for line, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                yield _as_record(_loads(text, name, line), name, line=line)
        except UnicodeDecodeError as exc:
            raise _decode_error(name, exc, line + 1) from None


def _iter_json(path: Path, name: str, **_: Any) -> Iterator[Record]:
    # A JSON document has to be parsed whole; use JSON lines for data that does not fit in memory.
    try:
        with _open_text(path) as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise _decode_error(name, exc, None) from None
    obj = _loads(text, name, None)
    if isinstance(obj, dict):
        # {"data": [...]} and similar single-key wrappers are common exports.
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError("expected a list of records (or an object holding one list of records)", file=name)
        obj = lists[0]
    if not isinstance(obj, list):
        raise DataError(f"expected a list of records, got {_json_type(obj)}", file=name)
    for row, item in enumerate(obj, start=1):
        yield _as_record(item, name, row=row)


def _iter_parquet(path: Path, name: str, **_: Any) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        row = 0
        for batch in parquet.iter_batches(batch_size=2048):
            for item in batch.to_pylist():
                row += 1
                yield Record(item, name, row=row)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({str(exc).splitlines()[0]})", file=name) from None


def _iter_text(path: Path, name: str, text_mode: str = "line", **_: Any) -> Iterator[Record]:
    line = 0
    with _open_text(path) as fh:
        try:
            if text_mode == "file":
                text = fh.read()
                if text.strip():
                    yield Record({"text": text}, name, row=1)
                return
            for line, text in enumerate(fh, start=1):
                text = text.rstrip("\r\n")
                if text.strip():
                    yield Record({"text": text}, name, line=line)
        except UnicodeDecodeError as exc:
            raise _decode_error(name, exc, line + 1) from None


def saved_dataset_splits(source: str) -> list[str]:
    """The split names of a folder written by ``DatasetDict.save_to_disk`` (empty for anything else)."""
    path = Path(source) / "dataset_dict.json"
    try:
        splits = json.loads(path.read_text(encoding="utf-8")).get("splits", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [str(s) for s in splits] if isinstance(splits, list) else []


def _iter_saved_dataset(path: Path, name: str, split: str = "") -> Iterator[Record]:
    """A folder written by ``datasets.save_to_disk``: a Dataset, or one split of a DatasetDict (``folder@split``;
    'train' by default)."""
    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError(
            "a folder must be one saved by datasets.save_to_disk",
            file=name,
            hint="point at a data file, or a glob such as 'data/*.jsonl'",
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a broken folder
        raise DataError(f"could not read the saved dataset ({type(exc).__name__}: {exc})", file=name) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split and split not in loaded:
            raise DataError(
                f"the saved DatasetDict has no split '{split}'", file=name, hint=f"its splits: {', '.join(loaded)}"
            )
        loaded = loaded[split or ("train" if "train" in loaded else next(iter(loaded)))]
    elif split:
        raise DataError(f"the saved dataset has no splits (asked for '{split}')", file=name)
    yield from _iter_dataset_rows(loaded, name)


def _iter_dataset_rows(dataset: Any, name: str) -> Iterator[Record]:
    for row, item in enumerate(dataset, start=1):
        yield Record(dict(item), name, row=row)


def _iter_hub(name: str) -> Iterator[Record]:
    """A Hugging Face hub dataset, streamed: ``org/name[:config][@split]`` (split defaults to train)."""
    base, _, split = name.partition("@")
    repo, _, config = base.partition(":")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(
            "hub datasets need the network, and offline mode is on",
            file=name,
            hint="download the data once and point at the local file",
        )
    import datasets

    try:
        stream = datasets.load_dataset(repo, config or None, split=split or "train", streaming=True)
        yield from _iter_dataset_rows(stream, name)
    except DataError:
        raise
    except Exception as exc:  # network errors, unknown repos and splits all surface differently
        raise DataError(
            f"could not load the hub dataset ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            file=name,
            hint="check the name, config and split, and that you are online",
        ) from None


def read_columns(source: str) -> list[str]:
    """The column names of a data source, from its first record."""
    for record in iter_records(source):
        return list(record.data)
    return []
