"""HTML reports: one self-contained page per run (or pair of runs) showing at a glance whether fine-tuning helped.

A report reads only the run directory. Anything missing — no base-model evaluation, a run still going, no predictions
file, raw-text data with nothing to answer — becomes a note in the page, never an error, so a report can be written at
any moment of a run's life. The page works offline: inline CSS and JS, charts embedded as base64 PNGs.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.compare import config_differences
from tunelab.config import LOWER_IS_BETTER, metric_key
from tunelab.errors import DataError, RunDirError
from tunelab.evaluate.metrics import confusion_matrix
from tunelab.io import write_text_atomic
from tunelab.problem_spec import ProblemSpec, spec_of

PREDICTIONS = "validation_predictions.csv"
MAX_ROWS = 1000  # beyond this the page gets heavy: keep the largest changes either way
CLIP = 160  # characters of a long text shown before it is folded into <details>
MAX_CLASSES = 20  # a bigger confusion matrix is unreadable
FALLBACK_METRICS = ("bleu", "accuracy", "perplexity", "loss")


@dataclass
class RunFiles:
    """A run directory read leniently: each missing or damaged file leaves a note instead of raising."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("experiment_name") or self.path.name)

    @property
    def problem_type(self) -> str:
        return str(self.info.get("problem_type") or self.config.get("problem_type") or "causal_lm")

    @property
    def spec(self) -> ProblemSpec:
        return spec_of(self.problem_type)

    @property
    def key_metric(self) -> str:
        """The metric the user chose (prediction.metric), or the first one the run actually reported."""
        after = self.metrics.get("after", {})
        chosen = metric_key(str((self.config.get("prediction") or {}).get("metric") or ""))
        for key in (chosen, *FALLBACK_METRICS):
            if key in after:
                return key
        return next(iter(after), chosen or "loss")

    @property
    def has_text(self) -> bool:
        """False for raw-text runs, whose rows carry only a loss."""
        return bool(self.rows) and any(r["prompt"] or r["reference"] for r in self.rows)


# ---------------------------------------------------------------------------------------------------- reading
def load_run(path: str | Path) -> RunFiles:
    """Read what a run directory holds (a running or failed run too).

    Raises:
        RunDirError: when ``path`` is not a folder with a config.yaml or run.json.
    """
    run = RunFiles(Path(path))
    if not run.path.is_dir() or not any((run.path / n).is_file() for n in ("config.yaml", "run.json")):
        raise RunDirError(
            "not a tunelab run directory (no config.yaml or run.json)",
            file=str(run.path),
            hint="pass the folder output_directory/experiment_name of a run",
        )
    run.config = _read(run, "config.yaml", yaml.safe_load)
    run.info = _read(run, "run.json", json.loads)
    run.metrics = _read(run, "metrics.json", json.loads)
    run.records = _read(run, "metrics.jsonl", _parse_jsonl, default=[])
    if not run.metrics and run.records:
        run.metrics = _metrics_from_records(run.records)
        run.notes.append("no metrics.json yet: the numbers below are the evaluations logged so far")
    if (run.path / PREDICTIONS).is_file():
        try:
            run.rows = _read_rows(run.path / PREDICTIONS, run.info.get("classes") or [])
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            run.notes.append(f"{PREDICTIONS} could not be read ({exc})")
    else:
        run.notes.append(f"no {PREDICTIONS}: the validation rows appear when the run has finished")
    return run


def _read(run: RunFiles, name: str, parse: Callable[[str], Any], default: Any = None) -> Any:
    """``parse`` of the file's text; ``default`` (an empty dict) when it is missing, damaged or of another shape."""
    default = {} if default is None else default
    path = run.path / name
    if not path.is_file():
        return default
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        run.notes.append(f"{name} could not be read ({type(exc).__name__})")
        return default
    return data if isinstance(data, type(default)) else default


