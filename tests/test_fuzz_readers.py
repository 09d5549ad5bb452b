"""Fuzzing the readers with malformed files: every case loads or ends in a TunelabError naming the file."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.config import load_config
from tunelab.data.formats import ExampleReader
from tunelab.data.readers import iter_records
from tunelab.errors import TunelabError

SUFFIXES = [".csv", ".tsv", ".jsonl", ".json", ".txt", ".jsonl.gz", ".csv.gz", ".parquet"]
CONFIG = load_config(base={"dataset": {"prompt_column": ["question"], "answer_column": "answer"}})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
rows = st.dictionaries(
    st.sampled_from(["question", "answer", "text", "label", "messages", "x"]), json_values, max_size=4
)


@st.composite
def contents(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "text", "jsonl", "json", "csv", "truncated", "bom", "mixed"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if kind == "jsonl":
        return "\n".join(json.dumps(r) for r in draw(st.lists(rows, max_size=6))).encode()
    if kind == "json":
        return json.dumps(draw(st.lists(rows, max_size=6) | json_values)).encode()
    if kind == "csv":
        delim = draw(st.sampled_from([",", "\t", ";", "|"]))
        lines = [
            delim.join(draw(st.lists(st.text(alphabet="ab\"' ,\t;\n\r0", max_size=6), min_size=1, max_size=4)))
            for _ in range(draw(st.integers(0, 5)))
        ]
        return "\n".join(["question" + delim + "answer", *lines]).encode()
    if kind == "truncated":
        full = "\n".join(json.dumps(r) for r in draw(st.lists(rows, min_size=1, max_size=4))).encode()
        return full[: draw(st.integers(0, len(full)))]
    if kind == "bom":
        return b"\xef\xbb\xbf" + b'question,answer\n"hi",there\n'
    # mixed types in one column
    return b'{"question": 1, "answer": "a"}\n{"question": "x", "answer": [1]}\n{"question": null, "answer": 2}\n'


def check(path: Path) -> None:
    try:
        for _ in iter_records(path):
            pass
        for _ in ExampleReader(CONFIG, path):
            pass
    except TunelabError as exc:
        assert path.name in str(exc), str(exc)


def write(path: Path, data: bytes) -> None:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("suffix", SUFFIXES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=contents())
def test_malformed_files_never_raise_anything_else(suffix, data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        write(path, data)
        check(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt", ".json"])
def test_named_cases(tmp_path, suffix):
    cases = {
        "huge_line": b'{"question": "' + b"x" * 1_000_000 + b'", "answer": "y"}\n',
        "empty": b"",
        "header_only": b"question,answer\n",
        "nul": b"question,answer\nab\x00c,d\n",
        "latin1": b"question,answer\ncaf\xe9,1\n",
        "wrong_delimiter": b"question;answer\na;b\n",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "truncated_json": b'[{"question": "a", "answer": "b"}, {"question": ',
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}{suffix}"
        write(path, data)
        check(path)


def test_damaged_gzip(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b'{"question": "a", "answer": "b"}\n' * 1000)
    path.write_bytes(path.read_bytes()[:200])
    check(path)


# ---------------------------------------------------------------------------------------------------------- shapes
# Rows that look like the shapes other tools write (messages, sharegpt, tools, preference, unpaired, stepwise,
# segments), with the wrong types in every place: each reads or ends in one TunelabError naming the file.
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool", "gpt", "human", "function_call", "x"])
        | json_values,
        "from": st.sampled_from(["human", "gpt", "function_call", "observation", "system"]),
        "content": json_values
        | st.lists(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": json_values}), max_size=2
        ),
        "value": json_values | st.just('{"name": "f", "arguments": {"a": 1}}'),
        "tool_calls": json_values | st.just([{"type": "function", "function": {"name": "f", "arguments": "{"}}]),
        "weight": json_values,
    },
)
shaped_value = (
    json_values
    | st.lists(message, max_size=4)
    | message
    | st.lists(st.fixed_dictionaries({}, optional={"text": json_values, "label": json_values}), max_size=3)
)
shaped_rows = st.dictionaries(
    st.sampled_from(
        [
            "messages",
            "conversations",
            "chosen",
            "rejected",
            "prompt",
            "completion",
            "label",
            "completions",
            "labels",
            "segments",
            "tools",
            "instruction",
            "input",
            "output",
            "history",
            "system",
            "question",
            "answer",
            "text",
        ]
    ),
    shaped_value,
    max_size=5,
)
SHAPE_CONFIGS = [
    load_config(base={}),
    load_config(base={"problem_type": "dpo"}),
    load_config(base={"problem_type": "classification"}),
    load_config(base={"problem_type": "rl", "rl": {"reward_function": "tunelab.rewards:length_reward"}}),
]


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(shaped_rows, min_size=1, max_size=5), which=st.integers(0, len(SHAPE_CONFIGS) - 1))
def test_shaped_rows_read_or_fail_in_one_line(rows, which):
    cfg = SHAPE_CONFIGS[which].model_copy(deep=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shaped.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
        try:
            for _ in ExampleReader(cfg, path):
                pass
        except TunelabError as exc:
            assert path.name in str(exc) and "\n" not in str(exc), str(exc)
