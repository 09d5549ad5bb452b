"""What the rest of tunelab may ask about a problem type: one typed ``ProblemSpec`` per type, in one registry.

Every problem file (``tunelab/problems/<name>.py``) builds its spec next to its behaviour and registers it with
``register_spec``. The config, the data readers, the model loaders, the planner, the report, the server, the CLI and
the studio ask the spec (``spec_of(cfg.problem_type)``); none of them compares problem-type names.

Why the spec is declared here and not in ``problems/``: ``config``, ``data`` and ``models`` sit *below* ``problems``
in the import layers and read these facts too, so the type (and the registry) lives at the bottom, beside
``registry.py`` and ``errors.py``. The registry is filled by the problem files; the first lookup loads them through
``tunelab.problems.load_problem_types`` by module name (the way a plugin entry point is loaded), so no module below
``problems`` imports it. See docs/problem-types.md.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from tunelab.registry import Registry

# (RunConfig) -> every inconsistency as (dotted field path, message); the config reports them all at once.
Rule = Callable[[Any], list[tuple[str, str]]]
Endpoint = Literal["chat", "completions", "classify", "score"]
ExportFormat = Literal["adapter", "merged", "gguf"]
RowsLayout = Literal["answers", "labels", "numbers", "pairs"]
Reference = Literal["none", "model", "precomputed"]
ENDPOINT_PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "classify": "/v1/classify",
    "score": "/v1/score",
}


def _no_rules(cfg: Any) -> list[tuple[str, str]]:
    return []


def _one_sequence(cfg: Any) -> int:
    return 1


def _no_reference(cfg: Any) -> Reference:
    return "none"


def _no_sampling(cfg: Any) -> Sampling | None:
    return None


@dataclass(frozen=True)
class Sampling:
    """What an online method generates per training step, for the planner's memory estimate."""

    completions_per_row: int
    max_new_tokens: int
    reward_model: str = ""  # a reward run directory whose weights are loaded too ('' for none)