def _parse_jsonl(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append(record)
    return out


def _metrics_from_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """before/after from metrics.jsonl, for a run that has not written metrics.json yet."""
    evals = [r for r in records if any(k.startswith("eval_") for k in r)]
    pick = [(r["step"], {k[5:]: v for k, v in r.items() if k.startswith("eval_")}) for r in evals]
    out: dict[str, Any] = {}
    if pick and pick[0][0] == 0:
        out["before"] = pick.pop(0)[1]
    if pick:
        out["after"] = pick[-1][1]
    return out


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_rows(path: Path, classes: list[str]) -> list[dict[str, Any]]:
    """validation_predictions.csv as rows with numbers parsed and, for classifiers, the probability of the truth."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        for i, raw in enumerate(csv.DictReader(fh), start=1):
            row = {
                "index": i,
                "prompt": raw.get("prompt") or "",
                "reference": raw.get("reference") or "",
                "after": raw.get("prediction") or "",
                "before": raw.get("prediction_before"),
                "score": _number(raw.get("score")),
                "score_before": _number(raw.get("score_before")),
                "loss": _number(raw.get("loss")),
                "margin": _number(raw.get("margin")),  # preference pairs: reward(chosen) - reward(rejected)
                "margin_before": _number(raw.get("margin_before")),
            }
            row["p_true"] = _p_true(raw, "", row["score"], len(classes))
            row["p_true_before"] = _p_true(raw, "_before", row["score_before"], len(classes))
            row["change"] = _delta(row["score_before"], row["score"])
            rows.append(row)
    return rows


def _p_true(raw: dict[str, Any], suffix: str, score: float | None, n_classes: int) -> float | None:
    """P(true class): a prob_<class> column if saved; else the confidence, which is P(true) when the guess is right
    and 1 - P(true) for a wrong guess between two classes."""
    exact = _number(raw.get(f"prob_{raw.get('reference')}{suffix}"))
    confidence = _number(raw.get(f"confidence{suffix}"))
    if exact is not None or confidence is None or score is None:
        return exact
    if score == 1.0:
        return confidence
    return 1.0 - confidence if n_classes == 2 else None


def _delta(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None else new - old


# ---------------------------------------------------------------------------------------------------- formatting
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, sign: bool = False) -> str:
    number = _number(value)
    if number is None:
        return "—" if value is None or isinstance(value, (int, float)) else _e(value)
    if abs(number) >= 1000:
        return f"{number:+,.0f}" if sign else f"{number:,.0f}"
    return f"{number:+.4g}" if sign else f"{number:.4g}"


def _count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:,}"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _tone(metric: str, change: float | None) -> str:
    """'better', 'worse' or 'same' for a change of ``metric`` (knowing which metrics are lower-is-better)."""
    if change is None or change == 0:
        return "same"
    lower = metric in LOWER_IS_BETTER
    return "better" if (change < 0) == lower else "worse"


def _change_cell(change: float | None, tone: str) -> str:
    if change is None:
        return f'<td class="num {tone}" data-v="">—</td>'
    arrow = "" if tone == "same" else "▲" if change > 0 else "▼"
    return f'<td class="num {tone}" data-v="{change!r}">{arrow} {_fmt(change, sign=change != 0)}</td>'


def _text_cell(value: Any, tone: str = "") -> str:
    """A text cell; a long text shows its beginning and unfolds (no JS needed) to the whole of it."""
    if value is None:
        return '<td class="muted">—</td>'
    text = str(value)
    if len(text) <= CLIP:
        return f'<td class="txt {tone}">{_e(text)}</td>'
    return (
        f'<td class="txt {tone}"><details><summary><span class="clip">{_e(text[:CLIP])}…</span></summary>'
        f"{_e(text)}</details></td>"
    )


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# ---------------------------------------------------------------------------------------------------- sections
def _header(run: RunFiles, label: str = "") -> str:
    """Who the run is: backbone, adapter, parameters, steps, time, status."""
    cfg, info = run.config, run.info
    training = cfg.get("training") or {}
    status = str(info.get("status") or ("finished" if run.metrics.get("after") else "unknown"))
    adapter = str(info.get("adapter") or training.get("adapter") or "—")
    if adapter == "lora" and "lora_r" in training:
        adapter += f" (r {training['lora_r']}, α {_fmt(training.get('lora_alpha'))})"
    started, finished = _number(info.get("started")), _number(info.get("finished"))
    if started and status == "running":
        wall = f"{_duration(time.time() - started)} so far"
    else:
        wall = _duration(finished - started) if started and finished else "—"
    share = _number(info.get("trainable_share"))
    params = f"{_count(info.get('trainable_parameters'))} of {_count(info.get('total_parameters'))}"
    epochs = info.get("epochs")
    steps = _count(info.get("steps")) + (f" ({epochs} epoch{'' if epochs == 1 else 's'})" if epochs is not None else "")
    fields = [
        ("problem type", info.get("problem_type") or cfg.get("problem_type") or "—"),
        ("backbone", cfg.get("llm_backbone") or info.get("backbone_source") or "—"),
        ("adapter", adapter),
        ("trainable parameters", params + (f" ({share * 100:.3g}%)" if share is not None else "")),
        ("steps", steps if info.get("steps") is not None else "—"),
        ("best step", info.get("best_step", "—")),
        ("wall time", wall),
        ("started", time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "—"),
        ("train / validation rows", f"{_count(info.get('train_rows'))} / {_count(info.get('validation_rows'))}"),
        ("learning rate · batch", f"{_fmt(training.get('learning_rate'))} · {training.get('batch_size', '—')}"),
    ]
    cells = "".join(f"<div><span>{_e(k)}</span><b>{_e(v)}</b></div>" for k, v in fields)
    error = f'<p class="error">{_e(info["error"])}</p>' if info.get("error") else ""
    notes = "".join(_note(n) for n in run.notes)
    tag = f'<span class="tag {_e(label)}">{_e(label)}</span>' if label else ""
    return (
        f'<section class="card"><h2>{tag}{_e(run.name)} <span class="status {_e(status)}">{_e(status)}</span></h2>'
        f'<p class="path">{_e(run.path)}</p><div class="facts">{cells}</div>{error}{notes}</section>'
    )


def _verdict(run: RunFiles) -> str:
    """The one line a reader needs: did the chosen metric improve?"""
    key = run.key_metric
    before, after = run.metrics.get("before", {}), run.metrics.get("after", {})
    if key not in after:
        return '<section class="verdict same"><h2>No final evaluation yet</h2></section>'
    if key not in before:
        head, tone = f"{key} after fine-tuning: {_fmt(after[key])} (no base-model evaluation to compare with)", "same"
    else:
        change = _delta(_number(before[key]), _number(after[key]))
        tone = _tone(key, change)
        verb = {"better": "Fine-tuning helped", "worse": "Fine-tuning made it worse", "same": "No change"}[tone]
        head = f"{verb}: {key} {_fmt(before[key])} → {_fmt(after[key])} ({_fmt(change, sign=True)})"
    others = [
        f'<span class="{_tone(k, _delta(_number(before[k]), _number(v)))}">{_e(k)} {_fmt(before[k])} → {_fmt(v)}</span>'
        for k, v in after.items()
        if k != key and k in before
    ]
    counts = _row_counts(run.rows if run.rows and run.has_text else [], "better", "worse")
    return (
        f'<section class="verdict {tone}"><h2>{_e(head)}</h2><p class="others">{" · ".join(others)}</p>{counts}'
        "</section>"
    )


def _row_counts(rows: list[dict[str, Any]], up_word: str, down_word: str) -> str:
    """'Per validation row: 222 better, 32 worse, 246 unchanged' — how broad the change is, not just its average."""
    changes = [r["change"] for r in rows if r["change"] is not None]
    if not changes:
        return ""
    up, down = sum(c > 0 for c in changes), sum(c < 0 for c in changes)
    return (
        f"<p>Per validation row: <b class='better'>{up} {up_word}</b>, <b class='worse'>{down} {down_word}</b>, "
        f"{len(changes) - up - down} unchanged.</p>"
    )


def _metric_columns(run: RunFiles) -> list[tuple[str, dict[str, Any]]]:
    m = run.metrics
    cols = [("before (base model)", m.get("before")), ("after (fine-tuned)", m.get("after"))]
    best = m.get("best")
    if best and {k: v for k, v in best.items() if k != "step"} != m.get("after"):
        cols.append((f"best (step {best.get('step', '?')})", best))
    cols.append(("test", m.get("test")))
    return [(name, values) for name, values in cols if isinstance(values, dict)]


def _metrics_table(run: RunFiles) -> str:
    """Before vs after (vs best, vs test), with the change coloured by whether it is an improvement."""
    cols = _metric_columns(run)
    if not cols:
        return _note("no evaluation has been recorded yet")
    names = [k for _, values in cols for k in values if k != "step"]
    names = list(dict.fromkeys(names))
    before, after = run.metrics.get("before"), run.metrics.get("after")
    split = 2 if isinstance(before, dict) and isinstance(after, dict) else 0  # the change column needs both
    head = "".join(f"<th>{_e(c)}</th>" for c, _ in cols[:split]) + ("<th>change</th>" if split else "")
    head += "".join(f"<th>{_e(c)}</th>" for c, _ in cols[split:])
    body = []
    for name in names:
        direction = "lower is better" if name in LOWER_IS_BETTER else "higher is better"
        cells = "".join(f'<td class="num">{_fmt(values.get(name))}</td>' for _, values in cols[:split])
        if split:
            change = _delta(_number(before.get(name)), _number(after.get(name)))
            cells += _change_cell(change, _tone(name, change))
        cells += "".join(f'<td class="num">{_fmt(values.get(name))}</td>' for _, values in cols[split:])
        key = "key" if name == run.key_metric else ""
        body.append(f'<tr class="{key}"><th>{_e(name)} <small>{direction}</small></th>{cells}</tr>')
    return f'<table class="metrics"><tr><th>metric</th>{head}</tr>{"".join(body)}</table>'


def _curve(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], _number(r.get(key))) for r in records]
    kept = [(s, v) for s, v in points if v is not None]
    return [s for s, _ in kept], [v for _, v in kept]


def _chart(
    title: str, lines: list[tuple[str, list[int], list[float], dict[str, Any]]], mark: int | None, last: int
) -> str:
    """One small line chart as an <img> with a base64 PNG (matplotlib's Figure, no pyplot state touched)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 3.1))
    ax = fig.add_subplot()
    for label, steps, values, style in lines:
        ax.plot(steps, values, label=label, **style)
    if mark is not None:
        ax.axvline(mark, color="0.6", linestyle=":", linewidth=1, label=f"best step {mark}")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_xlim(-0.03 * max(last, 1), 1.03 * max(last, 1))  # the same steps on every chart, however few points
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_e(title)}" src="data:image/png;base64,{data}">'


# Numbers a problem logs at training steps (online RL), drawn as training curves beside any validation ones.
TRAIN_STATS = ("reward", "reward_std", "kl", "clip_fraction", "entropy", "response_length", "value_loss")


def _charts(runs: list[tuple[str, RunFiles]]) -> str:
    """The loss curves (train per step, validation at eval steps) and one chart per validation metric."""
    if not any(run.records for _, run in runs):
        return _note("no metrics.jsonl: there are no curves to draw")
    keys = [k[5:] for _, run in runs for r in run.records for k in r if k.startswith("eval_") and k != "eval_loss"]
    keys += [k for k in TRAIN_STATS if any(k in r for _, run in runs for r in run.records)]
    single = len(runs) == 1
    last = max(r["step"] for _, run in runs for r in run.records)
    mark = _number(runs[0][1].info.get("best_step")) if single else None
    mark = int(mark) if mark is not None and len(_curve(runs[0][1].records, "eval_loss")[0]) > 2 else None
    charts = []
    for key in ["loss", *dict.fromkeys(keys)]:
        lines = []
        for i, (label, run) in enumerate(runs):
            prefix = "" if single else f"{label} "
            colour = {} if single else {"color": f"C{i}"}
            if key == "loss" or key in TRAIN_STATS:
                steps, values = _curve(run.records, key)
                marker = "." if len(steps) < 40 else None
                lines.append((f"{prefix}train", steps, values, {"marker": marker, "linewidth": 1.4, **colour}))
            steps, values = _curve(run.records, f"eval_{key}")
            style = {"marker": "o", "linestyle": "--", "color": "C3" if single and key == "loss" else None, **colour}
            lines.append((f"{prefix}validation", steps, values, style))
        lines = [line for line in lines if line[1]]
        direction = "lower is better" if key in LOWER_IS_BETTER else "higher is better"
        if lines:
            charts.append(_chart(f"{key} ({direction})", lines, mark, last))
    return f'<div class="charts">{"".join(charts)}</div>'


# ---------------------------------------------------------------------------------------------------- rows
@dataclass
class Column:
    """One column of a rows table: a title, how to get its value from a row, and how to show it."""

    title: str
    get: Callable[[dict[str, Any]], Any]
    kind: str = "text"  # text | label | pred (a label marked right or wrong) | num | change


def _rows_table(rows: list[dict[str, Any]], columns: list[Column], caption: str) -> str:
    """A sortable table (click a header), sorted by the change (largest improvement first)."""
    rows = sorted(rows, key=lambda r: (r["change"] is None, -(r["change"] or 0), r["index"]))
    shown = rows
    if len(rows) > MAX_ROWS:
        shown = rows[: MAX_ROWS // 2] + rows[-MAX_ROWS // 2 :]
        caption += f" Showing {MAX_ROWS} of {len(rows)} rows: the largest changes either way."
    head = "".join(
        f'<th class="{c.kind}"{" data-dir=desc" if c.kind == "change" else ""}>{_e(c.title)}</th>' for c in columns
    )
    body = []
    for row in shown:
        cells = [f'<td class="num" data-v="{row["index"]}">{row["index"]}</td>']
        for column in columns:
            value = column.get(row)
            if column.kind in ("text", "label"):
                cells.append(_text_cell(value))
            elif column.kind == "pred":
                cells.append(_text_cell(value, "right" if value == row["reference"] else "wrong"))
            elif column.kind == "change":
                cells.append(_change_cell(value, "same" if value is None else _tone("score", value)))
            else:
                number = _number(value)
                cells.append(f'<td class="num" data-v="{"" if number is None else number!r}">{_fmt(number)}</td>')
        tone = "" if row["change"] is None else _tone("score", row["change"])
        body.append(f'<tr class="{tone}">{"".join(cells)}</tr>')
    return (
        f'<p class="caption">{_e(caption)}</p>'
        '<input class="filter" placeholder="filter rows…" oninput="filterRows(this)">'
        f'<table class="rows sortable"><thead><tr><th class="num">row</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _single_rows(run: RunFiles) -> str:
    if run.rows is None:
        return ""
    if not run.has_text:
        return _note("raw-text run: there is nothing to answer, so only loss and perplexity are reported")
    if any(r["change"] is not None for r in run.rows):
        caption = "Validation rows, sorted by the change in score (improved first); click a header to sort."
    else:
        caption = "No before-evaluation: the base model's answers are missing. Rows in validation order."
    return _rows_table(run.rows, _columns(run, pair=False), caption + run.spec.score_note)


def _columns(run: RunFiles, pair: bool) -> list[Column]:
    """The rows table's columns: the base model's and the fine-tuned model's outputs, or run A's and run B's."""
    first, second = ("A", "B") if pair else ("before", "after")
    out1, out2 = ("after", "after_b") if pair else ("before", "after")
    score1, score2 = ("score", "score_b") if pair else ("score_before", "score")
    prob1, prob2 = ("p_true", "p_true_b") if pair else ("p_true_before", "p_true")
    rows = run.rows or []
    layout = run.spec.rows_layout
    if layout == "labels":
        columns = [
            Column("text", lambda r: r["prompt"]),
            Column("true label", lambda r: r["reference"], "label"),
            Column(f"predicted {first}", lambda r: r[out1], "pred"),
            Column(f"predicted {second}", lambda r: r[out2], "pred"),
        ]
        if any(r[prob1] is not None for r in rows):  # the base model's probabilities are not always saved
            columns.append(Column(f"P(true) {first}", lambda r: r[prob1], "num"))
        columns.append(Column(f"P(true) {second}", lambda r: r[prob2], "num"))
    elif layout == "pairs":
        margin1, margin2 = ("margin", "margin_b") if pair else ("margin_before", "margin")
        columns = [
            Column("prompt", lambda r: r["prompt"]),
            Column("chosen", lambda r: r["reference"]),
            Column("rejected", lambda r: r["after"]),
            Column(f"margin {first}", lambda r: r.get(margin1), "num"),
            Column(f"margin {second}", lambda r: r.get(margin2), "num"),
        ]
    elif layout == "numbers":
        columns = [
            Column("text", lambda r: r["prompt"]),
            Column("target", lambda r: r["reference"], "num"),
            Column(f"predicted {first}", lambda r: r[out1], "num"),
            Column(f"predicted {second}", lambda r: r[out2], "num"),
        ]
    else:
        names = ("answer A", "answer B") if pair else ("base model", "fine-tuned")
        columns = [
            Column("prompt", lambda r: r["prompt"]),
            Column("reference", lambda r: r["reference"]),
            Column(names[0], lambda r: r[out1]),
            Column(names[1], lambda r: r[out2]),
        ]
    if layout != "labels":
        columns.append(Column(f"score {first}", lambda r: r[score1], "num"))
        columns.append(Column(f"score {second}", lambda r: r[score2], "num"))
    return [*columns, Column("change", lambda r: r["change"], "change")]


def _confusion(run: RunFiles) -> str:
    """Confusion matrices (base model and fine-tuned) when the rows name single true and predicted classes."""
    if "confusion_matrix" not in run.spec.report_sections or not run.rows or run.info.get("multi_label"):
        return ""
    classes = [str(c) for c in run.info.get("classes") or []]
    classes = classes or sorted({r["reference"] for r in run.rows} | {r["after"] for r in run.rows})
    if len(classes) > MAX_CLASSES:
        return _note(f"{len(classes)} classes: too many for a readable confusion matrix")
    index = {c: i for i, c in enumerate(classes)}
    tables = []
    for title, key in (("base model", "before"), ("fine-tuned", "after")):
        pairs = [(r["reference"], r[key]) for r in run.rows]
        if any(t not in index or p not in index for t, p in pairs):
            continue
        counts = confusion_matrix([index[t] for t, _ in pairs], [index[p] for _, p in pairs], len(classes))
        top = max(max(row) for row in counts) or 1
        head = "".join(f"<th>{_e(c)}</th>" for c in classes)
        body = ""
        for i, row in enumerate(counts):
            cells = ""
            for j, n in enumerate(row):
                colour = "46,160,67" if i == j else "218,54,51"
                cells += f'<td style="background:rgba({colour},{0.08 + 0.6 * n / top:.2f})">{n}</td>'
            body += f"<tr><th>{_e(classes[i])}</th>{cells}</tr>"
        tables.append(
            f'<table class="confusion"><caption>{title}</caption>'
            f"<tr><th>true ↓ / predicted →</th>{head}</tr>{body}</table>"
        )
    return f'<h2>Confusion matrix</h2><div class="confusions">{"".join(tables)}</div>' if tables else ""


# ---------------------------------------------------------------------------------------------------- pages
def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the HTML report of one run (default ``RUN_DIR/report.html``), atomically.

    Args:
        run_dir: the run directory (finished, running or failed).
        output: where to write the page.

    Returns:
        The path of the page.

    Raises:
        RunDirError: when ``run_dir`` is not a run directory.
    """
    run = load_run(run_dir)
    body = (
        _header(run)
        + _verdict(run)
        + "<h2>Metrics</h2>"
        + _metrics_table(run)
        + "<h2>Curves</h2>"
        + _charts([("", run)])
        + _confusion(run)
        + ("<h2>Validation rows</h2>" + _single_rows(run) if run.rows is not None else "")
    )
    path = Path(output) if output is not None else run.path / "report.html"
    write_text_atomic(path, _page(f"tunelab report · {run.name}", body))
    return path


def write_compare_report(run_a: str | Path, run_b: str | Path, output: str | Path) -> Path:
    """Write an HTML page comparing two runs validated on the same rows, atomically.

    Returns:
        The path of the page.

    Raises:
        RunDirError: when either folder is not a run directory.
        DataError: when the two runs were validated on different rows.
    """
    a, b = load_run(run_a), load_run(run_b)
    rows = _paired_rows(a, b)
    body = (
        f'<div class="pair">{_header(a, "A")}{_header(b, "B")}</div>'
        + _compare_verdict(a, b, rows if a.has_text else None)
        + "<h2>Metrics</h2>"
        + _compare_metrics(a, b)
        + "<h2>Config differences</h2>"
        + _config_table(a, b)
        + "<h2>Curves</h2>"
        + _charts([("A", a), ("B", b)])
        + "<h2>Validation rows</h2>"
        + _compare_rows(a, b, rows)
    )
    path = Path(output)
    write_text_atomic(path, _page(f"tunelab compare · {a.name} vs {b.name}", body))
    return path


def write_summary_report(runs: list[str | Path], output: str | Path) -> Path:
    """Write an HTML page with the methods table and overlaid curves of several runs, atomically."""
    from tunelab.compare import SUMMARY_COLUMNS, run_summary, summary_cells

    loaded = [load_run(r) for r in runs]
    head = "".join(f"<th>{_e(c)}</th>" for c in SUMMARY_COLUMNS)
    body_rows = "".join(
        "<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in summary_cells(run_summary(r.path))) + "</tr>"
        for r in loaded
    )
    body = (
        f"<h2>Runs side by side</h2><table><tr>{head}</tr>{body_rows}</table>"
        + "<h2>Curves</h2>"
        + _charts([(r.name, r) for r in loaded])
    )
    path = Path(output)
    write_text_atomic(path, _page("tunelab compare · " + ", ".join(r.name for r in loaded), body))
    return path


def _paired_rows(a: RunFiles, b: RunFiles) -> list[dict[str, Any]] | None:
    """Rows of A and B side by side (change = B's score - A's), or None when either run has none.

    Raises:
        DataError: when the runs were validated on different rows.
    """
    if a.rows is None or b.rows is None:
        return None
    hint = "compare runs with the same validation data (dataset, validation_size, split_seed)"
    where = str(b.path / PREDICTIONS)
    if len(a.rows) != len(b.rows):
        raise DataError(f"the runs have {len(a.rows)} and {len(b.rows)} validation rows", file=where, hint=hint)
    for ra, rb in zip(a.rows, b.rows):
        if (ra["prompt"], ra["reference"]) != (rb["prompt"], rb["reference"]):
            raise DataError("the two runs were validated on different rows", file=where, row=ra["index"], hint=hint)
    return [
        {
            **ra,
            "after_b": rb["after"],
            "score_b": rb["score"],
            "p_true_b": rb["p_true"],
            "margin_b": rb["margin"],
            "change": _delta(ra["score"], rb["score"]),
        }  # fmt: skip
        for ra, rb in zip(a.rows, b.rows)
    ]


def _compare_verdict(a: RunFiles, b: RunFiles, rows: list[dict[str, Any]] | None) -> str:
    key = a.key_metric
    va, vb = _number(a.metrics.get("after", {}).get(key)), _number(b.metrics.get("after", {}).get(key))
    if va is None or vb is None:
        return '<section class="verdict same"><h2>No final evaluation of both runs to compare</h2></section>'
    tone = _tone(key, vb - va)
    verb = {"better": "B is better than A", "worse": "B is worse than A", "same": "A and B are equal"}[tone]
    head = f"{verb} on {key}: {_fmt(va)} vs {_fmt(vb)} ({_fmt(vb - va, sign=True)})"
    counts = _row_counts(rows or [], "B better", "B worse")
    return f'<section class="verdict {tone}"><h2>{_e(head)}</h2>{counts}</section>'


def _config_table(a: RunFiles, b: RunFiles) -> str:
    """The config fields set differently; fields that only one config has (another tunelab version wrote it, the
    other run used the default) are folded away, so the real differences stand out."""
    differences = config_differences([a.config, b.config])
    keys_a, keys_b = _leaf_keys(a.config), _leaf_keys(b.config)
    both = {k: v for k, v in differences.items() if k in keys_a and k in keys_b}
    one = [k for k in differences if k not in both]
    if not differences:
        return _note("the two configs are identical")
    body = "".join(
        f'<tr><th>{_e(k)}</th><td class="mono">{_e(json.dumps(va))}</td><td class="mono">{_e(json.dumps(vb))}</td></tr>'
        for k, (va, vb) in both.items()
    )
    table = f'<table class="metrics"><tr><th>field</th><th>A</th><th>B</th></tr>{body}</table>' if both else ""
    if one:
        listed = ", ".join(
            f"{k} ({'A' if k in keys_a else 'B'}: {json.dumps(differences[k][k not in keys_a])})" for k in one
        )
        table += (
            f'<details class="note"><summary>{len(one)} fields are set in only one of the configs (written by another '
            f"tunelab version; the other run used the default)</summary>{_e(listed)}</details>"
        )
    return table


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        keys |= _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def _compare_metrics(a: RunFiles, b: RunFiles) -> str:
    ma, mb = a.metrics.get("after", {}), b.metrics.get("after", {})
    ba, bb = a.metrics.get("before", {}), b.metrics.get("before", {})
    names = [k for k in dict.fromkeys([*ma, *mb]) if k != "step"]
    if not names:
        return _note("neither run has a final evaluation yet")
    body = []
    for name in names:
        change = _delta(_number(ma.get(name)), _number(mb.get(name)))
        values = [ba.get(name), ma.get(name), bb.get(name), mb.get(name)]
        cells = "".join(f'<td class="num">{_fmt(v)}</td>' for v in values) + _change_cell(change, _tone(name, change))
        direction = "lower is better" if name in LOWER_IS_BETTER else "higher is better"
        body.append(f"<tr><th>{_e(name)} <small>{direction}</small></th>{cells}</tr>")
    head = "<th>A before</th><th>A after</th><th>B before</th><th>B after</th><th>B − A (after)</th>"
    return f'<table class="metrics"><tr><th>metric</th>{head}</tr>{"".join(body)}</table>'


def _compare_rows(a: RunFiles, b: RunFiles, rows: list[dict[str, Any]] | None) -> str:
    if rows is None:
        return _note(f"one of the runs has no {PREDICTIONS}: no rows to compare")
    if not a.has_text:
        return _note("raw-text runs: there is nothing to answer, so only loss and perplexity are compared")
    caption = "Validation rows, sorted by B's score minus A's (B better first); click a header to sort."
    return _rows_table(rows, _columns(a, pair=True), caption + a.spec.score_note)


def _page(title: str, body: str) -> str:
    generated = time.strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><main><h1>{_e(title)}</h1>{body}"
        f"<footer>written by tunelab on {generated}</footer></main><script>{SCRIPT}</script></body></html>"
    )


CSS = """
body{margin:0;background:#f6f7f9;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1360px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:20px;margin:0 0 12px}h2{font-size:17px;margin:22px 0 8px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 16px}.card h2{margin:0}
.path{color:#656d76;font-size:12px;margin:2px 0 8px;word-break:break-all}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:6px 18px}
.facts span{display:block;color:#656d76;font-size:11px;text-transform:uppercase;letter-spacing:.03em}
.status{font-size:12px;padding:2px 8px;border-radius:10px;background:#eaeef2;vertical-align:middle}
.status.finished{background:#dafbe1;color:#116329}.status.running{background:#fff8c5;color:#7d4e00}
.status.failed,.status.stopped{background:#ffebe9;color:#a40e26}
.tag{background:#1f77b4;color:#fff;border-radius:4px;padding:0 7px;margin-right:8px}.tag.B{background:#ff7f0e}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.verdict{margin-top:14px;border-radius:8px;padding:12px 16px;border:1px solid}.verdict h2{margin:0;font-size:20px}
.verdict p{margin:6px 0 0}.verdict.better{background:#dafbe1;border-color:#4ac26b}
.verdict.worse{background:#ffebe9;border-color:#ff8182}.verdict.same{background:#eaeef2;border-color:#afb8c1}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;margin:6px 0}
.error{background:#ffebe9;border:1px solid #ff8182;border-radius:6px;padding:6px 10px;font-family:monospace}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #d0d7de;padding:5px 8px;vertical-align:top}
th{background:#f0f2f4;text-align:left;font-weight:600}th small{color:#656d76;font-weight:400;margin-left:6px}
.metrics tr.key th,.metrics tr.key td{font-weight:700;background:#fdfbe6}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.mono{font-family:monospace}
td.better,span.better,b.better{color:#1a7f37}td.worse,span.worse,b.worse{color:#cf222e}td.same{color:#656d76}
.others span{margin-right:4px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:10px}
.charts img{width:100%;background:#fff;border:1px solid #d0d7de;border-radius:6px}
.confusions{display:flex;gap:24px;flex-wrap:wrap}.confusion td{text-align:center;min-width:48px}
.confusion caption{font-weight:600;text-align:left;padding-bottom:4px}
.caption{color:#656d76;margin:4px 0}.filter{margin:4px 0 8px;padding:5px 8px;width:320px}
table.rows{width:100%;table-layout:fixed;font-size:13px}table.rows th{cursor:pointer;user-select:none}
table.rows th.label,table.rows th.pred{width:100px}table.rows th.num,table.rows th.change{width:78px}
table.rows th:first-child{width:44px}table.rows th{white-space:normal;vertical-align:bottom}
table.rows th[data-dir=desc]::after{content:" ▼"}table.rows th[data-dir=asc]::after{content:" ▲"}
td.txt{white-space:pre-wrap;word-wrap:break-word}td.right{color:#1a7f37}td.wrong{color:#cf222e}td.muted{color:#8c959f}
tr.better td:first-child{box-shadow:inset 4px 0 #2da44e}tr.worse td:first-child{box-shadow:inset 4px 0 #cf222e}
details summary{cursor:pointer;list-style:none}details summary::-webkit-details-marker{display:none}
details summary .clip::after{content:" more";color:#0969da}details[open] summary .clip{display:none}
details[open] summary::before{content:"less";color:#0969da}
footer{margin-top:30px;color:#8c959f;font-size:12px}
"""

SCRIPT = """
function cellKey(cell){var v=cell.getAttribute('data-v');
  if(v===null)return cell.textContent.toLowerCase();return v===''?null:parseFloat(v);}
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
  var table=th.closest('table'),i=Array.prototype.indexOf.call(th.parentNode.children,th);
  var text=th.classList.contains('text'),cur=th.getAttribute('data-dir');
  var desc=cur?cur==='asc':!text;
  table.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir');});
  th.setAttribute('data-dir',desc?'desc':'asc');
  var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
  rows=rows.map(function(r){return [cellKey(r.cells[i]),r];});
  rows.sort(function(a,b){var x=a[0],y=b[0];if(x===null)return y===null?0:1;if(y===null)return -1;
    var c=x<y?-1:x>y?1:0;return desc?-c:c;});
  rows.forEach(function(p){body.appendChild(p[1]);});});});
function filterRows(input){var q=input.value.toLowerCase(),t=input.nextElementSibling;
  Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
    r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});}
"""
