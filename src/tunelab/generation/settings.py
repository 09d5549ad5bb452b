"""One set of generation settings for evaluation, predict, chat, serve and the studio.

The run's ``prediction`` section gives the defaults (``GenerationSettings.from_prediction``); a command line
(``--set prediction.X=...``), chat's ``/params`` or an API request changes some of them (``settings.replace``).
Every value is checked here, with one-line errors, and turned into transformers' ``generate`` arguments here
(``generate_kwargs``), so every command decodes the same way from the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.config import PredictionConfig
from tunelab.errors import ConfigError

MAX_BEAMS = 64
MAX_STOPS = 16


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated. Frozen and hashable: requests with equal settings share a ``generate`` call.

    ``temperature``, ``top_p``, ``top_k`` and ``min_p`` apply when ``do_sample``; ``stop`` strings and
    ``stop_token_ids`` end an answer and are never part of it; ``presence_penalty``, ``frequency_penalty`` and
    ``logit_bias`` (token id, bias) follow OpenAI's definitions over the generated tokens; ``response_format`` is
    ``""`` (free text), ``"json_object"`` or a JSON schema's text, enforced by constrained decoding.
    """

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    response_format: str = ""

    def __post_init__(self) -> None:
        # Lists and dicts (from YAML, JSON or a request) become tuples: the settings stay hashable.
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple(sorted((token, float(b)) for token, b in bias)))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        check_settings(self)

    @classmethod
    def from_prediction(cls, prediction: PredictionConfig, **changes: Any) -> GenerationSettings:
        """The settings a run's ``prediction`` section describes, with ``changes`` applied.

        Raises:
            ConfigError: for a value out of range (named by its settings field).
        """
        stops = tuple(s for s in (part.strip() for part in prediction.stop_tokens.split(",")) if s)
        values: dict[str, Any] = {
            "max_new_tokens": prediction.max_length_inference,
            "min_new_tokens": prediction.min_length_inference,
            "do_sample": prediction.do_sample,
            "temperature": prediction.temperature,
            "top_p": prediction.top_p,
            "top_k": prediction.top_k,
            "min_p": prediction.min_p,
            "num_beams": prediction.num_beams,
            "repetition_penalty": prediction.repetition_penalty,
            "no_repeat_ngram_size": prediction.no_repeat_ngram_size,
            "stop": stops,
            "seed": None if prediction.seed < 0 else prediction.seed,
            "response_format": prediction.response_format,
        }
        return cls(**{**values, **changes})

    def replace(self, **changes: Any) -> GenerationSettings:
        """A copy with ``changes``, checked like the original."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """``name=value`` for every setting, on one line (chat's ``/params``)."""
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "stop":
                value = ",".join(value)
            elif field.name == "stop_token_ids":
                value = ",".join(map(str, value))
            elif field.name == "logit_bias":
                value = ",".join(f"{token}:{bias:g}" for token, bias in value)
            elif isinstance(value, bool):
                value = str(value).lower()
            elif value is None:
                value = "none"
            parts.append(f"{field.name}={value}")
        return " ".join(parts)


# name: (lowest, highest, lowest allowed itself)
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "max_new_tokens": (1, 1_000_000, True),
    "min_new_tokens": (0, 1_000_000, True),
    "temperature": (0, 100, False),
    "top_p": (0, 1, False),
    "top_k": (0, 1_000_000, True),
    "min_p": (0, 1, True),
    "num_beams": (1, MAX_BEAMS, True),
    "repetition_penalty": (0, 100, False),
    "no_repeat_ngram_size": (0, 1024, True),
    "presence_penalty": (-2, 2, True),
    "frequency_penalty": (-2, 2, True),
}


