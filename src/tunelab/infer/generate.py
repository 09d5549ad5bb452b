"""Batched generation: left padding, KV cache, prompts sorted by length to waste little padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tunelab.config import PredictionConfig
from tunelab.data.collate import pad_left

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


def stop_strings(prediction: PredictionConfig) -> list[str]:
    return [s for s in (part.strip() for part in prediction.stop_tokens.split(",")) if s]


def generation_kwargs(prediction: PredictionConfig, tokenizer: Any, model: Any) -> dict[str, Any]:
    """Arguments for ``model.generate`` from the prediction settings."""
    eos = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        eos.add(config_eos)
    elif isinstance(config_eos, (list, tuple)):
        eos.update(config_eos)
    kwargs: dict[str, Any] = {
        "max_new_tokens": prediction.max_length_inference,
        "min_new_tokens": min(prediction.min_length_inference, prediction.max_length_inference),
        "do_sample": prediction.do_sample,
        "num_beams": prediction.num_beams,
        "repetition_penalty": prediction.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": sorted(e for e in eos if e is not None),
    }
    if prediction.do_sample:
        kwargs.update(temperature=prediction.temperature, top_p=prediction.top_p)
    else:
        # Greedy decoding: say so explicitly so a model's sampling defaults don't apply.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    stops = stop_strings(prediction)
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tokenizer)
    return kwargs


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text up to the first stop string."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


@torch.inference_mode()
def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    prediction: PredictionConfig,
    batch_size: int,
    device: torch.device | None = None,
    on_batch: Any = None,
) -> list[str]:
    """Generate an answer for each tokenised prompt.

    Args:
        model: a causal LM (peft-wrapped or not).
        tokenizer: its tokenizer (for pad/EOS ids and decoding).
        prompts: token ids of each prompt.
        prediction: the prediction settings.
        batch_size: prompts per generate call; 0 = ``auto_batch_size``.
        device: where to run; defaults to the model's device.
        on_batch: called with the number of prompts finished after each batch.

    Returns:
        The decoded answers, in the order of ``prompts``.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    kwargs = generation_kwargs(prediction, tokenizer, model)
    stops = stop_strings(prediction)
    longest = max((len(p) for p in prompts), default=0)
    batch_size = auto_batch_size(model, longest, prediction.max_length_inference, batch_size)
    # Longest first: similar lengths share a batch, and a memory problem shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_left([prompts[i] for i in chunk], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.generate(**batch, **kwargs)
        new_tokens = out[:, batch["input_ids"].shape[1] :]  # [batch, new]
        for i, seq in zip(chunk, new_tokens):
            answers[i] = cut_at_stops(tokenizer.decode(seq, skip_special_tokens=True), stops).strip()
        if on_batch:
            on_batch(len(chunk))
    model.train(was_training)
    return answers
