"""LM head + cross-entropy in chunks, so the ``[tokens, vocab]`` logits never exist at once.

With a 49k-token vocabulary the logits of 2,000 trained tokens are 400 MB in fp32, and a plain
``cross_entropy(head(hidden))`` keeps several tensors of that size alive (logits, their fp32 copy, the softmax for the
backward pass, the gradient). Here each chunk's gradient with respect to its hidden states (and to the head weight,
when it trains) is computed right after its loss, in the forward pass, and only those — ``[tokens, hidden]`` — are
kept for the backward pass. The result is the same loss and the same gradients, up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch

DEFAULT_CHUNK = 512  # rows of logits per chunk: 512 x 49k x 4 bytes = 100 MB at a time


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, chunk by chunk."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: Any, targets: torch.Tensor, chunk: int):
        need_hidden, need_weight = hidden.requires_grad, weight.requires_grad
        need_bias = bias is not None and bias.requires_grad
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]  # [c, hidden]
            t = targets[start : start + chunk]  # [c]
            logits = torch.nn.functional.linear(h, weight, bias).float()  # [c, vocab]
            lse = torch.logsumexp(logits, dim=-1)  # [c]
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (need_hidden or need_weight or need_bias):
                continue
            # d(sum of losses)/d(logits) = softmax - one_hot, built in place over the logits buffer.
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(t), device=grad.device), t] -= 1.0
            if need_hidden:
                grad_hidden[start : start + chunk] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_weight:
                grad_weight += grad.T @ h.float()
            if need_bias:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_hidden, grad_weight, grad_bias)))
        ctx.needs = (need_hidden, need_weight, need_bias)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs
        scale = grad_output.float()
        return (
            grad_hidden * scale.to(grad_hidden.dtype) if need_hidden else None,
            (grad_weight * scale).to(ctx.weight_dtype) if need_weight else None,
            grad_bias * scale if need_bias else None,
            None,
            None,
        )


class _ChunkedTokenCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy ``[tokens]`` of ``hidden @ weight.T (+ bias)`` for a frozen head, chunk by chunk.

    A token's loss depends on its own hidden state only, so its gradient ``(softmax - one_hot) @ weight`` is
    computed in the forward pass and scaled by the incoming per-token gradient in the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: Any, targets: torch.Tensor, chunk: int):
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk):
            t = targets[start : start + chunk]  # [c]
            logits = torch.nn.functional.linear(hidden[start : start + chunk], weight, bias).float()  # [c, vocab]
            lse = torch.logsumexp(logits, dim=-1)  # [c]
            losses[start : start + chunk] = lse - logits.gather(1, t[:, None]).squeeze(1)
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(t), device=grad.device), t] -= 1.0
            grad_hidden[start : start + chunk] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad_hidden)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output[:, None].to(grad_hidden.dtype), None, None, None, None


def token_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Per-token cross-entropy ``[tokens]`` of ``head(hidden)``, differentiable with respect to ``hidden``.

    Without the full logits when the head is a frozen plain linear layer (LoRA and other adapters); a head that
    trains gets the plain computation, so its gradient is exact too.
    """
    frozen = not head.weight.requires_grad and (head.bias is None or not head.bias.requires_grad)
    if not torch.is_grad_enabled() or not hidden.requires_grad:
        return chunked_token_losses(hidden, head, targets, chunk)
    if plain_head(head) and frozen:
        return _ChunkedTokenCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk)
    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")


def chunked_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Summed next-token cross-entropy of ``head(hidden)`` against ``targets`` without materialising all logits.

    Args:
        hidden: ``[tokens, hidden]`` final hidden states at the trained positions.
        head: the output layer (a plain ``nn.Linear``: its ``weight`` is ``[vocab, hidden]``).
        targets: ``[tokens]`` target token ids.
        chunk: rows of logits computed at once.

    Returns:
        The summed loss (a scalar with a gradient to ``hidden`` and to the head's parameters that train).
    """
    if not torch.is_grad_enabled() or not (hidden.requires_grad or head.weight.requires_grad):
        return chunked_token_losses(hidden, head, targets, chunk).sum()
    return _ChunkedLinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk)


def chunked_token_losses(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Per-token cross-entropy ``[tokens]`` (no gradient), chunk by chunk: for validation."""
    out = []
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            logits = head(hidden[start : start + chunk]).float()  # [c, vocab]
            out.append(torch.nn.functional.cross_entropy(logits, targets[start : start + chunk], reduction="none"))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def plain_head(head: Any) -> bool:
    """Whether ``head`` is a plain linear layer the chunked loss can use (not a LoRA-wrapped or quantised one)."""
    return type(head) is torch.nn.Linear
