"""Problem types, one file each, registered by ``problem_type`` name."""

from __future__ import annotations

from typing import Any

from tunelab.registry import Registry

PROBLEMS: Registry[Any] = Registry("problem type")


def build_problem(cfg: Any, tokenizer: Any) -> Any:
    """The problem object for ``cfg.problem_type``."""
    # Imported here so that reading a config never pays for torch/transformers.
    from tunelab.problems import causal_lm, classification, preference, reward, rl  # noqa: F401

    return PROBLEMS.get(cfg.problem_type)(cfg, tokenizer)
