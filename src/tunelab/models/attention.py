"""Variable-length attention for packed and padding-free batches.

A packed row holds several examples one after another, their position ids restarting at 0. transformers keeps
attention inside each example by building a block-diagonal ``[tokens, tokens]`` mask, so attention costs as much as
one sequence as long as the whole row — and SDPA with a mask cannot use its memory-saving kernel. Here each
example's segment is attended on its own with ``is_causal=True`` (flash/memory-efficient SDPA kernels, no mask, no
work across examples): the same result for a fraction of the work.

The implementation is registered with transformers' ``AttentionInterface`` under ``tunelab_varlen`` and switched on
only around the forward pass of a batch that has position ids and no padding (``varlen_attention``); every other
forward (padded evaluation batches, generation) keeps the model's own attention.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

NAME = "tunelab_varlen"
_registered = False


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """For each row, the (start, end) of every segment: a new segment starts where the position does not go up by 1."""
    out = []
    for row in position_ids.tolist():
        starts = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1] + 1]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention inside each segment of ``kwargs["position_ids"]``.

    ``query`` is ``[batch, heads, tokens, dim]``, ``key``/``value`` ``[batch, kv_heads, tokens, dim]``; returns the
    output as ``[batch, tokens, heads, dim]`` like transformers' own attention functions.
    """
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # [batch, kv_heads, tokens, dim] -> [batch, heads, tokens, dim]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    rows = []
    for b, bounds in enumerate(segment_bounds(position_ids.expand(query.shape[0], -1))):
        parts = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                dropout_p=dropout,
                is_causal=causal and e - s > 1,
                scale=scaling,
            )
            for s, e in bounds
        ]
        rows.append(torch.cat(parts, dim=2))  # [1, heads, tokens, dim]
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``tunelab_varlen`` known to transformers (once)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, varlen_attention_forward)
        _registered = True


def supports_varlen(model: Any) -> bool:
    """Whether the model's attention goes through transformers' interface (modern decoder classes do)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager", NAME) and not getattr(
        config, "is_encoder_decoder", False
    )


def _configs(model: Any) -> list[Any]:
    """The config objects whose ``_attn_implementation`` the attention layers read (the model's and sub-configs)."""
    seen, out = set(), []
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen:
            seen.add(id(config))
            out.append(config)
    return out


@contextmanager
def varlen_attention(model: Any, batch: dict[str, torch.Tensor]) -> Iterator[None]:
    """Use segment-wise attention for this forward pass when the batch is packed (it carries position ids)."""
    # Packed rows end with padding as a segment of its own (no labels): attending inside it changes nothing.
    # Gradient checkpointing recomputes the layers during backward, after this block has restored the attention
    # setting: the recomputation must see the same attention, so checkpointed models keep transformers' own
    # (which also keeps attention inside each segment, from the position ids, with a block-diagonal mask).
    if "position_ids" not in batch or not supports_varlen(model) or getattr(model, "is_gradient_checkpointing", False):
        yield
        return
    register()
    configs = _configs(model)
    saved = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = NAME
        yield
    finally:
        for c, name in zip(configs, saved):
            c._attn_implementation = name
