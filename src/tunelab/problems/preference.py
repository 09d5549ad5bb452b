"""Preference tuning of a causal LM on chosen/rejected pairs: DPO (sigmoid), IPO, hinge, SimPO and ORPO.

The reference model of DPO/IPO/hinge is the backbone itself with the adapter switched off (peft's
``disable_adapter``), so LoRA-style runs hold one copy of the weights; full fine-tuning and the selective methods
load a frozen copy of the backbone instead. ``training.precompute_reference`` computes the reference
log-probabilities of every pair once, before training, and frees that copy again. SimPO and ORPO need no reference.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.config import ENCODER_MODEL_TYPES, RunConfig, backbone_model_type
from tunelab.data.collate import pad_pairs
from tunelab.data.prompts import IGNORE_INDEX
from tunelab.data.readers import Record
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.models.fused_loss import token_cross_entropy
from tunelab.problems.base import EvalResult, ProblemSpec, Reference, register_spec
from tunelab.problems.causal_lm import CausalLMProblem
from tunelab.problems.pairs import add_pair, pair_rows, pair_rules, pairwise_accuracy, render_answer_only, two_sequences
from tunelab.problems.reference import ReferenceModel

REFERENCE_FREE = ("simpo", "orpo")


def preference_losses(
    kind: str,
    policy: tuple[torch.Tensor, torch.Tensor],
    reference: tuple[torch.Tensor, torch.Tensor] | None,
    lengths: tuple[torch.Tensor, torch.Tensor],
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-pair loss and the implicit rewards of the chosen and rejected answers.

    Args:
        kind: sigmoid (DPO), ipo, hinge, simpo or orpo.
        policy: summed log-probabilities of the chosen and of the rejected answers ``[pairs]`` each.
        reference: the same under the reference model (None for simpo/orpo).
        lengths: answer tokens of the chosen and rejected answers.
        beta, label_smoothing, gamma: the loss's settings (``training.beta``, ``label_smoothing``, ``simpo_gamma``).

    Returns:
        (losses ``[pairs]``, chosen rewards, rejected rewards); rewards are detached.
    """
    (pc, pr), (lc, lr) = policy, (lengths[0].clamp(min=1), lengths[1].clamp(min=1))
    if kind in REFERENCE_FREE:
        ac, ar = pc / lc, pr / lr  # mean log-probability per answer token
        if kind == "simpo":
            h = beta * (ac - ar) - gamma
            losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
        else:  # orpo: the chosen answer's NLL plus beta x the log odds-ratio term
            log_odds = (ac - ar) - (
                torch.log1p(-torch.exp(ac).clamp(max=1 - 1e-6)) - torch.log1p(-torch.exp(ar).clamp(max=1 - 1e-6))
            )
            losses = -ac - beta * F.logsigmoid(log_odds)
        return losses, (beta * ac).detach(), (beta * ar).detach()
    assert reference is not None
    rc, rr = reference
    if kind == "ipo":  # IPO regresses the length-normalised log-ratio gap onto 1 / (2 beta)
        h = (pc - rc) / lc - (pr - rr) / lr
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        h = (pc - rc) - (pr - rr)
        if kind == "hinge":
            losses = torch.relu(1 - beta * h)
        else:
            losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return losses, (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


class PreferenceProblem(ReferenceModel, CausalLMProblem):
    """A causal LM tuned to prefer the chosen answers; generation, chat and export as for causal_lm."""

    name: ClassVar[str] = "dpo"
    stratify = False

    def __init__(self, cfg: Any, tokenizer: Any):
        super().__init__(cfg, tokenizer)
        self._precomputed: dict[int, torch.Tensor] = {}  # id(split) -> [rows, 2] reference log-probabilities

    # ------------------------------------------------------------------ data
    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        # Data without pairs was refused when the format was detected (ExampleReader).
        prompt = example["prompt"]
        chosen = render_answer_only(self.renderer, prompt, example["chosen"])
        rejected = render_answer_only(self.renderer, prompt, example["rejected"])
        add_pair(builder, row, chosen, rejected, example)

    def collate(
        self, split: EncodedSplit, indices: list[Any], train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        batch = pad_pairs(split, indices, self.tokenizer.pad_token_id, self.cfg.tokenizer.padding_quantile)
        batch["pair_index"] = torch.as_tensor(list(indices), dtype=torch.long)
        return batch

    # ------------------------------------------------------------------ log-probabilities
    def sequence_logps(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of each sequence's answer tokens ``[2 x pairs]``, and their counts."""
        states, head, targets, rows = self.trained_hidden(model, batch)
        if head is None:
            token_logps = -F.cross_entropy(states.float(), targets, reduction="none")
        else:
            token_logps = -token_cross_entropy(states, head, targets)
        n = batch["input_ids"].shape[0]
        sums = torch.zeros(n, dtype=torch.float32, device=token_logps.device).index_add(0, rows, token_logps.float())
        counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).to(sums.device)
        return sums, counts

    def uses_reference(self) -> bool:
        return self.cfg.training.preference_loss not in REFERENCE_FREE

    @torch.no_grad()
    def reference_logps(self, model: Any, batch: dict[str, torch.Tensor], split: EncodedSplit | None = None) -> Any:
        """Reference log-probabilities ``[2 x pairs]`` of a batch: from the precomputed table when there is one."""
        table = self._precomputed.get(id(split)) if split is not None else self._precomputed.get(0)
        if table is not None:
            rows = table[batch["pair_index"].cpu()].to(batch["input_ids"].device)  # [pairs, 2]
            return torch.cat([rows[:, 0], rows[:, 1]])
        was_training = model.training
        with self.reference_model(model) as reference:
            reference.eval()
            sums, _ = self.sequence_logps(reference, batch)
        model.train(was_training)
        return sums

    def attach(self, model: Any, data: Any) -> None:
        """Before training: precompute the reference log-probabilities of the training and validation pairs, when
        ``training.precompute_reference`` asks for it, then drop the frozen copy (training reads the tables)."""
        if not (self.cfg.training.precompute_reference and self.uses_reference()):
            return
        self._precomputed[0] = self._reference_table(model, data.train)
        self._precomputed[id(data.validation)] = self._reference_table(model, data.validation)
        self._frozen = None

    def _reference_table(self, model: Any, split: EncodedSplit) -> torch.Tensor:
        """``[rows, 2]``: the reference log-probabilities of each pair's chosen and rejected answers."""
        device = next(model.parameters()).device
        table = torch.zeros(len(split), 2)
        size = self.loss_batch_size()
        for start in range(0, len(split), size):
            indices = list(range(start, min(start + size, len(split))))
            batch = {k: v.to(device) for k, v in self.collate(split, indices, train=False).items()}
            sums = self.reference_logps(model, batch, split).cpu()
            table[indices, 0], table[indices, 1] = sums[: len(indices)], sums[len(indices) :]
        return table

    # ------------------------------------------------------------------ loss
    def _pair_losses(self, model: Any, batch: dict[str, torch.Tensor], split: EncodedSplit | None = None) -> Any:
        t = self.cfg.training
        sums, counts = self.sequence_logps(model, batch)
        pairs = sums.shape[0] // 2
        reference = None
        if self.uses_reference():
            ref = self.reference_logps(model, batch, split)
            reference = (ref[:pairs], ref[pairs:])
        losses, chosen, rejected = preference_losses(
            t.preference_loss,
            (sums[:pairs], sums[pairs:]),
            reference,
            (counts[:pairs], counts[pairs:]),
            t.beta,
            t.label_smoothing,
            t.simpo_gamma,
        )
        return losses, chosen, rejected, sums.detach()

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed preference loss over the pairs of the batch, and the number of pairs."""
        losses, _, _, _ = self._pair_losses(model, batch)
        return losses.sum(), torch.tensor(losses.shape[0])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        """Reward accuracy (ties count half), reward margin and the answers' log-probabilities on the pairs."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        parts: dict[str, list[np.ndarray]] = {"loss": [], "chosen": [], "rejected": [], "lc": [], "lr": []}
        size = self.loss_batch_size()
        for start in range(0, len(split), size):
            indices = list(range(start, min(start + size, len(split))))
            batch = {k: v.to(device) for k, v in self.collate(split, indices, train=False).items()}
            losses, chosen, rejected, sums = self._pair_losses(model, batch, split)
            for key, value in zip(("loss", "chosen", "rejected"), (losses, chosen, rejected)):
                parts[key].append(value.float().cpu().numpy())
            parts["lc"].append(sums[: len(indices)].cpu().numpy())
            parts["lr"].append(sums[len(indices) :].cpu().numpy())
        model.train(was_training)
        got = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        chosen, rejected = got["chosen"], got["rejected"]
        metrics = {
            "loss": float(got["loss"].mean()),
            "reward_accuracy": pairwise_accuracy(chosen, rejected),
            "reward_margin": float((chosen - rejected).mean()),
            "chosen_logps": float(got["lc"].mean()),
            "rejected_logps": float(got["lr"].mean()),
        }
        return EvalResult(metrics, pair_rows(examples, chosen, rejected))


REFERENCE_FREE = ("simpo", "orpo")  # preference losses without a reference model


def dpo_rules(cfg: RunConfig) -> list[tuple[str, str]]:
    """Pair rules, and: a causal LM backbone; reference and smoothing options only where the loss uses them."""
    found, t = pair_rules(cfg), cfg.training
    if backbone_model_type(cfg.llm_backbone) in ENCODER_MODEL_TYPES:
        found.append(
            ("llm_backbone", "dpo tunes a causal LM (e.g. smollm2-135m-instruct); this backbone is an encoder")
        )
    if t.precompute_reference and t.preference_loss in REFERENCE_FREE:
        found.append(
            (
                "training.precompute_reference",
                f"{t.preference_loss} uses no reference model, so there is nothing to precompute",
            )
        )
    if t.label_smoothing > 0 and t.preference_loss not in ("sigmoid", "simpo"):
        found.append(("training.label_smoothing", f"applies to sigmoid and simpo, not {t.preference_loss}"))
    return found


def dpo_reference(cfg: RunConfig) -> Reference:
    """Planner: the frozen reference model DPO compares against (none for SimPO and ORPO)."""
    if cfg.training.preference_loss in REFERENCE_FREE:
        return "none"
    return "precomputed" if cfg.training.precompute_reference else "model"


SPEC = register_spec(
    ProblemSpec(
        name="dpo",
        summary="preference tuning of a causal LM on chosen/rejected pairs: DPO, IPO, hinge, SimPO, ORPO",
        build=PreferenceProblem,
        data_kinds=("pair",),
        default_format="preference",
        metrics=("Reward_Accuracy", "Reward_Margin", "Chosen_Logps", "Rejected_Logps"),
        losses=("Preference",),  # which one: training.preference_loss
        rules=dpo_rules,
        generative=True,
        shown_kinds=("pair",),
        sequences_per_row=two_sequences,
        reference=dpo_reference,
        endpoints=("chat", "completions"),
        exports=("adapter", "merged", "gguf"),
        rows_layout="pairs",
        score_note=" Margin: the implicit reward (beta x log-ratio to the reference) of the chosen answer minus the "
        "rejected one's; score 1 when it is positive.",
    )
)