class ProblemOptions(BaseModel):
    """Base of a problem type's own config fields (``ProblemSpec.options``), written in the ``training`` section.

    A subclass declares typed fields with defaults, bounds and descriptions, as ``config.py``'s sections do; the config
    validates them against the run's problem type, ``docs/config.md`` lists them, and code reads them typed::

        class KTOOptions(ProblemOptions):
            desirable_weight: float = Field(1.0, gt=0, le=100, description="...")

        KTOOptions.of(cfg).desirable_weight
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def of(cls: type[OptionsT], cfg: Any) -> OptionsT:
        """The options of run config ``cfg`` (a ``RunConfig`` whose problem type declares ``cls``).

        Raises:
            TypeError: when ``cfg``'s problem type declares other options (or none).
        """
        got = cfg.problem_options
        if not isinstance(got, cls):
            raise TypeError(f"{cls.__name__} are not the options of problem_type {cfg.problem_type}")
        return got


OptionsT = TypeVar("OptionsT", bound=ProblemOptions)


@dataclass(frozen=True)
class ProblemSpec:
    """Everything outside ``problems/`` knows about one problem type.

    Args:
        name: the ``problem_type`` value.
        summary: one line saying what is trained (docs, studio, CLI help).
        build: ``(RunConfig, tokenizer) -> Problem`` — the behaviour (``problems/base.py``'s ``Problem``).
        data_kinds: the canonical example kinds (``data/shapes.py``'s ``FORMAT_KINDS`` values) it trains on; the
            first is its own kind.
        default_format: the ``dataset.format`` its own data comes in (its kind is in ``data_kinds``).
        metrics: the validation metrics it computes; the first is the default ``prediction.metric``.
        lower_is_better: those of ``metrics`` (and of its extra logged metrics) that are minimised.
        losses: the ``training.loss_function`` values it accepts; the first is the default.
        rules: its cross-field config rules (``RunConfig.problems`` adds them to the generic ones).
        generative: the model is a causal LM with its language-model head (no new head; it can answer before
            training, be the backbone of a new run, and its LM head counts as "the head").
        numeric_labels: labels are numbers (a regression target), not classes.
        token_masking: ``augmentation.token_mask_probability`` applies (prompt tokens of a trained sequence).
        shown_kinds: data kinds ``tunelab data inspect`` shows as this type when the user names none.
        inspect_overrides: ``--set`` values that make a config of this type valid just to render data.
        starter: values ``tunelab config init`` and the studio's new-experiment form start from (nested dict).
        sequences_per_row: planner: sequences the model reads per data row.
        reference: planner: ``"model"`` when a frozen reference model is used, ``"precomputed"`` when its
            log-probabilities are computed before training, else ``"none"``.
        sampling: planner: what is generated per step (online methods), else None.
        rows_layout: report: how the validation rows table reads (answers, class labels, numbers or pairs).
        score_note: report: what the rows table's score column means for this type.
        report_sections: report: optional sections it adds (``"confusion_matrix"``).
        endpoints: ``tunelab serve`` endpoints it answers (chat, completions, classify, score).
        exports: ``tunelab export`` formats it supports (adapter, merged, gguf).
        studio: studio-only hints (e.g. the label column field is shown).
        options: its own config fields (a ``ProblemOptions`` subclass), written in the ``training`` section (e.g.
            ``training.desirable_weight``) and read with ``Options.of(cfg)``; None when it has none.
    """

    name: str
    summary: str
    build: Callable[[Any, Any], Any]
    data_kinds: tuple[str, ...]
    default_format: str
    metrics: tuple[str, ...]
    losses: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    rows_layout: RowsLayout
    generative: bool = False
    lower_is_better: tuple[str, ...] = ()
    rules: Rule = _no_rules
    numeric_labels: bool = False
    token_masking: bool = False
    shown_kinds: tuple[str, ...] = ()
    inspect_overrides: tuple[str, ...] = ()
    starter: Mapping[str, Any] = field(default_factory=dict)
    sequences_per_row: Callable[[Any], int] = _one_sequence
    reference: Callable[[Any], Reference] = _no_reference
    sampling: Callable[[Any], Sampling | None] = _no_sampling
    score_note: str = ""
    report_sections: tuple[str, ...] = ()
    exports: tuple[ExportFormat, ...] = ("adapter", "merged")
    options: type[ProblemOptions] | None = None

    @property
    def labelled(self) -> bool:
        """It trains on texts with labels (a label column, no answers)."""
        return "labelled" in self.data_kinds

    @property
    def can_chat(self) -> bool:
        return "chat" in self.endpoints

    @property
    def scores_answers(self) -> bool:
        """Its model scores given answers (a reward model) instead of writing or classifying."""
        return "score" in self.endpoints

    def public(self) -> dict[str, Any]:
        """The facts the studio reads (GET /api/problem-types): plain JSON."""
        return {
            "name": self.name,
            "summary": self.summary,
            "data_kinds": list(self.data_kinds),
            "default_format": self.default_format,
            "metrics": list(self.metrics),
            "lower_is_better": list(self.lower_is_better),
            "losses": list(self.losses),
            "generative": self.generative,
            "labelled": self.labelled,
            "numeric_labels": self.numeric_labels,
            "can_chat": self.can_chat,
            "endpoints": list(self.endpoints),
            "exports": list(self.exports),
            "starter": dict(self.starter),
            "options": list(self.options.model_fields) if self.options else [],
        }


SPECS: Registry[ProblemSpec] = Registry("problem type")
_loaded = False


def register_spec(spec: ProblemSpec) -> ProblemSpec:
    """Add a problem type (called once by its problem file).

    Raises:
        ValueError: when its options are not a ``ProblemOptions`` or name a field the training section already has.
    """
    if spec.options is not None:
        if not (isinstance(spec.options, type) and issubclass(spec.options, ProblemOptions)):
            raise ValueError(f"{spec.name}: ProblemSpec.options must be a ProblemOptions subclass")
        # By name (config sits above this module): an option may not shadow a field of the training section.
        training = importlib.import_module("tunelab.config").TrainingConfig.model_fields
        clash = [name for name in spec.options.model_fields if name in training]
        if clash:
            raise ValueError(f"{spec.name}: option '{clash[0]}' is already a field of the training section")
    return SPECS.register(spec.name)(spec)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        # By name, not by import statement: the problem files sit above this module (see the module docstring).
        importlib.import_module("tunelab.problems").load_problem_types()


def spec_of(name: str) -> ProblemSpec:
    """The spec of problem type ``name``.

    Raises:
        ConfigError: for an unknown name, naming the closest registered one.
    """
    _load()
    return SPECS.get(name)


def problem_types() -> list[str]:
    """Every registered problem type, in registration order."""
    _load()
    return SPECS.names()


def all_specs() -> list[ProblemSpec]:
    return [spec_of(name) for name in problem_types()]


def starter_config(name: str) -> dict[str, Any]:
    """The config data a new run of problem type ``name`` starts from (``config init``, the studio's form)."""
    return {"problem_type": name, **copy.deepcopy(dict(spec_of(name).starter))}


def is_lower_better(metric: str) -> bool:
    """Whether a metric (any case) is minimised: the loss, and each problem type's own lower-is-better metrics."""
    key = metric.lower()
    return key == "loss" or any(key == m.lower() for spec in all_specs() for m in spec.lower_is_better)


class LowerIsBetter:
    """``name in LOWER_IS_BETTER`` for the metrics the specs declare minimised (a set-like view, filled lazily)."""

    def __contains__(self, metric: object) -> bool:
        return isinstance(metric, str) and is_lower_better(metric)
