"""Loading a finished run from its run directory — the only input of predict, chat, eval and export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig, load_config, prediction_overrides
from tunelab.models.load import (
    load_backbone,
    load_run_weights,
    load_tokenizer,
    quantization_config,
    resolve_backbone,
)
from tunelab.problems import build_problem
from tunelab.rundir import RunDirectory


@dataclass
class LoadedRun:
    run: RunDirectory
    cfg: RunConfig
    tokenizer: Any
    problem: Any
    model: Any


def load_run(
    path: str | Path, device: str | None = None, full_precision: bool = False, overrides: list[str] | None = None
) -> LoadedRun:
    """The trained model of a run, ready for inference (eval mode).

    Args:
        path: the run directory.
        device: where to put the model (default: a GPU when there is one).
        full_precision: load a quantised run's backbone unquantised (for merging: never merge into 4-bit weights).
        overrides: ``prediction.field=value`` changes to the run's prediction settings, for this use only.

    Raises:
        RunDirError: when ``path`` is not a finished run.
        ModelError: when its backbone cannot be found.
        ConfigError: for an override of anything but the prediction settings, or a value out of range.
    """
    run = RunDirectory.open(path)
    cfg = load_config(run.config_path, prediction_overrides(overrides)) if overrides else run.config()
    # The saved tokenizer carries the chat template used in training: never re-resolve it from the config.
    cfg.dataset.chat_template = ""
    tokenizer = load_tokenizer(str(run.tokenizer_dir))
    if cfg.dataset.use_chat_template == "auto":
        # A run saved without a template rendered plain text; one with a template (its own or the plain fallback)
        # rendered with it. Either way the saved tokenizer decides, not today's defaults.
        cfg.dataset.use_chat_template = bool(getattr(tokenizer, "chat_template", None))
    problem = build_run_problem(cfg, tokenizer)
    problem.load(run.path)
    model = load_run_weights(
        run, problem.auto_class(), full_precision, tokenizer.pad_token_id, **problem.model_kwargs()
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if full_precision or quantization_config(cfg.architecture) is None:
        model.to(device)  # quantised weights were placed on their device when loaded
    model.eval()
    return LoadedRun(run, cfg, tokenizer, problem, model)


def build_run_problem(cfg: RunConfig, tokenizer: Any) -> Any:
    """``build_problem``, given the loader of other runs a problem may read (RL's reward run, ``rl.reward_model``).

    Problems sit below this module in the import layers, so they get ``load_run`` passed in instead of importing it.
    """
    problem = build_problem(cfg, tokenizer)
    problem.load_run = load_run
    return problem


def load_base(cfg: RunConfig, device: str | None = None) -> LoadedRun:
    """The untouched backbone of ``cfg`` as a LoadedRun without a run directory (causal LM only)."""
    from tunelab.errors import ConfigError

    if not cfg.spec.generative:
        raise ConfigError(
            "only a causal LM can answer before training",
            field="problem_type",
            hint="train first: a classification head is created by training",
        )
    source = resolve_backbone(cfg.llm_backbone)
    tokenizer = load_tokenizer(source)
    problem = build_problem(cfg, tokenizer)
    model = load_backbone(source, problem.auto_class(), dtype=cfg.architecture.backbone_dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return LoadedRun(None, cfg, tokenizer, problem, model)  # type: ignore[arg-type]
