"""``tunelab chat``: a multi-turn terminal chat with a trained causal LM, streaming tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

HELP = "commands: /reset clears the conversation, /exit quits"


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
    if loaded.cfg.problem_type != "causal_lm":
        raise TunelabError(
            "chat needs a causal-LM run", file=str(run_dir), hint="use 'tunelab predict' for a classification run"
        )
    console.print(f"chatting with {run_dir} ({HELP})")
    messages: list[dict[str, str]] = []
    kwargs = generation_kwargs(loaded.cfg.prediction, loaded.tokenizer, loaded.model)
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
        if not command:
            continue
        messages.append({"role": "user", "content": text})
        ids = loaded.problem.renderer.prompt_ids(messages)
        batch = {k: v.to(device) for k, v in pad_left([ids], loaded.tokenizer.pad_token_id).items()}
        console.print("model> ", end="")
        with torch.inference_mode():
            out = loaded.model.generate(**batch, **kwargs, streamer=make_streamer(loaded.tokenizer, console))
        answer = loaded.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": answer})
