"""Rendering conversations into token ids and labels, the same way for training and for inference.

A conversation is rendered as segments — the text before each assistant turn (never trained) and each assistant
turn (trained per ``dataset.train_on``). Each segment is tokenised on its own, so the prompt ids seen in training are
exactly the ids a generation call starts from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig
from tunelab.data.messages import is_trained, message_text
from tunelab.errors import DataError

IGNORE_INDEX = -100


def _tools_in_system(messages: list[dict[str, Any]], tools: list[dict]) -> list[dict[str, Any]]:
    """Tool definitions written into the system prompt, for templates (and plain text) that take no tools."""
    text = "You can call these tools:\n" + json.dumps([t.get("function", t) for t in tools], ensure_ascii=False)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


BUILTIN_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% else %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    # The fallback for tokenizers without a template (base models: pythia, gpt2): "User: ...", then
    # "Assistant: ..." ended by EOS; a system prompt comes first, followed by a blank line.
    "plain": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
        "{% else %}{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
}


def resolve_chat_template(name: str) -> str:
    """The Jinja text of ``dataset.chat_template``: a built-in name or a file path.

    Raises:
        DataError: for an unknown name or unreadable file.
    """
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    path = Path(name)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(
                f"cannot read the chat template ({exc})", file=name, field="dataset.chat_template"
            ) from None
    raise DataError(
        f"unknown chat template '{name}'",
        field="dataset.chat_template",
        hint=f"use a built-in name ({', '.join(BUILTIN_TEMPLATES)}) or the path of a .jinja file",
    )


def apply_template_setting(cfg: RunConfig, tokenizer: Any) -> None:
    """Install ``dataset.chat_template`` on the tokenizer, so it is saved with the run and used everywhere after.

    With ``use_chat_template: auto``, a tokenizer that has no template of its own gets the built-in ``plain`` one,
    unless the H2O-style text fields (``text_prompt_start``, ``text_answer_separator``) say how to render instead.
    """
    ds = cfg.dataset
    if ds.chat_template:
        tokenizer.chat_template = resolve_chat_template(ds.chat_template)
    elif (
        ds.use_chat_template == "auto"
        and not getattr(tokenizer, "chat_template", None)
        and not (ds.text_prompt_start or ds.text_answer_separator)
    ):
        tokenizer.chat_template = BUILTIN_TEMPLATES["plain"]


@dataclass
class Rendered:
    """One tokenised example: ``input_ids`` and ``labels`` (``IGNORE_INDEX`` where no loss is taken), with stats."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int  # tokens before the last answer
    answer_length: int  # tokens of the last answer kept
    answer_truncated: bool
    ends_with_eos: bool  # the last answer ends with the EOS token


