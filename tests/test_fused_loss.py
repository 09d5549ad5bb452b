"""The chunked LM head + cross-entropy gives the plain loss and gradients, and plugs into the causal-LM loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.models.fused_loss import chunked_cross_entropy, chunked_token_losses, plain_head


def _setup(bias: bool, head_grad: bool, dtype=torch.float32):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias).to(dtype)
    head.weight.requires_grad_(head_grad)
    if bias:
        head.bias.requires_grad_(head_grad)
    hidden = torch.randn(37, 16, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    return head, hidden, targets


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("head_grad", [False, True])
@pytest.mark.parametrize("chunk", [1, 8, 100])
def test_chunked_loss_and_gradients_equal_the_plain_ones(bias, head_grad, chunk):
    head, hidden, targets = _setup(bias, head_grad)
    plain = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    (plain * 0.5).backward()
    expected = {"hidden": hidden.grad.clone()}
    if head_grad:
        expected["weight"] = head.weight.grad.clone()
        if bias:
            expected["bias"] = head.bias.grad.clone()
    hidden.grad = None
    head.zero_grad(set_to_none=True)

    fused = chunked_cross_entropy(hidden, head, targets, chunk=chunk)
    (fused * 0.5).backward()  # a scale on the way back must reach every gradient
    assert torch.allclose(fused, plain, atol=1e-4)
    assert torch.allclose(hidden.grad, expected["hidden"], atol=1e-5)
    if head_grad:
        assert torch.allclose(head.weight.grad, expected["weight"], atol=1e-5)
        if bias:
            assert torch.allclose(head.bias.grad, expected["bias"], atol=1e-5)
    else:
        assert head.weight.grad is None


def test_token_losses_and_no_grad_path():
    head, hidden, targets = _setup(False, False)
    expected = F.cross_entropy(head(hidden), targets, reduction="none")
    assert torch.allclose(chunked_token_losses(hidden, head, targets, chunk=5), expected, atol=1e-5)
    with torch.no_grad():
        total = chunked_cross_entropy(hidden, head, targets, chunk=5)
    assert not total.requires_grad and torch.allclose(total, expected.sum(), atol=1e-4)


def test_bf16_hidden_states_get_bf16_gradients():
    head, hidden, targets = _setup(False, False, dtype=torch.bfloat16)
    chunked_cross_entropy(hidden, head, targets, chunk=8).backward()
    assert hidden.grad.dtype == torch.bfloat16 and torch.isfinite(hidden.grad.float()).all()


def test_only_plain_linear_heads_are_chunked():
    assert plain_head(torch.nn.Linear(4, 4))
    assert not plain_head(torch.nn.Embedding(4, 4))


def test_causal_lm_loss_is_the_same_with_and_without_chunks(tiny_llama, qa_jsonl, tmp_path, monkeypatch):
    """The causal-LM loss, LoRA gradients and validation losses match with training.chunked_loss on and off."""
    from conftest import causal_config

    import tunelab.problems.causal_lm as causal_lm
    from tunelab.config import load_config
    from tunelab.data.collate import pack_causal
    from tunelab.data.pipeline import build_splits
    from tunelab.models.load import load_tokenizer, resolve_backbone
    from tunelab.problems import build_problem
    from tunelab.training.setup import build_model

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    calls = []
    original = causal_lm.chunked_cross_entropy
    monkeypatch.setattr(causal_lm, "chunked_cross_entropy", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = []
    for chunked in (True, False):
        data = causal_config(tiny_llama, qa_jsonl, tmp_path / str(chunked), training={"chunked_loss": chunked})
        cfg = load_config(base=data)
        problem = build_problem(cfg, load_tokenizer(resolve_backbone(cfg.llm_backbone)))
        splits = build_splits(cfg, problem)
        torch.manual_seed(0)
        model = build_model(cfg, problem, str(tiny_llama)).float()
        with torch.no_grad():  # LoRA B starts at 0: move it so the adapter matters
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        batch = pack_causal(splits.train, [[0, 1, 2], [3, 4, 5]], problem.tokenizer.pad_token_id)
        loss, n = problem.loss(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.item(), int(n), grads, problem.validation_loss(model, splits.validation)[0]))
        assert len(calls) == 1  # the chunked path ran in the first (chunked) pass and not in the second
    (l1, n1, g1, v1), (l2, n2, g2, v2) = results
    assert n1 == n2 > 0
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert v1 == pytest.approx(v2, rel=1e-5)
    assert len(g1) == len(g2) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))
