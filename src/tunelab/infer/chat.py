"""``tunelab chat``: a multi-turn terminal chat with a trained causal LM, streaming tokens."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, TunelabError
from tunelab.generation.settings import GenerationSettings, cut_at_stops, held_back, until_end

HELP = (
    "commands: /reset clears the conversation, /system TEXT sets the system prompt, "
    "/params [name=value ...] shows or changes the generation settings (temperature=0 is greedy; "
    "stop='a b',c; seed=none; response_format=json_object), /exit quits"
)
ALIASES = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}
NAMES = [field.name for field in dataclasses.fields(GenerationSettings)]


def parse_value(name: str, value: str) -> Any:
    """A ``/params`` value as the setting ``name`` takes it.

    Raises:
        ConfigError: for a value of the wrong kind.
    """
    from pydantic import ValidationError

    from tunelab.config import PredictionConfig

    default = getattr(GenerationSettings(), name)
    try:
        if name == "seed":
            return None if value.lower() in ("none", "-1", "") else int(value)
        if name == "stop":
            return tuple(part for part in value.split(",") if part)
        if name == "stop_token_ids":
            return tuple(int(part) for part in value.split(",") if part)
        if name == "logit_bias":
            pairs = [part.split(":") for part in value.split(",") if part]
            return {int(token): float(bias) for token, bias in pairs}
        if name == "response_format":
            return PredictionConfig(response_format=value).response_format
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return value.lower() in ("true", "1", "yes", "on")
        return int(value) if isinstance(default, int) else float(value)
    except ValidationError as exc:
        raise ConfigError(str(exc.errors()[0]["msg"]).removeprefix("Value error, "), field=name) from None
    except ValueError:
        shown = {"logit_bias": "token:bias,token:bias", "stop_token_ids": "id,id"}.get(name, type(default).__name__)
        raise ConfigError(f"'{value}' is not a value of this setting (expected {shown})", field=name) from None


def apply_params(settings: GenerationSettings, text: str) -> GenerationSettings:
    """The settings with ``name=value`` pairs applied (all or none); a temperature of 0 turns sampling off and a
    temperature above 0 turns it on.

    Raises:
        TunelabError: for an unknown name or a value out of range.
    """
    changes: dict[str, Any] = {}
    try:
        pairs = shlex.split(text)
    except ValueError as exc:
        raise TunelabError(f"cannot read the settings: {exc}") from None
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = ALIASES.get(name, name)
        if not sep or name not in NAMES:
            raise TunelabError(f"unknown setting '{pair}'", hint=f"use name=value with one of {', '.join(NAMES)}")
        changes[name] = parse_value(name, value)
    if "temperature" in changes and "do_sample" not in changes:
        changes["do_sample"] = changes["temperature"] > 0
        if changes["temperature"] <= 0:
            changes["temperature"] = settings.temperature
    return settings.replace(**changes)


class HeldBackStreamer:
    """A transformers streamer that prints new text as it is generated, except what may begin a stop string: the
    printed answer is the stored answer, and never shows a stop string."""

    def __init__(self, tokenizer: Any, console: Any, stops: tuple[str, ...], end_ids: set[int]):
        self.tokenizer, self.console, self.stops, self.end_ids = tokenizer, console, stops, end_ids
        self.tokens: list[int] = []
        self.shown = ""
        self.prompt_seen = False
        self.ended = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        if not self.ended:
            self.tokens.extend(value.reshape(-1).tolist())
            self.show(final=False)

    def end(self) -> None:
        self.show(final=True)
        self.console.print()

    def show(self, final: bool) -> None:
        kept, self.ended = until_end(self.tokens, self.end_ids)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = cut_at_stops(text, self.stops)
        if len(cut) == len(text) and not final and not self.ended:
            cut = cut[: len(cut) - held_back(cut, self.stops)]
        cut = cut.strip() if final else cut.lstrip()  # as the stored answer is
        if len(cut) > len(self.shown) and cut.startswith(self.shown):
            self.console.print(cut[len(self.shown) :], end="", markup=False, highlight=False)
            self.shown = cut


def answer(loaded: Any, ids: list[int], settings: GenerationSettings, console: Any) -> str:
    """Generate, print and return the answer to a prompt: streamed, or whole at the end with beam search (beams
    are reordered while they are searched)."""
    import torch

    from tunelab.data.collate import pad_left
    from tunelab.generation.settings import answer_text, generate_kwargs, model_eos_ids, seeded

    device = next(loaded.model.parameters()).device
    batch = {k: v.to(device) for k, v in pad_left([ids], loaded.tokenizer.pad_token_id).items()}
    length = batch["input_ids"].shape[1]
    kwargs = generate_kwargs(settings, loaded.tokenizer, loaded.model, length)
    end_ids = model_eos_ids(loaded.tokenizer, loaded.model) | set(settings.stop_token_ids)
    streamer = None
    if settings.num_beams == 1:
        streamer = HeldBackStreamer(loaded.tokenizer, console, settings.stop, end_ids)
    console.print("model> ", end="")
    with torch.inference_mode(), seeded(settings.seed, device):
        out = loaded.model.generate(**batch, **kwargs, streamer=streamer)
    text = answer_text(loaded.tokenizer, out[0, length:].tolist(), end_ids, settings.stop)
    if streamer is None:
        console.print(text, markup=False, highlight=False)
    return text


def chat_repl(run_dir: str | Path, console: Any, read: Any = input) -> None:
    """Read user turns, answer each with the run's model and chat template, keep the conversation.

    Args:
        run_dir: a finished causal-LM run.
        console: where answers are printed.
        read: the prompt reader (``input`` by default; tests pass their own).
    """
    from tunelab.infer.model import load_run

    loaded = load_run(run_dir)
    if not loaded.cfg.spec.can_chat:
        raise TunelabError(
            "chat needs a causal-LM run", file=str(run_dir), hint="use 'tunelab predict' for a classification run"
        )
    console.print(f"chatting with {run_dir} ({HELP})", markup=False)
    messages: list[dict[str, str]] = []
    system = ""
    settings = GenerationSettings.from_prediction(loaded.cfg.prediction)
    while True:
        try:
            text = read("you> ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        command = text.strip()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            messages = []
            console.print("(conversation cleared)")
            continue
        if command == "/system" or command.startswith("/system "):
            system = command[len("/system") :].strip()
            console.print(f"(system prompt {'set' if system else 'cleared'}; it applies from the next answer)")
            continue
        if command == "/params" or command.startswith("/params "):
            try:
                settings = apply_params(settings, command[len("/params") :])
                console.print(f"({settings.describe()})", markup=False)
            except TunelabError as exc:
                console.print(exc.line(), markup=False)
            continue
        if command.startswith("/"):
            console.print(f"unknown command {command.split()[0]} ({HELP})", markup=False)
            continue
        if not command:
            continue
        messages.append({"role": "user", "content": text})
        prefix = [{"role": "system", "content": system}] if system else []
        ids = loaded.problem.renderer.prompt_ids(prefix + messages)
        messages.append({"role": "assistant", "content": answer(loaded, ids, settings, console)})
