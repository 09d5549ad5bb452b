"""Problem heads and backbones: which modules of a transformers model are the backbone and which are the head.

Found from the model itself, never from a list of names: the backbone is what transformers calls the model's
``base_model``; a sequence-classification head is every module the task class adds around it (BERT ``classifier``,
DistilBERT ``pre_classifier`` + ``classifier``, RoBERTa ``classifier.dense`` + ``classifier.out_proj``, DeBERTa-v2
``pooler`` + ``classifier``, Llama/Qwen/GPT-2 ``score``) — the modules whose weights a base checkpoint lacks and
transformers initialises anew. A causal LM's head is its output embeddings (``lm_head``).
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.errors import ModelError
from tunelab.problem_spec import spec_of


def backbone_of(model: Any) -> tuple[str, torch.nn.Module]:
    """(name, module) of the backbone inside a task model: ``("model", LlamaModel)``; ``("", model)`` when the model
    is its own backbone."""
    base = getattr(model, "base_model", model)
    if base is not model:
        for name, child in model.named_children():
            if child is base:
                return name, base
    return "", model


def classification_head(model: Any) -> dict[str, torch.nn.Module]:
    """The modules a sequence-classification class adds around the backbone, by their top-level name.

    Raises:
        ModelError: when the model has no such module with weights.
    """
    name, base = backbone_of(model)
    head = {
        child_name: child
        for child_name, child in model.named_children()
        if child is not base and any(True for _ in child.parameters())
    }
    if not name or not head:
        raise ModelError(
            "this backbone has no classification head",
            field="llm_backbone",
            hint="use an encoder (e.g. all-minilm-l6-v2) or a decoder that has a sequence-classification class",
        )
    return head


def head_parameter_names(model: Any, problem_type: str) -> set[str]:
    """Full names of the head's parameters: the classification head, or the LM head of a causal LM (a head tied
    to the input embeddings is named as the model names it, e.g. ``model.embed_tokens.weight``)."""
    if spec_of(problem_type).generative:
        head = model.get_output_embeddings()
        if head is None:
            raise ModelError("this backbone has no language-model head", field="llm_backbone")
        ids = {id(p) for p in head.parameters()}
        return {name for name, p in model.named_parameters() if id(p) in ids}
    return {
        f"{prefix}.{name}"
        for prefix, module in classification_head(model).items()
        for name, _ in module.named_parameters()
    }


def is_linear(module: torch.nn.Module) -> bool:
    """A dense projection: ``nn.Linear`` (and bitsandbytes' 4/8-bit subclasses) or GPT-2's ``Conv1D``."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def backbone_linear_names(model: Any) -> list[str]:
    """Full names of every linear layer of the backbone — LoRA's default targets on any architecture, fused
    projections included (GPT-NeoX ``query_key_value``, GPT-2 ``c_attn``); never the output head."""
    prefix, base = backbone_of(model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [
        f"{prefix}.{name}" if prefix else name
        for name, module in base.named_modules()
        if name and is_linear(module) and module is not output
    ]
    if not names:
        raise ModelError("this backbone has no linear layers for LoRA", field="llm_backbone")
    return names
