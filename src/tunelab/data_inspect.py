"""``tunelab data inspect FILE``: what shape a file has, which problem types can use it, and its rows exactly as the
model will see them. Works with no config at all: the problem type follows the data unless one is given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, load_config
from tunelab.data.shapes import KIND_TITLES, Detection
from tunelab.problem_spec import all_specs, spec_of


def inspect_config(file: str, config: Path | None, overrides: list[str]) -> tuple[RunConfig, Detection, bool]:
    """The config to read ``file`` with, its detected shape, and whether a problem type can train on it.

    With no config and no ``problem_type`` override, the problem type is the one that suits the data.
    """
    from tunelab.data.formats import detect_source, unsuitable

    cfg = load_config(config, overrides) if config else load_config(overrides=overrides)
    detection = detect_source(file, cfg)
    chosen = config is not None or any(o.split("=", 1)[0].strip() == "problem_type" for o in overrides)
    # The problem type that shows a shape best when the user named none (its own kind, rendered in full).
    shown = next((s.name for s in all_specs() if detection.kind in s.shown_kinds), None)
    if not chosen and detection.problem_types() and (unsuitable(detection, cfg) or shown):
        problem = shown or detection.problem_types()[0]
        extra = [f"problem_type={problem}", *spec_of(problem).inspect_overrides]
        cfg = load_config(overrides=[*overrides, *extra])
        detection = detect_source(file, cfg)
    return cfg, detection, unsuitable(detection, cfg) is None


def print_detection(file: str, cfg: RunConfig, detection: Detection, console: Any) -> None:
    """The shape, the columns picked, the problem types that can use it and how to force another reading."""
    console.print(f"[bold]{file}[/]: {detection.title}")
    console.print(
        f"  format: {detection.format}: {KIND_TITLES[detection.kind]} (dataset.format: {detection.format} "
        "forces this reading)"
    )
    if detection.columns:
        fields = ", ".join(f"dataset.{k}" for k in detection.columns)
        console.print(f"  columns detected: {detection.describe_columns()} (set {fields} to choose others)")
    suits = detection.problem_types()
    console.print(f"  problem types that can use it: {', '.join(suits) if suits else 'none yet'}")
    if detection.others:
        others = ", ".join(f"{o} (--set dataset.format={o})" for o in detection.others)
        console.print(f"  it can also be read as: {others}")
    if detection.label_counts:
        total = sum(detection.label_counts.values())
        shown = ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in list(detection.label_counts.items())[:12])
        console.print(f"  labels in the first {total} rows: {shown}")


def encode_file(cfg: RunConfig, tokenizer: Any, path: str) -> tuple[Any, Any, Any]:
    """Read a data file as ``cfg`` says, fit the problem to its labels and encode every row (no split, no cache):
    what ``tunelab data inspect`` and the studio's data page show.

    Returns:
        (problem, example reader, encoded rows).
    """
    from tunelab.data.formats import ExampleReader
    from tunelab.data.pipeline import encode_source
    from tunelab.problems import build_problem

    problem = build_problem(cfg, tokenizer)
    reader = ExampleReader(cfg, path)
    labels = [problem.label_of(example) for _, example in reader]
    problem.fit([x for x in labels if x is not None], path)
    split, _ = encode_source(path, problem)
    return problem, reader, split


def inspect_file(
    file: str, config: Path | None, overrides: list[str], rows: int, histogram: Path | None, console: Any
) -> None:
    """Print what ``tunelab data inspect`` shows (see the module docstring)."""
    from tunelab.data.formats import ExampleReader, apply_detection, unsuitable
    from tunelab.data.inspect import compute_report, print_report, render_row, save_length_histogram
    from tunelab.models.load import load_tokenizer, resolve_backbone

    cfg, detection, usable = inspect_config(file, config, overrides)
    print_detection(file, cfg, detection, console)
    if not usable:
        apply_detection(detection, cfg)
        reader = ExampleReader(cfg, file)
        reader.format = detection.format
        count = 0
        for record in reader.records():
            example = reader.example(record) if count < rows else None
            if example is not None:
                console.print(f"\n[bold]row {record.position}[/]: " + json.dumps(example, ensure_ascii=False)[:600])
            count += 1
        console.print(f"\n{count} rows read. {unsuitable(detection, cfg)}")
        return
    console.print(f"  shown as problem_type {cfg.problem_type}\n")
    tokenizer = load_tokenizer(resolve_backbone(cfg.llm_backbone))
    problem, reader, split = encode_file(cfg, tokenizer, file)
    print_report(compute_report(split, cfg, file, reader.format), console, cfg)
    for i in range(min(rows, len(split))):
        console.print(f"\n[bold]row {split.rows[i]}[/] ({split.lengths()[i]} tokens; trained in green, masked dimmed)")
        console.print(render_row(split, i, tokenizer))
    if histogram is not None:
        console.print(f"\nlength histogram: {save_length_histogram(split, cfg, histogram)}")
