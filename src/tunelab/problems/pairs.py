"""What the problem types trained on preference pairs share: encoding a pair, metrics and report rows.

A preference example is ``{"prompt": [messages], "chosen": str, "rejected": str}`` (see ``data/formats.py``). Its two
sequences (prompt + chosen answer, prompt + rejected answer) are stored back to back in one row of an
``EncodedSplit``; ``meta["chosen_length"]`` says where the chosen one ends (``data.collate.pair_sequences``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunelab.config import CUSTOM_METRIC
from tunelab.data.prompts import IGNORE_INDEX, PromptRenderer, Rendered
from tunelab.data.tokenize import SplitBuilder


def with_answer(prompt: list[dict[str, str]], answer: str) -> list[dict[str, str]]:
    """The conversation ``prompt`` followed by ``answer`` as the assistant's turn."""
    return [*prompt, {"role": "assistant", "content": answer}]


def last_user_turn(prompt: list[dict[str, str]]) -> str:
    """The last user message of a prompt, as written (for reports)."""
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


def render_answer_only(renderer: PromptRenderer, prompt: list[dict[str, str]], answer: str) -> Rendered:
    """``prompt`` + ``answer`` rendered as in training, the prompt masked whatever ``mask_prompt_labels`` says.

    Preference losses compare the log-probabilities of the answers alone, so the prompt never carries labels.
    """
    rendered = renderer.render(with_answer(prompt, answer))
    cut = rendered.prompt_length
    labels = [IGNORE_INDEX] * cut + list(rendered.labels[cut:])
    return Rendered(
        rendered.input_ids,
        labels,
        rendered.prompt_length,
        rendered.answer_length,
        rendered.answer_truncated,
        rendered.ends_with_eos,
    )


def add_pair(builder: SplitBuilder, row: int, chosen: Rendered, rejected: Rendered, example: dict[str, Any]) -> None:
    """Store one pair as a row: chosen ids then rejected ids, their labels, and the data check's statistics."""
    builder.add(
        list(chosen.input_ids) + list(rejected.input_ids),
        row,
        labels=list(chosen.labels) + list(rejected.labels),
        chosen_length=len(chosen.input_ids),
        prompt_length=max(chosen.prompt_length, rejected.prompt_length),
        answer_length=chosen.answer_length + rejected.answer_length,
        truncated=chosen.answer_truncated or rejected.answer_truncated,
        ends_eos=chosen.ends_with_eos and rejected.ends_with_eos,
        empty=not (example["chosen"].strip() and example["rejected"].strip()),
    )


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Share of pairs whose chosen answer scores higher; a tie counts half (a model that cannot tell gets 0.5)."""
    if len(chosen) == 0:
        return float("nan")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def pair_rows(examples: list[dict[str, Any]], chosen: np.ndarray, rejected: np.ndarray) -> list[dict[str, Any]]:
    """One report row per pair: the prompt, both answers, both scores; ``score`` is 1 when the chosen one wins."""
    rows = []
    for ex, c, r in zip(examples, chosen, rejected):
        rows.append(
            {
                "prompt": last_user_turn(ex["prompt"]),
                "reference": ex["chosen"],
                "prediction": ex["rejected"],
                "chosen_reward": float(c),
                "rejected_reward": float(r),
                "margin": float(c - r),
                "score": float(c > r) + 0.5 * float(c == r),
            }
        )
    return rows


def pair_rules(cfg: Any) -> list[tuple[str, str]]:
    """The config rules of every type trained on preference pairs: two whole sequences per row, pairwise metrics."""
    found, kind = [], cfg.problem_type
    if cfg.training.packing:
        found.append(("training.packing", f"{kind} compares two whole sequences per row and cannot pack them"))
    if cfg.dataset.format not in ("auto", "preference"):
        found.append(("dataset.format", f"{kind} trains on preference pairs: use 'auto' or 'preference'"))
    custom = [m for m in cfg.all_metrics() if CUSTOM_METRIC.match(m)]
    if custom:
        found.append(("prediction.metric", f"{kind} reports pairwise metrics only, not '{custom[0]}'"))
    return found


def two_sequences(cfg: Any) -> int:
    """Planner: a pair is read as its chosen and its rejected sequence."""
    return 2
