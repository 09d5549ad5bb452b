"""Logits processors for what transformers' ``generate`` has no argument for: OpenAI's presence and frequency
penalties and logit bias, and JSON answers by constrained decoding (xgrammar, the grammar engine of vLLM and
SGLang, which runs on a CPU too).

Each processor is made for one ``generate`` call: it knows where the prompt ends, so only generated tokens count.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor

from tunelab.errors import ConfigError

if TYPE_CHECKING:
    from tunelab.generation.settings import GenerationSettings

MAX_COMPILERS = 4  # grammar compilers kept, one per (tokenizer, vocabulary size): building one reads the vocabulary


class PenaltyProcessor(LogitsProcessor):
    """``logit - frequency_penalty * count - presence_penalty * (count > 0) + logit_bias``, where ``count`` is how
    often a token was generated so far in this answer (OpenAI's definition; the prompt does not count)."""

    def __init__(self, prompt_length: int, presence: float, frequency: float, bias: tuple[tuple[int, float], ...]):
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency
        self.bias_ids = torch.tensor([token for token, _ in bias], dtype=torch.long)
        self.bias_values = torch.tensor([value for _, value in bias], dtype=torch.float32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]  # [rows, new]
        if (self.presence or self.frequency) and generated.shape[1]:
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            scores = scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        if len(self.bias_ids):
            scores = scores.clone()
            ids = self.bias_ids.to(scores.device)
            scores[:, ids] += self.bias_values.to(scores.device, scores.dtype)
        return scores


def vocab_size(model: Any) -> int:
    """The number of logits the model gives per step (may exceed the tokenizer's size: padded embeddings)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.vocab_size)


def check_vocabulary(settings: GenerationSettings, size: int) -> None:
    """Token ids in ``logit_bias`` and ``stop_token_ids`` must name tokens of the model.

    Raises:
        ConfigError: naming the field with an unknown token.
    """
    for name, ids in (("logit_bias", [t for t, _ in settings.logit_bias]), ("stop_token_ids", settings.stop_token_ids)):
        bad = [token for token in ids if token >= size]
        if bad:
            raise ConfigError(f"token id {bad[0]} is not in the model's vocabulary of {size} tokens", field=name)


class GrammarCompilers:
    """xgrammar compilers by (tokenizer, vocabulary size); each caches the grammars it compiled."""

    def __init__(self) -> None:
        self.compilers: OrderedDict[tuple[int, int], tuple[Any, Any]] = OrderedDict()
        self.lock = threading.Lock()

    def compile(self, tokenizer: Any, size: int, response_format: str) -> Any:
        """The compiled grammar of ``response_format`` for this tokenizer.

        Raises:
            ConfigError: when xgrammar is missing or cannot compile the schema.
        """
        try:
            import xgrammar
        except ImportError:
            raise ConfigError(
                "response_format needs the xgrammar package",
                field="response_format",
                hint="pip install 'tunelab[json]' (or pip install xgrammar)",
            ) from None
        key = (id(tokenizer), size)
        with self.lock:
            if key not in self.compilers:
                info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=size)
                self.compilers[key] = (tokenizer, xgrammar.GrammarCompiler(info))  # the tokenizer keeps its id taken
                while len(self.compilers) > MAX_COMPILERS:
                    self.compilers.popitem(last=False)
            self.compilers.move_to_end(key)
            compiler = self.compilers[key][1]
        schema = {"type": "object"} if response_format == "json_object" else json.loads(response_format)
        try:
            # Compact JSON: no free whitespace, which a weak model may otherwise emit forever.
            return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses with its reason
            reason = " ".join(str(exc).split())[:300]
            raise ConfigError(f"xgrammar cannot use this JSON schema: {reason}", field="response_format") from None


COMPILERS = GrammarCompilers()


class GrammarProcessor(LogitsProcessor):
    """Masks every token that would break the grammar. Follows each row by its generated tokens, so beam search
    (which reorders and copies rows every step) keeps the right state; a row that left the grammar (stopped by a
    stop string and padded) is let go."""

    def __init__(self, grammar: Any, prompt_length: int, end_ids: list[int]):
        self.grammar, self.prompt_length, self.end_ids = grammar, prompt_length, end_ids
        self.matchers: dict[tuple[int, ...], Any] = {}  # generated tokens -> matcher after them
        self.bitmask: torch.Tensor | None = None

    def _advance(self, tokens: tuple[int, ...], shared: bool) -> Any:
        """The matcher after ``tokens``: its parent's (a copy when the parent has several children) after the last
        token; None when the row left the grammar."""
        import xgrammar

        if not tokens:
            return xgrammar.GrammarMatcher(self.grammar, override_stop_tokens=self.end_ids)
        parent = self.matchers.get(tokens[:-1])
        if parent is None or parent.is_terminated():
            return parent
        matcher = parent.fork() if shared else parent
        return matcher if matcher.accept_token(tokens[-1]) else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import xgrammar

        keys = [tuple(row) for row in input_ids[:, self.prompt_length :].tolist()]  # generated tokens of each row
        if self.bitmask is None or self.bitmask.shape[0] != len(keys):
            self.bitmask = xgrammar.allocate_token_bitmask(len(keys), scores.shape[-1])
        children = Counter(key[:-1] for key in set(keys) if key)
        matchers: dict[tuple[int, ...], Any] = {}
        active = []
        for i, key in enumerate(keys):
            if key not in matchers:
                matchers[key] = self._advance(key, shared=children[key[:-1]] > 1)
            matcher = matchers[key]
            if matcher is not None and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, i)
                active.append(i)
        self.matchers = matchers
        if not active:
            return scores
        masked = scores.float().clone() if scores.device.type in ("cpu", "cuda") else scores.float().cpu()
        xgrammar.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device), indices=active)
        # A row with nothing left (min_new_tokens or no_repeat_ngram_size forbid the only way on) may end instead.
        rows = torch.tensor(active, device=masked.device)
        stuck = rows[torch.isinf(masked[rows]).all(dim=-1)]
        if len(stuck):
            masked[stuck.unsqueeze(1), torch.tensor(self.end_ids, device=masked.device)] = 0.0
        return masked.to(scores.device, scores.dtype)


def build_logits_processors(
    settings: GenerationSettings, tokenizer: Any, model: Any, prompt_length: int
) -> list[LogitsProcessor]:
    """The processors ``settings`` need beyond transformers' own, for one ``generate`` call.

    Raises:
        ConfigError: for an unknown token id or a JSON schema xgrammar cannot use.
    """
    from tunelab.generation.settings import model_eos_ids

    processors: list[LogitsProcessor] = []
    if settings.presence_penalty or settings.frequency_penalty or settings.logit_bias:
        check_vocabulary(settings, vocab_size(model))
        processors.append(
            PenaltyProcessor(prompt_length, settings.presence_penalty, settings.frequency_penalty, settings.logit_bias)
        )
    if settings.response_format:
        grammar = COMPILERS.compile(tokenizer, vocab_size(model), settings.response_format)
        end_ids = sorted(model_eos_ids(tokenizer, model) | set(settings.stop_token_ids))
        processors.append(GrammarProcessor(grammar, prompt_length, end_ids))
    return processors