class PromptRenderer:
    """Renders conversations with a chat template or H2O-style text fields.

    Args:
        cfg: the run config (dataset and tokenizer sections are used).
        tokenizer: a transformers tokenizer (its chat template already set by ``apply_template_setting``).
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
                hint="set dataset.chat_template, or 'auto'/false",
            )
        self.use_template = has_template if use == "auto" else bool(use)
        self.eos = tokenizer.eos_token or ""
        self.eos_id = tokenizer.eos_token_id

    # ------------------------------------------------------------------ tools
    def _template_messages(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> list[dict[str, Any]]:
        """Messages as the chat template can take them: tool calls and tool results kept where the template's text
        handles them, else written out as plain text; tool definitions folded into the system prompt when the
        template takes none. Bookkeeping keys (``train``) are dropped."""
        template = self.tokenizer.chat_template if isinstance(self.tokenizer.chat_template, str) else ""
        out = []
        for message in messages:
            clean: dict[str, Any] = {"role": message["role"], "content": message["content"]}
            if message.get("tool_calls"):
                if "tool_calls" in template:
                    clean["tool_calls"] = message["tool_calls"]
                else:
                    clean["content"] = message_text(message)
            if message["role"] == "tool" and "tool" not in template:
                clean = {"role": "user", "content": f"Tool result:\n{message['content']}"}
            out.append(clean)
        if tools and "tools" not in template:
            out = _tools_in_system(out, tools)
        return out

    def _apply(self, messages: list[dict[str, Any]], tools: list[dict] | None, **kwargs: Any) -> str:
        template = self.tokenizer.chat_template if isinstance(self.tokenizer.chat_template, str) else ""
        extra = {"tools": tools} if tools and "tools" in template else {}
        return self.tokenizer.apply_chat_template(
            self._template_messages(messages, tools), tokenize=False, **extra, **kwargs
        )

    # ------------------------------------------------------------------ text
    def prompt_text(self, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> str:
        """Everything the model sees before it starts answering (``messages`` ends with a user turn)."""
        if self.use_template:
            return self._apply(messages, tools, add_generation_prompt=True)
        return "".join(text for text, _ in self._plain_segments(messages, tools))

    def _plain_segments(
        self, messages: list[dict[str, Any]], tools: list[dict] | None = None
    ) -> list[tuple[str, bool]]:
        ds = self.cfg.dataset
        out = []
        if tools:
            messages = _tools_in_system(messages, tools)
        for message in messages:
            if message["role"] == "system":
                out.append((message["content"] + (self.eos if ds.add_eos_token_to_system else "\n"), False))
            elif message["role"] in ("user", "tool"):
                prefix = "Tool result:\n" if message["role"] == "tool" else ""
                out.append(
                    (
                        ds.text_prompt_start
                        + prefix
                        + message["content"]
                        + (self.eos if ds.add_eos_token_to_prompt else "")
                        + ds.text_answer_separator,
                        False,
                    )
                )
            else:
                text = message_text(message) + (self.eos if ds.add_eos_token_to_answer else "")
                out.append((text, is_trained(message)))
        return out

    def segments(self, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> list[tuple[str, bool]]:
        """(text, is_answer) pieces whose concatenation is the rendered conversation."""
        if not self.use_template:
            return self._plain_segments(messages, tools)
        out: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.prompt_text(messages[:i], tools)
            full = self._apply(messages[: i + 1], tools)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                # The template rewrites earlier turns once later ones follow: only the last answer can be
                # rendered exactly as inference will see it.
                return self._last_turn_segments(messages, tools)
            answer = self._turn_end(full[len(prompt) :])
            out += [(prompt[len(done) :], False), (answer, is_trained(message))]
            done = prompt + answer
        return out

    def _last_turn_segments(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> list[tuple[str, bool]]:
        prompt = self.prompt_text(messages[:-1], tools)
        full = self._apply(messages, tools)
        answer = full[len(prompt) :] if full.startswith(prompt) else messages[-1]["content"]
        return [(prompt, False), (self._turn_end(answer), True)]

    def _turn_end(self, answer: str) -> str:
        """The answer as the template writes it, up to its EOS; EOS is added if the template ends turns otherwise."""
        if self.eos and self.eos in answer:
            return answer[: answer.rindex(self.eos) + len(self.eos)]
        if self.cfg.dataset.add_eos_token_to_answer and self.eos:
            return answer.rstrip() + self.eos
        return answer

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
        return self._cut_left_pair(ids, ids, limit)[0]

    def _cut_left_pair(self, ids: list[int], labels: list[int], limit: int) -> tuple[list[int], list[int]]:
        """Keep the last ``limit`` tokens (and their labels); a leading BOS survives the cut."""
        if len(ids) <= limit:
            return ids, labels
        if limit <= 0:
            return [], []
        bos = self.tokenizer.bos_token_id
        keep = 1 if bos is not None and ids[0] == bos and limit > 1 else 0
        start = len(ids) - (limit - keep)
        return ids[:keep] + ids[start:], labels[:keep] + labels[start:]

    def render(self, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> Rendered:
        """Token ids and labels for a conversation whose last turn is an assistant answer.

        Everything before the last answer counts as the prompt for the length limits: it is cut from the left, the
        last answer from the right, and the prompt gives way first when the total is too long.
        """
        tok, ds = self.cfg.tokenizer, self.cfg.dataset
        pieces = self.segments(messages, tools)
        last_answer = max(i for i, (_, is_answer) in enumerate(pieces) if is_answer)
        ids: list[int] = []
        labels: list[int] = []
        for i, (text, is_answer) in enumerate(pieces[:last_answer]):
            part = self._encode(text, first=i == 0)
            trained = (is_answer and ds.train_on == "all_answers") or not ds.mask_prompt_labels
            ids += part
            labels += part if trained else [IGNORE_INDEX] * len(part)
        answer_full = self._encode(pieces[last_answer][0], first=last_answer == 0)
        answer = answer_full[: tok.max_length_answer]
        ids, labels = self._cut_left_pair(ids, labels, tok.max_length_prompt)
        # The prompt gives way first, then the answer.
        ids, labels = self._cut_left_pair(ids, labels, max(tok.max_length - len(answer), 1 if ids else 0))
        answer = answer[: max(tok.max_length - len(ids), 0)]
        return Rendered(
            ids + answer,
            labels + answer,
            len(ids),
            len(answer),
            len(answer) < len(answer_full),
            bool(answer_full) and answer_full[-1] == self.eos_id,
        )

    def render_segments(self, segments: list[dict[str, Any]]) -> Rendered:
        """Axolotl's input_output rows: each segment tokenised on its own and trained where its flag says, cut to
        ``tokenizer.max_length``; no template, and no tokens added except EOS after a trained last segment (with
        ``dataset.add_eos_token_to_answer``)."""
        ids: list[int] = []
        labels: list[int] = []
        for segment in segments:
            part = self.tokenizer(segment["text"], add_special_tokens=False)["input_ids"]
            ids += part
            labels += part if segment["train"] else [IGNORE_INDEX] * len(part)
        if self.cfg.dataset.add_eos_token_to_answer and self.eos_id is not None and segments[-1]["train"]:
            if not ids or ids[-1] != self.eos_id:  # so the model learns to stop, as every other shape does
                ids, labels = ids + [self.eos_id], labels + [self.eos_id]
        limit = self.cfg.tokenizer.max_length
        trained = sum(1 for x in labels if x != IGNORE_INDEX)
        ids, labels = ids[:limit], labels[:limit]
        kept = sum(1 for x in labels if x != IGNORE_INDEX)
        return Rendered(ids, labels, len(ids) - kept, kept, kept < trained, bool(ids) and ids[-1] == self.eos_id)

    def render_text(self, text: str) -> list[list[int]]:
        """Raw text for continued pre-training: EOS appended, every token trained, split into max_length chunks."""
        ids = self._encode(text, first=True)
        if self.cfg.dataset.add_eos_token_to_answer and self.eos_id is not None:
            ids = ids + [self.eos_id]
        size = self.cfg.tokenizer.max_length
        return [ids[i : i + size] for i in range(0, len(ids), size) if len(ids[i : i + size]) > 1]
