"""Batched generation: left padding, KV cache, prompts sorted by length to waste little padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tunelab.config import PredictionConfig
from tunelab.data.collate import pad_left
from tunelab.generation.settings import (  # noqa: F401 (cut_at_stops: imported from here too)
    GenerationSettings,
    answer_text,
    cut_at_stops,
    generate_kwargs,
    model_eos_ids,
    seeded,
)

# On CPU, generation speed stops improving beyond about this many rows per batch (measured with SmolLM2-135M on
# 2 cores: bench/eval_speed.py); bigger batches only add padding waste.
CPU_AUTO_BATCH = 16
MAX_AUTO_BATCH = 64


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of KV cache one token costs across all layers (keys and values)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    layers = getattr(config, "num_hidden_layers", 12)
    heads = getattr(config, "num_attention_heads", 12)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 768) // heads
    dtype = next(model.parameters()).dtype
    width = 4 if dtype == torch.float32 else 2
    return 2 * layers * kv_heads * head_dim * width


def auto_batch_size(model: Any, longest_prompt: int, max_new_tokens: int, configured: int = 0) -> int:
    """Rows per generate call: ``configured`` when set; else what fits the free GPU memory, or 16 on a CPU.

    On a GPU the KV cache of the whole batch may take half of the free memory (the other half is for activations
    and the logits of each step).
    """
    if configured > 0:
        return configured
    device = next(model.parameters()).device
    if device.type != "cuda":
        return CPU_AUTO_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    per_row = kv_bytes_per_token(model) * (longest_prompt + max_new_tokens)
    return int(max(1, min(MAX_AUTO_BATCH, (free * 0.5) // max(per_row, 1))))


def generation_kwargs(prediction: PredictionConfig, tokenizer: Any, model: Any) -> dict[str, Any]:
    """Arguments for ``model.generate`` from the prediction settings, without the logits processors that need the
    prompt's length (``settings.generate_kwargs`` has them)."""
    return generate_kwargs(GenerationSettings.from_prediction(prediction), tokenizer, model)


@torch.inference_mode()
def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    prediction: PredictionConfig | GenerationSettings,
    batch_size: int,
    device: torch.device | None = None,
    on_batch: Any = None,
) -> list[str]:
    """Generate an answer for each tokenised prompt.

    Args:
        model: a causal LM (peft-wrapped or not).
        tokenizer: its tokenizer (for pad/EOS ids and decoding).
        prompts: token ids of each prompt.
        prediction: the generation settings, or the prediction section that gives them. With a seed, the same
            prompts and batch size give the same answers.
        batch_size: prompts per generate call; 0 = ``auto_batch_size``.
        device: where to run; defaults to the model's device.
        on_batch: called with the number of prompts finished after each batch.

    Returns:
        The decoded answers, in the order of ``prompts``.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    settings = prediction
    if isinstance(settings, PredictionConfig):
        settings = GenerationSettings.from_prediction(settings)
    end_ids = model_eos_ids(tokenizer, model) | set(settings.stop_token_ids)
    longest = max((len(p) for p in prompts), default=0)
    batch_size = auto_batch_size(model, longest, settings.max_new_tokens, batch_size)
    # Longest first: similar lengths share a batch, and a memory problem shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    try:  # a stop (SIGTERM, a cancelled request) may end generation at any token: the model's mode comes back
        with seeded(settings.seed, device):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = pad_left([prompts[i] for i in chunk], tokenizer.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                length = batch["input_ids"].shape[1]
                out = model.generate(**batch, **generate_kwargs(settings, tokenizer, model, length))
                for i, seq in zip(chunk, out[:, length:].tolist()):  # [batch, new]
                    answers[i] = answer_text(tokenizer, seq, end_ids, settings.stop)
                if on_batch:
                    on_batch(len(chunk))
    finally:
        model.train(was_training)
    return answers
