"""Problem types, one file each; each file registers its ``ProblemSpec`` (``tunelab.problem_spec``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tunelab.problem_spec import spec_of

if TYPE_CHECKING:
    from tunelab.problems.base import Problem

# The registry lines: one problem file per entry, loaded in this order (the order problem types are listed in).
PROBLEM_MODULES = ("causal_lm", "classification", "reward", "preference", "kto", "rl")


def load_problem_types() -> None:
    """Import every problem file so that each registers its spec (``problem_spec.spec_of`` calls this once)."""
    for module in PROBLEM_MODULES:
        importlib.import_module(f"tunelab.problems.{module}")


def build_problem(cfg: Any, tokenizer: Any) -> Problem:
    """The problem object for ``cfg.problem_type`` (a ``RunConfig``).

    Raises:
        ConfigError: for an unknown problem type, naming the closest one.
    """
    return spec_of(cfg.problem_type).build(cfg, tokenizer)
