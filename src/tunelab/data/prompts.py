"""Rendering conversations into token ids and labels, the same way for training and for inference.

The prompt is tokenised on its own and the answer appended, so the prompt ids seen in training are exactly the ids a
generation call starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.config import RunConfig
from tunelab.errors import DataError

IGNORE_INDEX = -100


@dataclass
class Rendered:
    """One tokenised example: ``input_ids`` and ``labels`` (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    answer_truncated: bool


class PromptRenderer:
    """Renders conversations with the tokenizer's chat template or H2O-style text fields.

    Args:
        cfg: the run config (dataset and tokenizer sections are used).
        tokenizer: a transformers tokenizer.
    """

    def __init__(self, cfg: RunConfig, tokenizer: Any):
        self.cfg = cfg
        self.tokenizer = tokenizer
        use = cfg.dataset.use_chat_template
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use is True and not has_template:
            raise DataError(
                "dataset.use_chat_template is true but the tokenizer has no chat template",
                field="dataset.use_chat_template",
                hint="set it to 'auto' or false",
            )
        self.use_template = has_template if use == "auto" else bool(use)
        self.eos = tokenizer.eos_token or ""

    # ------------------------------------------------------------------ text
    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """Everything the model sees before it starts answering the last user turn."""
        if self.use_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ds = self.cfg.dataset
        parts = []
        for message in messages:
            if message["role"] == "system":
                parts.append(message["content"] + "\n")
            elif message["role"] == "user":
                parts.append(
                    ds.text_prompt_start
                    + message["content"]
                    + (self.eos if ds.add_eos_token_to_prompt else "")
                    + ds.text_answer_separator
                )
            else:
                parts.append(message["content"] + (self.eos if ds.add_eos_token_to_answer else ""))
        return "".join(parts)

    def answer_text(self, messages: list[dict[str, str]]) -> str:
        """The text of the final assistant turn, including the end-of-turn token the template adds."""
        answer = messages[-1]["content"]
        if not self.use_template:
            return answer + (self.eos if self.cfg.dataset.add_eos_token_to_answer else "")
        prompt = self.prompt_text(messages[:-1])
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            # Some templates rewrite earlier turns once an answer follows; fall back to the plain answer + EOS.
            return answer + self.eos
        tail = full[len(prompt) :]
        # Keep the template's end-of-turn token, drop the whitespace it puts after it.
        if self.eos and self.eos in tail:
            tail = tail[: tail.rindex(self.eos) + len(self.eos)]
        return tail

    # ------------------------------------------------------------------ ids
    def _encode(self, text: str, *, first: bool) -> list[int]:
        # The chat template writes its own special tokens; plain prompts get the tokenizer's (e.g. BOS).
        add_special = first and not self.use_template
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids, cut from the left to ``max_length_prompt`` (a leading BOS is kept)."""
        ids = self._encode(self.prompt_text(messages), first=True)
        return self._cut_left(ids, self.cfg.tokenizer.max_length_prompt)

    def _cut_left(self, ids: list[int], limit: int) -> list[int]:
        if len(ids) <= limit:
            return ids
        bos = self.tokenizer.bos_token_id
        keep = 1 if bos is not None and ids and ids[0] == bos and limit > 1 else 0
        return ids[:keep] + ids[len(ids) - (limit - keep) :]

    def render(self, messages: list[dict[str, str]]) -> Rendered:
        """Token ids and labels for a conversation whose last turn is the assistant's answer."""
        tok = self.cfg.tokenizer
        prompt = self.prompt_ids(messages[:-1])
        answer_full = self._encode(self.answer_text(messages), first=False)
        answer = answer_full[: tok.max_length_answer]
        truncated = len(answer) < len(answer_full)
        overflow = len(prompt) + len(answer) - tok.max_length
        if overflow > 0:
            # The prompt gives way first (from the left), then the answer (from the right).
            prompt = self._cut_left(prompt, max(len(prompt) - overflow, 1))
            overflow = len(prompt) + len(answer) - tok.max_length
            if overflow > 0:
                answer = answer[: len(answer) - overflow]
                truncated = True
        mask = self.cfg.dataset.mask_prompt_labels
        labels = ([IGNORE_INDEX] * len(prompt) if mask else list(prompt)) + list(answer)
        return Rendered(list(prompt) + list(answer), labels, len(prompt), truncated)
