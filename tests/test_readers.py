"""Readers: every supported format loads, every malformed file fails with file and row."""

from __future__ import annotations

import json

import pytest

from tunelab.data.readers import iter_records, read_columns
from tunelab.errors import DataError


def rows(path):
    return [r.data for r in iter_records(path)]


def test_csv_with_quotes_and_newlines(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('q,a\n"hello, world","two\nlines"\nx,y\n', encoding="utf-8")
    assert rows(path) == [{"q": "hello, world", "a": "two\nlines"}, {"q": "x", "a": "y"}]


def test_tsv_with_crlf_and_bom(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes("\ufefflabel\tsentence\r\n0\tbad film\r\n1\tgood film\r\n".encode("utf-8"))
    assert rows(path) == [{"label": "0", "sentence": "bad film"}, {"label": "1", "sentence": "good film"}]


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"q": "a"}\n\n{"q": "b"}\n', encoding="utf-8")
    records = list(iter_records(path))
    assert [r.data["q"] for r in records] == ["a", "b"]
    assert [r.line for r in records] == [1, 3]


def test_json_list_and_wrapped_list(tmp_path):
    plain = tmp_path / "a.json"
    plain.write_text(json.dumps([{"q": 1}, {"q": 2}]))
    wrapped = tmp_path / "b.json"
    wrapped.write_text(json.dumps({"data": [{"q": 1}]}))
    assert rows(plain) == [{"q": 1}, {"q": 2}]
    assert rows(wrapped) == [{"q": 1}]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"q": ["a", "b"], "n": [1, 2]}), path)
    assert rows(path) == [{"q": "a", "n": 1}, {"q": "b", "n": 2}]
    assert read_columns(path) == ["q", "n"]


@pytest.mark.parametrize(
    "name,content,expect",
    [
        ("empty.jsonl", b"", "empty"),
        ("header.csv", b"q,a\n", "no data rows"),
        ("bad.jsonl", b'{"q": 1}\n{"q": \n', "line 2"),
        ("scalar.jsonl", b'{"q": 1}\n[1, 2]\n', "line 2"),
        ("fields.csv", b"q,a\n1,2\n1,2,3\n", "row 2"),
        ("latin.csv", b"q,a\ncaf\xe9,1\n", "not UTF-8"),
        ("semicolon.csv", b"q;a\n1;2\n", "delimiter"),
        ("dup.csv", b"q,q\n1,2\n", "twice"),
        ("bad.json", b'[{"q": 1},', "not valid JSON"),
        ("lines.json", b'{"q": 1}\n{"q": 2}\n', ".jsonl"),
        ("bad.parquet", b"PAR1 not really", "Parquet"),
        ("data.xlsx", b"xx", "unsupported"),
    ],
)
def test_malformed_files_fail_with_location(tmp_path, name, content, expect):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        list(iter_records(path))
    assert expect in str(err.value)
    assert name in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(iter_records(tmp_path / "nope.csv"))


def test_a_symlink_loop_is_not_called_missing(tmp_path):
    from tunelab.config import read_yaml
    from tunelab.errors import ConfigError

    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(tmp_path / "loop.jsonl")
    with pytest.raises(DataError, match="symbolic link that leads nowhere"):
        list(iter_records(str(loop)))
    config = tmp_path / "loop.yaml"
    config.symlink_to(tmp_path / "other.yaml")
    (tmp_path / "other.yaml").symlink_to(config)
    with pytest.raises(ConfigError, match="symbolic link that leads nowhere"):
        read_yaml(config)
