"""The reference model of preference tuning and RL: the policy with its adapter switched off, or a frozen copy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tunelab.models.adapters import is_peft_model


class ReferenceModel:
    """Mixin for problems that compare the policy with the model it started from.

    A peft-wrapped policy (LoRA, DoRA, IA3, ...) is its own reference with the adapter disabled: no second copy of
    the weights. Full fine-tuning and the selective methods change the backbone itself, so a frozen copy of it is
    loaded from ``llm_backbone`` (never copied from the policy, which may already be trained on a resume).
    """

    cfg: Any
    _frozen: Any = None

    @contextmanager
    def reference_model(self, model: Any) -> Iterator[Any]:
        """The reference model, for use inside the ``with`` block."""
        if is_peft_model(model):
            with model.disable_adapter():
                yield model
            return
        if self._frozen is None:
            self._frozen = self._load_frozen(next(model.parameters()).device)
        yield self._frozen

    def _load_frozen(self, device: torch.device) -> Any:
        from transformers import AutoModelForCausalLM

        from tunelab.models.load import load_backbone, resolve_backbone

        frozen = load_backbone(
            resolve_backbone(self.cfg.llm_backbone), AutoModelForCausalLM, dtype=self.cfg.architecture.backbone_dtype
        )
        frozen.requires_grad_(False)
        return frozen.to(device).eval()
