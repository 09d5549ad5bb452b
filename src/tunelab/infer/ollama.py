"""An Ollama ``Modelfile`` for an exported GGUF: the chat template in Ollama's Go-template language, its stop
tokens and the run's generation settings, as LLaMA-Factory and Unsloth write beside their GGUF exports.

The template is derived by rendering the run's own (Jinja) chat template on marker messages and cutting out what
it puts around each role, so any template that writes turns one after another (ChatML, Llama 3, Zephyr, the
built-in ``plain`` one...) becomes the same text in Ollama. A template that does not (one that folds the system
prompt into the first user turn, say) is checked by re-rendering, and then left to Ollama, which reads the chat
template stored in the GGUF file itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MARK = "\x00{}\x00"


@dataclass
class _Pieces:
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    default_system: str  # what the template writes when the conversation has no system message ("" for none)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool = False) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    bos = tokenizer.bos_token or ""
    # llama.cpp (and so Ollama) adds BOS itself where the tokenizer does (the GGUF's add_bos_token): a template
    # must not write it twice. SmolLM2's "BOS" is <|im_start|>, which it never adds, so that one stays.
    adds_bos = bos and tokenizer.encode("a", add_special_tokens=True)[:1] == [tokenizer.bos_token_id]
    return text[len(bos) :] if adds_bos and text.startswith(bos) else text


def _wrap(text: str, mark: str) -> tuple[str, str]:
    before, found, after = text.partition(mark)
    if not found:
        raise ValueError("marker not rendered")
    return before, after


def _pieces(tokenizer: Any) -> _Pieces:
    """Each role's prefix and suffix, cut out of renders that differ by one message."""
    s, u, a = (_MARK.format(name) for name in ("system", "user", "assistant"))
    with_system = _render(tokenizer, [{"role": "system", "content": s}])
    one = [{"role": "system", "content": s}, {"role": "user", "content": u}]
    user_text = _render(tokenizer, one)
    two = [*one, {"role": "assistant", "content": a}]
    assistant_text = _render(tokenizer, two)
    generation_text = _render(tokenizer, one, generation=True)
    if not (user_text.startswith(with_system) and assistant_text.startswith(user_text)):
        raise ValueError("the template does not write turns one after another")
    if not generation_text.startswith(user_text):
        raise ValueError("the generation prompt is not appended")
    no_system = _render(tokenizer, [{"role": "user", "content": u}])
    user_turn = user_text[len(with_system) :]
    default_system = no_system[: -len(user_turn)] if no_system.endswith(user_turn) else ""
    return _Pieces(
        system=_wrap(with_system, s),
        user=_wrap(user_turn, u),
        assistant=_wrap(assistant_text[len(user_text) :], a),
        generation=generation_text[len(user_text) :],
        default_system=default_system,
    )


def _go(text: str) -> str:
    """Literal text inside a Go template (only ``{{`` needs escaping)."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(tokenizer: Any) -> str | None:
    """The run's chat template in Ollama's Go-template language, or None when it cannot be derived safely."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        p = _pieces(tokenizer)
    except Exception:  # any template error means "cannot derive": Ollama falls back to the GGUF's own template
        return None
    turn = {role: tuple(_go(x) for x in getattr(p, role)) for role in ("system", "user", "assistant")}
    lines = [
        "{{ if .System }}" + turn["system"][0] + "{{ .System }}" + turn["system"][1],
        "{{ else }}" + _go(p.default_system) + "{{ end }}" if p.default_system else "{{ end }}",
        "{{ range .Messages }}",
        *(
            ("{{ if" if i == 0 else "{{ else if")
            + f' eq .Role "{role}" }}}}'
            + turn[role][0]
            + "{{ .Content }}"
            + turn[role][1]
            for i, role in enumerate(("user", "assistant"))
        ),
        "{{ end }}",
        "{{ end }}" + _go(p.generation),
    ]
    template = "".join(lines)
    if not _check(tokenizer, p):
        return None
    return template


def _check(tokenizer: Any, p: _Pieces) -> bool:
    """Whether the pieces rebuild the template's own text of a two-turn conversation with a system prompt."""
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    try:
        expected = _render(tokenizer, conversation, generation=True)
    except Exception:
        return False
    rebuilt = p.system[0] + "Be brief." + p.system[1]
    for message in conversation[1:]:
        prefix, suffix = getattr(p, message["role"])
        rebuilt += prefix + message["content"] + suffix
    return rebuilt + p.generation == expected


def stop_tokens(tokenizer: Any) -> list[str]:
    """The end-of-sequence token and the token that ends each assistant turn in the template, if different."""
    stops: list[str] = []
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    try:
        suffix = _pieces(tokenizer).assistant[1].strip()
    except Exception:
        suffix = ""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or []) | set(tokenizer.get_added_vocab())
    for token in specials:
        if token and suffix.startswith(token) and token not in stops:
            stops.append(token)
    return stops


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(gguf_name: str, tokenizer: Any, settings: Any, context_length: int) -> str:
    """The text of an Ollama ``Modelfile`` for ``gguf_name`` (a file in the same folder).

    Args:
        gguf_name: the GGUF file's name.
        tokenizer: the run's tokenizer (its chat template and special tokens).
        settings: the run's ``prediction`` section (temperature, top_p, ...); greedy runs get temperature 0.
        context_length: the context the model was trained with (``num_ctx``).
    """
    lines = [
        "# Ollama Modelfile written by tunelab: `ollama create NAME -f Modelfile`, then `ollama run NAME`.",
        f"FROM ./{gguf_name}",
    ]
    template = go_template(tokenizer)
    if template is None:
        lines.append("# The chat template could not be written for Ollama: it uses the one stored in the GGUF file.")
    else:
        lines.append(f'TEMPLATE """{template}"""')
    for stop in stop_tokens(tokenizer):
        lines.append(f"PARAMETER stop {_quote(stop)}")
    temperature = settings.temperature if settings.do_sample else 0.0
    lines.append(f"PARAMETER temperature {temperature:g}")
    if settings.do_sample:
        lines.append(f"PARAMETER top_p {settings.top_p:g}")
        if settings.top_k:
            lines.append(f"PARAMETER top_k {settings.top_k}")
        if getattr(settings, "min_p", 0):
            lines.append(f"PARAMETER min_p {settings.min_p:g}")
    if settings.repetition_penalty != 1.0:
        lines.append(f"PARAMETER repeat_penalty {settings.repetition_penalty:g}")
    lines.append(f"PARAMETER num_ctx {int(context_length)}")
    lines.append(f"PARAMETER num_predict {int(settings.max_length_inference)}")
    return "\n".join(lines) + "\n"
