"""``dataset.personalize``: give the assistant of OpenAssistant-derived data its own name and author.

As H2O LLM Studio does, mentions of "Open Assistant" (with the misspellings found in OASST) and then of "Assistant"
become ``chatbot_name``, and "LAION" becomes ``chatbot_author``, in prompts and answers (system prompts and labels are
left alone).
"""

from __future__ import annotations

from typing import Any

# Applied in order: the specific spellings before the bare "Assistant" and "LAION"; a trailing space, comma or period
# of a pattern is kept.
_ASSISTANT_SPELLINGS = (
    "Open Assistant",
    "Open-Assistant",
    "open-assistant",
    "OpenAssistant",
    "open assistant",
    "Open Assistand",
    "Open Assitant",
    "Open Assistent",
    "Open Assisstant",
    "Open Assitent",
    "Open Assitiant",
    "Open Assistiant",
    "Open Assitan ",
    "Open Assistan ",
    "Open Asistant",
    "Open Assiant",
    "Assistant",
)
_AUTHOR_SPELLINGS = ("LAION AI", "LAION-AI", "LAION,", "LAION.ai", "LAION.", "LAION")


def personalize_text(text: str, name: str, author: str) -> str:
    """``text`` with the assistant's and its author's names replaced."""
    for spelling in _ASSISTANT_SPELLINGS:
        text = text.replace(spelling, name + (" " if spelling.endswith(" ") else ""))
    for spelling in _AUTHOR_SPELLINGS:
        kept = spelling[-1] if spelling in ("LAION,", "LAION.") else ""
        text = text.replace(spelling, author + kept)
    return text


def personalize_example(example: dict[str, Any], name: str, author: str) -> dict[str, Any]:
    """A canonical example with the names replaced in its user and assistant turns, raw text, answers and prompt
    text; system messages, labels and references stay as they are."""

    def turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**m, "content": personalize_text(m["content"], name, author)}
            if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
            else m
            for m in messages
        ]

    out = dict(example)
    for key, value in example.items():
        if key in ("messages", "prompt") and isinstance(value, list):
            out[key] = turns(value)
        elif key in ("text", "prompt", "chosen", "rejected", "answer", "completion") and isinstance(value, str):
            out[key] = personalize_text(value, name, author)
    return out
