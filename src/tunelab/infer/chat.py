"""``tunelab chat``: a multi-turn terminal chat with a trained causal LM, streaming tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

HELP = (
    "commands: /reset clears the conversation, /system TEXT sets the system prompt, "
    "/params [temperature=0.7 top_p=0.9 max_tokens=200 repetition_penalty=1.1] shows or changes generation, /exit quits"
)
# /params names -> prediction settings
PARAMS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_length_inference",
    "max_new_tokens": "max_length_inference",
    "repetition_penalty": "repetition_penalty",
}


def apply_params(prediction: Any, text: str) -> str:
    """Apply ``name=value`` pairs to the prediction settings; returns a line describing the settings now.

    A temperature of 0 means greedy decoding; above 0 turns sampling on.

    Raises:
        TunelabError: for an unknown name or a value out of range (the settings stay as they were).
    """
    from pydantic import ValidationError

    updates: dict[str, Any] = {}
    for pair in text.split():
        name, sep, value = pair.partition("=")
        if not sep or name not in PARAMS:
            raise TunelabError(f"unknown setting '{pair}'", hint=f"use name=value with one of {', '.join(PARAMS)}")
        try:
            number = float(value)
        except ValueError:
            raise TunelabError(f"'{value}' is not a number", field=name) from None
        if name == "temperature":
            updates["do_sample"] = number > 0
            if number <= 0:
                continue
        updates[PARAMS[name]] = int(number) if PARAMS[name] == "max_length_inference" else number
    try:
        checked = type(prediction).model_validate({**prediction.model_dump(), **updates})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TunelabError(f"{first['msg']}", field=".".join(map(str, first["loc"]))) from None
    for key in updates:
        setattr(prediction, key, getattr(checked, key))
    temperature = prediction.temperature if prediction.do_sample else 0
    return (
        f"temperature={temperature} top_p={prediction.top_p} max_tokens={prediction.max_length_inference} "
        f"repetition_penalty={prediction.repetition_penalty}"
    )


def make_streamer(tokenizer: Any, console: Any) -> Any:
    """A transformers streamer that prints new text to ``console`` as it is generated."""
    from transformers import TextStreamer

    class ConsoleStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            console.print(text, end="" if not stream_end else "\n", markup=False, highlight=False)

    return ConsoleStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def chat_repl(run_dir: str | Path, console: Any, read: Any = input) -> None:
    """Read user turns, answer each with the run's model and chat template, keep the conversation.

    Args:
        run_dir: a finished causal-LM run.
        console: where answers are printed.
        read: the prompt reader (``input`` by default; tests pass their own).
    """
    import torch

    from tunelab.data.collate import pad_left
    from tunelab.infer.generate import generation_kwargs
    from tunelab.infer.model import load_run

    loaded = load_run(run_dir)
    from tunelab.config import CAUSAL_LM_PROBLEMS

    if loaded.cfg.problem_type not in CAUSAL_LM_PROBLEMS:
        raise TunelabError(
            "chat needs a causal-LM run", file=str(run_dir), hint="use 'tunelab predict' for a classification run"
        )
    console.print(f"chatting with {run_dir} ({HELP})")
    messages: list[dict[str, str]] = []
    system = ""
    prediction = loaded.cfg.prediction
    device = next(loaded.model.parameters()).device
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
                console.print(f"({apply_params(prediction, command[len('/params') :])})", markup=False)
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
        kwargs = generation_kwargs(prediction, loaded.tokenizer, loaded.model)
        batch = {k: v.to(device) for k, v in pad_left([ids], loaded.tokenizer.pad_token_id).items()}
        console.print("model> ", end="")
        with torch.inference_mode():
            out = loaded.model.generate(**batch, **kwargs, streamer=make_streamer(loaded.tokenizer, console))
        answer = loaded.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": answer})
