"""Readers: turn a data file into a stream of records, each knowing where it came from.

Readers stream (a row at a time, or a Parquet batch at a time) so a large file is never held as Python lists. Every
problem is raised as a ``DataError`` naming the file and the row or line.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

SUPPORTED = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Record:
    """One row of a data file and its location (``row`` for tables, ``line`` for line-oriented files)."""

    data: dict[str, Any]
    file: str
    row: int | None = None
    line: int | None = None

    def error(self, what: str, field: str | None = None, hint: str | None = None) -> DataError:
        """A ``DataError`` located at this record."""
        return DataError(what, file=self.file, row=self.row, line=self.line, field=field, hint=hint)


def iter_records(path: str | Path) -> Iterator[Record]:
    """Stream the records of one data file.

    Args:
        path: a .csv, .tsv, .json, .jsonl or .parquet file.

    Yields:
        One ``Record`` per data row.

    Raises:
        DataError: when the file is missing, empty, of an unknown type or malformed.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise DataError(
            "data file not found",
            file=name,
            hint="check the path (relative paths start from the directory you run tunelab in)",
        )
    if path.is_dir():
        raise DataError("expected a data file, got a folder", file=name)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise DataError(
            f"unsupported file type '{suffix or path.name}'", file=name, hint=f"use one of {', '.join(SUPPORTED)}"
        )
    if path.stat().st_size == 0:
        raise DataError("data file is empty", file=name)
    readers = {
        ".csv": _iter_csv,
        ".tsv": _iter_csv,
        ".json": _iter_json,
        ".jsonl": _iter_jsonl,
        ".parquet": _iter_parquet,
    }
    count = 0
    for record in readers[suffix](path, name):
        count += 1
        yield record
    if count == 0:
        raise DataError("data file has no data rows", file=name, hint="a header alone is not data")


def _decode_error(name: str, exc: UnicodeDecodeError, line: int | None) -> DataError:
    return DataError(
        f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x})", file=name, line=line, hint="save the file as UTF-8"
    )


def _iter_csv(path: Path, name: str) -> Iterator[Record]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    line = 0
    # utf-8-sig drops a leading byte-order mark; newline="" lets csv handle CRLF and quoted newlines.
    with open(path, encoding="utf-8-sig", newline="") as fh:
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


def _iter_jsonl(path: Path, name: str) -> Iterator[Record]:
    line = 0
    with open(path, encoding="utf-8-sig") as fh:
        try:
            for line, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"not valid JSON ({exc.msg} at column {exc.colno})",
                        file=name,
                        line=line,
                        hint="each line of a .jsonl file must be one complete JSON object",
                    ) from None
                yield _as_record(obj, name, line=line)
        except UnicodeDecodeError as exc:
            raise _decode_error(name, exc, line + 1) from None


def _iter_json(path: Path, name: str) -> Iterator[Record]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            obj = json.load(fh)
    except UnicodeDecodeError as exc:
        raise _decode_error(name, exc, None) from None
    except json.JSONDecodeError as exc:
        hint = "this looks like JSON lines: rename the file to .jsonl" if "Extra data" in exc.msg else None
        raise DataError(f"not valid JSON ({exc.msg})", file=name, line=exc.lineno, hint=hint) from None
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


def _iter_parquet(path: Path, name: str) -> Iterator[Record]:
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


def read_columns(path: str | Path) -> list[str]:
    """The column names of a data file, from its first record."""
    for record in iter_records(path):
        return list(record.data)
    return []
