"""Example reward functions for online RL (``rl.reward_function: tunelab.rewards:NAME``).

A reward function gets the prompts (the last user message of each) and the sampled completions, plus keyword
arguments: ``references`` (the data's answers, or None), ``finished`` (whether each completion ended with EOS
rather than at ``rl.max_new_tokens``) and everything in ``rl.reward_kwargs``. It returns one number per completion.
Write your own with the same signature and name it as ``my_module:my_function`` or ``path/to/file.py:function``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tunelab.evaluate.metrics import exact_match

NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")


def _finished(finished: Sequence[bool] | None, n: int) -> Sequence[bool]:
    return finished if finished is not None else [True] * n


def length_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    max_words: int = 20,
    min_words: int = 1,
    finished: Sequence[bool] | None = None,
    **_: Any,
) -> list[float]:
    """1 for an answer of ``min_words`` to ``max_words`` words that ended by itself (EOS), else 0.

    ``min_words`` above 1 keeps the policy from collapsing into one-token "answers".
    """
    done = _finished(finished, len(completions))
    return [float(min_words <= len(text.split()) <= max_words and ok) for text, ok in zip(completions, done)]


def format_reward(
    prompts: Sequence[str], completions: Sequence[str], pattern: str = r"^Answer: .+", **_: Any
) -> list[float]:
    """1 when the completion matches the regular expression ``pattern`` (searched, multi-line), else 0."""
    regex = re.compile(pattern, re.MULTILINE)
    return [float(regex.search(text) is not None) for text in completions]


def exact_match_reward(
    prompts: Sequence[str], completions: Sequence[str], references: Sequence[str | None] | None = None, **_: Any
) -> list[float]:
    """1 when the completion equals the reference answer after SQuAD normalisation (case, punctuation, articles)."""
    references = references or [None] * len(completions)
    # exact_match scores 0 or 100 (a percentage, like the metric): the reward is 0 or 1.
    return [0.0 if ref is None else exact_match(text, ref) / 100 for text, ref in zip(completions, references)]


def number_in_range_reward(
    prompts: Sequence[str], completions: Sequence[str], low: float = 0, high: float = 100, **_: Any
) -> list[float]:
    """1 when the first number in the completion lies in [low, high], else 0."""
    out = []
    for text in completions:
        found = NUMBER.search(text)
        out.append(float(found is not None and low <= float(found.group().replace(",", ".")) <= high))
    return out
