"""The data contract check: what the model will actually be trained on, and the mistakes that ruin a run.

It runs before every training run (and as ``tunelab data check``): token-length percentiles, truncated answers, rows
with nothing to train, answers without EOS, empty and duplicated rows, label balance and the padding an epoch would
waste. It stops the run when nothing would be trained, when too many answers are cut, or when no answer ends in EOS.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.config import RunConfig
from tunelab.data.collate import TrainBatches, padding_share
from tunelab.data.tokenize import EncodedSplit
from tunelab.errors import DataError


@dataclass
class DataReport:
    """What the data check found in one split."""

    source: str
    rows: int
    format: str
    tokens: int
    prompt_tokens: dict[str, float]
    answer_tokens: dict[str, float]
    truncated_share: float
    zero_trained_rows: int
    trained_token_share: float  # mean over rows of trained tokens / all tokens
    rows_without_eos: int
    empty_rows: int
    duplicate_rows: int
    padding_share: dict[str, float] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)
    deduplicated: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)} | {"max": float(values.max())}


def compute_report(split: EncodedSplit, cfg: RunConfig, source: str, fmt: str, deduplicated: int = 0) -> DataReport:
    """The statistics of a tokenised split (the training split, or a whole file for ``data inspect``)."""
    meta = split.meta
    lengths = split.lengths()
    trained = split.trained_counts()
    n = len(split)
    seen: set[bytes] = set()
    duplicates = 0
    for i in range(n):
        digest = hashlib.sha1(split.ids(i).tobytes()).digest()
        duplicates += digest in seen
        seen.add(digest)
    is_classification = split.targets is not None
    report = DataReport(
        source=source,
        rows=n,
        format=fmt,
        tokens=int(lengths.sum()),
        prompt_tokens=_percentiles(meta.get("prompt_length", lengths)),
        answer_tokens={} if is_classification else _percentiles(meta.get("answer_length", np.zeros(n))),
        truncated_share=float(np.mean(meta["truncated"])) if "truncated" in meta and n else 0.0,
        zero_trained_rows=0 if is_classification else int((trained == 0).sum()),
        trained_token_share=float(np.mean(trained / np.maximum(lengths, 1))) if n else 0.0,
        rows_without_eos=0
        if is_classification
        else int((~meta["ends_eos"].astype(bool)).sum())
        if "ends_eos" in meta
        else 0,
        empty_rows=int(meta["empty"].astype(bool).sum()) if "empty" in meta else 0,
        duplicate_rows=duplicates,
        deduplicated=deduplicated,
    )
    if is_classification and "label" in meta:
        counts = Counter()
        for label in meta["label"].tolist():
            counts.update(str(label).split("|"))
        report.label_counts = dict(sorted(counts.items()))
    else:
        report.padding_share = epoch_padding(lengths, cfg)
    return report


def epoch_padding(lengths: np.ndarray, cfg: RunConfig) -> dict[str, float]:
    """Padding share of one training epoch as configured, and as it would be with the other batching modes."""
    batch = cfg.training.batch_size
    out = {}
    for mode in ("shuffle", "group_by_length", "packing"):
        plan = TrainBatches(
            lengths,
            batch,
            0,
            drop_last=False,
            mode=mode,
            capacity=cfg.tokenizer.max_length,
        )
        out[mode] = padding_share(lengths, list(plan))
    return out


def batching_mode(cfg: RunConfig) -> str:
    """The batching mode a config trains with."""
    if cfg.training.packing:
        return "packing"
    return "group_by_length" if cfg.training.group_by_length else "shuffle"


def enforce(report: DataReport, cfg: RunConfig) -> None:
    """Stop a run that cannot work, with one clear line per problem.

    Raises:
        DataError: when nothing would be trained, too many answers are cut, or no answer ends with EOS.
    """
    where = {"file": report.source}
    if report.label_counts:
        return
    if report.rows and report.zero_trained_rows == report.rows:
        raise DataError(
            "nothing would be trained: every label is masked in every row",
            **where,
            hint="check dataset.answer_column and the token limits (an answer cut to nothing "
            "trains nothing), or set mask_prompt_labels: false",
        )
    limit = cfg.dataset.max_truncated_share
    if report.truncated_share > limit:
        raise DataError(
            f"{report.truncated_share:.0%} of the answers are cut by the token limits (more than "
            f"dataset.max_truncated_share = {limit:.0%})",
            **where,
            field="tokenizer.max_length_answer",
            hint=f"raise tokenizer.max_length_answer / max_length (answers reach "
            f"{report.answer_tokens.get('max', 0):.0f} tokens) or raise max_truncated_share",
        )
    untruncated_rows = report.rows * (1 - report.truncated_share)
    if report.rows and report.rows_without_eos >= report.rows and untruncated_rows > 0:
        raise DataError(
            "no answer ends with the EOS token, so the model would never learn to stop",
            **where,
            field="dataset.add_eos_token_to_answer",
            hint="set dataset.add_eos_token_to_answer: true, or use a chat template that ends turns with EOS",
        )


def print_report(report: DataReport, console: Any, cfg: RunConfig | None = None) -> None:
    """The report as a few readable lines."""

    def pct(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.0f}" for k, v in d.items()) if d else "-"

    console.print(
        f"[bold]data check[/] {report.source}: {report.rows} rows, format '{report.format}', {report.tokens:,} tokens"
    )
    console.print(f"  prompt tokens: {pct(report.prompt_tokens)}")
    if report.answer_tokens:
        console.print(f"  answer tokens: {pct(report.answer_tokens)}")
    console.print(
        f"  answers truncated: {report.truncated_share:.1%}; rows with nothing trained: "
        f"{report.zero_trained_rows}; trained share of tokens: {report.trained_token_share:.1%}"
    )
    if not report.label_counts:
        console.print(f"  rows whose answer does not end in EOS: {report.rows_without_eos}")
    console.print(
        f"  empty rows: {report.empty_rows}; duplicated rows: {report.duplicate_rows}; rows also in the "
        f"validation data (dropped from training): {report.deduplicated}"
    )
    if report.label_counts:
        total = sum(report.label_counts.values())
        console.print("  labels: " + ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in report.label_counts.items()))
    if report.padding_share:
        mode = batching_mode(cfg) if cfg else "shuffle"
        others = ", ".join(f"{k} {v:.1%}" for k, v in report.padding_share.items() if k != mode)
        console.print(f"  padding per epoch ({mode}): {report.padding_share[mode]:.1%} (others: {others})")


def save_length_histogram(split: EncodedSplit, cfg: RunConfig, path: str | Path) -> Path:
    """A PNG histogram of prompt, answer and total token lengths, with the configured limits marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    total = split.lengths()
    series = [("total", total)]
    if "answer_length" in split.meta and split.targets is None:
        series = [("prompt", split.meta["prompt_length"]), ("answer", split.meta["answer_length"]), *series]
    bins = np.linspace(0, max(int(total.max()) if len(total) else 1, 1), 40)
    for name, values in series:
        ax.hist(values, bins=bins, alpha=0.55, label=name)
    ax.axvline(cfg.tokenizer.max_length, color="black", linestyle="--", label=f"max_length {cfg.tokenizer.max_length}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("rows")
    ax.set_title("token lengths")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_row(split: EncodedSplit, i: int, tokenizer: Any) -> Any:
    """Row ``i`` as the model sees it: trained tokens highlighted, masked tokens dimmed (a rich Text)."""
    from rich.text import Text

    text = Text()
    ids = split.ids(i)
    labels = split.token_labels(i) if split.labels is not None else None
    for pos, token in enumerate(ids.tolist()):
        piece = tokenizer.decode([token])
        trained = labels is not None and pos > 0 and labels[pos] != -100
        text.append(piece, style="bold green" if trained else "dim")
    return text
