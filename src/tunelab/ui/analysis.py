"""Looking before training: a data file as the model will see it, and the planner's memory and time estimate.

Both use the same functions as ``tunelab data inspect`` and ``tunelab plan``; nothing here decides differently.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from tunelab.config import RunConfig
from tunelab.errors import DataError

PREVIEW_ROWS = 5
HISTOGRAM_BINS = 30
# The tokenizer and planner are not safe to drive from several request threads at once.
_LOCK = threading.Lock()
_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(backbone: str) -> Any:
    from tunelab.models.load import load_tokenizer, resolve_backbone

    source = resolve_backbone(backbone)
    if source not in _TOKENIZERS:
        _TOKENIZERS[source] = load_tokenizer(source)
    return _TOKENIZERS[source]


def inspect_data(cfg: RunConfig, path: str, rows: int = PREVIEW_ROWS) -> dict[str, Any]:
    """What ``tunelab data inspect`` shows, as data: the detected format, the data check, rows rendered with their
    trained tokens marked, and the token-length histogram.

    Args:
        cfg: the experiment's config (its dataset section says how to read the file; its backbone, how to tokenise).
        path: the data file (an upload or a path on the server).
        rows: how many rows to render.

    Raises:
        TunelabError: for a file that cannot be read as the config says (the message names row and field).
    """
    from tunelab.data.inspect import compute_report, render_row
    from tunelab.data.readers import read_columns
    from tunelab.data_inspect import encode_file

    with _LOCK:
        tokenizer = _tokenizer(cfg.llm_backbone)
        problem, reader, split = encode_file(cfg, tokenizer, path)
        report = compute_report(split, cfg, path, reader.format)
        preview = [_segments(render_row(split, i, tokenizer)) for i in range(min(rows, len(split)))]
    classes = list(getattr(problem, "classes", []) or [])
    targets = split.targets
    shown = []
    for i, segments in enumerate(preview):
        item: dict[str, Any] = {"row": int(split.rows[i]), "tokens": int(split.lengths()[i]), "segments": segments}
        if targets is not None and classes and targets.ndim == 1:
            item["label"] = classes[int(targets[i])]
        shown.append(item)
    return {
        "path": path,
        "format": reader.format,
        "shape": reader.detection.title if reader.detection else reader.format,
        "problem_types": reader.detection.problem_types() if reader.detection else [],
        "notes": reader.notes,
        "columns": read_columns(path),
        "report": report.to_dict(),
        "findings": findings(report, cfg),
        "preview": shown,
        "histogram": histogram(split, cfg),
    }


def _segments(text: Any) -> list[dict[str, Any]]:
    """A rendered row (rich Text: trained tokens bold green, the rest dim) as [{text, trained}] runs."""
    out: list[dict[str, Any]] = []
    for span in text.spans:
        piece = text.plain[span.start : span.end]
        trained = "green" in str(span.style)
        if out and out[-1]["trained"] == trained:
            out[-1]["text"] += piece
        else:
            out.append({"text": piece, "trained": trained})
    return out


def findings(report: Any, cfg: RunConfig) -> list[dict[str, str]]:
    """The data check's verdict: what would stop the run (level 'error') and what deserves a look ('warning')."""
    from tunelab.data.inspect import enforce

    out = []
    try:
        enforce(report, cfg)
    except DataError as exc:
        out.append({"level": "error", "message": exc.line()})
    checks = [
        (report.truncated_share > 0, f"{report.truncated_share:.1%} of the answers are cut by the token limits"),
        (report.zero_trained_rows > 0, f"{report.zero_trained_rows} rows have nothing to train"),
        (
            report.rows_without_eos > 0 and not report.label_counts,
            f"{report.rows_without_eos} answers do not end with EOS",
        ),
        (report.empty_rows > 0, f"{report.empty_rows} empty rows"),
        (report.duplicate_rows > 0, f"{report.duplicate_rows} duplicated rows"),
    ]
    out += [{"level": "warning", "message": message} for failed, message in checks if failed]
    if not out:
        out.append({"level": "ok", "message": "the data check found nothing wrong"})
    return out


def histogram(split: Any, cfg: RunConfig) -> dict[str, Any]:
    """Token-length counts on shared bins (total, and prompt/answer for causal LM data) with the configured limit."""
    total = split.lengths()
    series = {"total": total}
    if "answer_length" in split.meta and split.targets is None:
        series = {"prompt": split.meta["prompt_length"], "answer": split.meta["answer_length"], "total": total}
    top = max(int(total.max()) if len(total) else 1, 1) + 1
    edges = np.linspace(0, top, min(HISTOGRAM_BINS, top) + 1)  # short rows: one bin per token count
    return {
        "edges": [float(e) for e in edges],
        "series": {name: np.histogram(values, bins=edges)[0].astype(int).tolist() for name, values in series.items()},
        "max_length": cfg.tokenizer.max_length,
    }


def estimate(cfg: RunConfig) -> dict[str, Any]:
    """The planner's prediction for a config (as ``tunelab plan``), plus the number of steps and the time they take.

    Raises:
        TunelabError: for data or a backbone that cannot be used.
    """
    from tunelab.plan import GB
    from tunelab.training.setup import build_batches, count_steps, plan_and_size_batches, prepare_data

    cfg = cfg.model_copy(deep=True)  # batch_size 'auto' is resolved in this copy, as a run would
    with _LOCK:
        source, _, problem, data, report = prepare_data(cfg, check=False)
        plan = plan_and_size_batches(cfg, problem, source, data, report, None)
    _, total_steps = count_steps(cfg, len(build_batches(cfg, data.train, 0)))
    seconds = None
    if plan.step_seconds:
        seconds = plan.step_seconds * total_steps * cfg.training.grad_accumulation
    return {
        "summary": plan.summary(),
        "peak_gb": plan.total / GB,
        "budget_gb": plan.budget / GB,
        "fits": plan.total <= plan.budget,
        "device": plan.device,
        "batch_size": plan.batch_size,
        "seq_len": plan.seq_len,
        "parameters": plan.parameters,
        "trainable": plan.trainable,
        "train_rows": len(data.train),
        "total_steps": total_steps,
        "estimated_seconds": None if seconds is None or not math.isfinite(seconds) else seconds,
        "findings": findings(report, cfg),
        "parts_gb": {k: getattr(plan, k) / GB for k in ("weights", "gradients", "optimizer", "activations", "logits")},
    }
