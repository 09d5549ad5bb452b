"""Problem heads: finding the output head of a transformers model."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.config import CAUSAL_LM_PROBLEMS
from tunelab.errors import ModelError

# Names transformers uses for sequence-classification heads (BERT: classifier, Llama/Qwen: score).
CLASSIFIER_NAMES = ("classifier", "score")


def output_head(model: Any, problem_type: str) -> torch.nn.Module:
    """The module that maps hidden states to outputs: the classifier, or the LM head for causal LMs.

    Raises:
        ModelError: when the model has no recognisable head.
    """
    if problem_type in CAUSAL_LM_PROBLEMS:
        head = model.get_output_embeddings()
        if head is None:
            raise ModelError("this backbone has no language-model head", field="llm_backbone")
        return head
    for name in CLASSIFIER_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ModelError(
        "this backbone has no classification head",
        field="llm_backbone",
        hint="use an encoder (e.g. all-minilm-l6-v2) or a decoder with a sequence-classification class",
    )