def check_settings(settings: GenerationSettings) -> None:
    """Every value in range, or a ``ConfigError`` naming the first that is not."""
    for name, (low, high, low_ok) in BOUNDS.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"must be a finite number, not {value!r}", field=name)
        if value > high or value < low or (value == low and not low_ok):
            interval = f"{'[' if low_ok else '('}{low:g}, {high:g}]"
            raise ConfigError(f"{value:g} is out of range: it must lie in {interval}", field=name)
    if len(settings.stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in settings.stop):
        raise ConfigError(f"stop strings must be at most {MAX_STOPS} non-empty strings", field="stop")
    if not all(isinstance(t, int) and t >= 0 for t in settings.stop_token_ids):
        raise ConfigError("stop token ids must be whole numbers of 0 or more", field="stop_token_ids")
    if settings.seed is not None and not (isinstance(settings.seed, int) and 0 <= settings.seed < 2**63):
        raise ConfigError(f"a seed must be a whole number of 0 or more, not {settings.seed!r}", field="seed")
    for token, bias in settings.logit_bias:
        if not isinstance(token, int) or token < 0:
            raise ConfigError(f"'{token}' is not a token id", field="logit_bias")
        if not -100 <= bias <= 100:
            raise ConfigError(f"the bias of token {token} must lie in [-100, 100], not {bias:g}", field="logit_bias")
    check_response_format(settings.response_format)


def check_response_format(text: str) -> None:
    if text in ("", "json_object"):
        return
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the JSON schema is not valid JSON ({exc.msg})", field="response_format") from None
    if not isinstance(schema, dict):
        raise ConfigError("a JSON schema must be a JSON object", field="response_format")


# ------------------------------------------------------------------ to transformers
def model_eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """The tokens that end an answer: the tokenizer's EOS and the model's generation config's."""
    eos = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        eos.add(config_eos)
    elif isinstance(config_eos, (list, tuple)):
        eos.update(config_eos)
    return {e for e in eos if e is not None}


def generate_kwargs(
    settings: GenerationSettings,
    tokenizer: Any,
    model: Any,
    prompt_length: int | None = None,
    stop_strings: bool = True,
) -> dict[str, Any]:
    """Arguments for ``model.generate``.

    Args:
        settings: the generation settings.
        tokenizer: the model's tokenizer (pad/EOS ids, stop strings, constrained decoding).
        model: the model (its EOS ids and vocabulary size).
        prompt_length: the (padded) prompt length of the call: penalties, logit bias and ``response_format`` need
            it to tell generated tokens from the prompt; None leaves those logits processors out.
        stop_strings: let transformers end rows at the stop strings (the server follows them itself).
    """
    from transformers import LogitsProcessorList

    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "min_new_tokens": min(settings.min_new_tokens, settings.max_new_tokens),
        "do_sample": settings.do_sample,
        "num_beams": settings.num_beams,
        "repetition_penalty": settings.repetition_penalty,
        "no_repeat_ngram_size": settings.no_repeat_ngram_size,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": sorted(model_eos_ids(tokenizer, model) | set(settings.stop_token_ids)),
    }
    if settings.do_sample:
        kwargs.update(
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,  # 0 = off: a model's own default must not apply
            min_p=settings.min_p or None,
        )
    else:
        # Greedy decoding: say so explicitly so a model's sampling defaults don't apply.
        kwargs.update(temperature=None, top_p=None, top_k=None, min_p=None)
    if prompt_length is not None:
        from tunelab.generation.constrain import build_logits_processors

        processors = build_logits_processors(settings, tokenizer, model, prompt_length)
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
    if settings.stop and stop_strings:
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    return kwargs


@contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None) -> Iterator[None]:
    """Seed torch's random numbers for the block, and give back the state they had (no other user is disturbed)."""
    if seed is None:
        yield
        return
    device = torch.device(device or "cpu")
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------ text
def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text up to the first stop string."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters must wait: an incomplete UTF-8 character, or what may start a stop string."""
    keep = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:size]):
                keep = size
                break
    return keep


def until_end(tokens: Sequence[int], end_ids: set[int]) -> tuple[list[int], bool]:
    """The tokens before the first end token (EOS or a stop token), and whether one came."""
    for i, token in enumerate(tokens):
        if token in end_ids:
            return list(tokens[:i]), True
    return list(tokens), False


def answer_text(tokenizer: Any, tokens: Sequence[int], end_ids: set[int], stops: Sequence[str]) -> str:
    """The answer a row of generated tokens holds: up to its end token and its first stop string, stripped."""
    kept, _ = until_end(tokens, end_ids)
    return cut_at_stops(tokenizer.decode(kept, skip_special_tokens=True), stops).strip()
