"""KTO (Ethayarajh et al., 2024): preference tuning of a causal LM on *unpaired* answers, each labelled desirable or
undesirable, against a reference model (the DPO family's, ``problems/preference.py``).

The implicit reward of an answer is ``beta x (log pi(y|x) - log pi_ref(y|x))`` as in DPO. KTO compares it with a
reference point ``z0``: an estimate of KL(pi || pi_ref) from the batch itself, each prompt read with another row's
answer (TRL's KTOTrainer: rotated by one within the batch), computed without gradients and clamped at 0. A desirable
answer's loss is ``1 - sigmoid(beta x (logratio - z0))``, an undesirable one's ``1 - sigmoid(beta x (z0 - logratio))``,
weighted by ``training.desirable_weight`` / ``undesirable_weight`` and averaged over the answers.

Data: TRL's unpaired preference rows and LLaMA-Factory's ``kto_tag`` rows (``unpaired_preference``), or preference
pairs. A split row is stored like a pair whose missing side is empty (``data.collate.pair_sequences``): a desirable
answer is a chosen side alone, an undesirable one a rejected side alone. A training pair gives ONE answer, picked by a
coin seeded with ``dataset.split_seed`` and the source row (the chosen one as desirable, or the rejected one as
undesirable), so no prompt is seen with both its answers; a validation pair keeps both, and its reward accuracy
(chosen vs rejected implicit rewards) is DPO's.
"""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tunelab.config import CUSTOM_METRIC, ENCODER_MODEL_TYPES, RunConfig, backbone_model_type
from tunelab.data.collate import batch_length, pair_sequences
from tunelab.data.prompts import IGNORE_INDEX
from tunelab.data.readers import Record
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.problems.base import EvalResult, ProblemOptions, ProblemSpec, Reference, register_spec
from tunelab.problems.pairs import add_pair, last_user_turn, pair_rows, pairwise_accuracy, render_answer_only
from tunelab.problems.preference import PreferenceProblem

# Answer kinds of an evaluation batch's target sequences.
CHOSEN, REJECTED, UNPAIRED = 0, 1, 2


class KTOOptions(ProblemOptions):
    """KTO's own settings, written in the ``training`` section (``training.desirable_weight``)."""

    desirable_weight: float = Field(
        1.0,
        gt=0,
        le=100,
        description="kto: weight of the loss of desirable answers. With unbalanced data, weight the rarer kind up so "
        "that desirable_weight x desirable answers / (undesirable_weight x undesirable answers) lies in 1 to 4/3.",
    )
    undesirable_weight: float = Field(
        1.0, gt=0, le=100, description="kto: weight of the loss of undesirable answers (see desirable_weight)."
    )


def kto_losses(
    policy: torch.Tensor,
    reference: torch.Tensor,
    policy_kl: torch.Tensor,
    reference_kl: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-answer KTO loss, the implicit rewards and the reference point.

    Args:
        policy, reference: summed log-probabilities of each answer ``[answers]`` under the policy and the reference.
        policy_kl, reference_kl: the same for the mismatched prompt/answer sequences ``[k]`` (``k`` may be 0: then
            the reference point is 0).
        desirable: 1.0 for a desirable answer, 0.0 for an undesirable one ``[answers]``.
        beta, desirable_weight, undesirable_weight: ``training.beta`` and the two weights.

    Returns:
        (losses ``[answers]``, rewards ``beta x logratio`` (detached), z0 (a detached scalar, >= 0)).
    """
    if policy_kl.numel():
        z0 = (policy_kl - reference_kl).mean().detach().clamp(min=0)
    else:
        z0 = torch.zeros((), dtype=policy.dtype, device=policy.device)
    logratio = policy - reference
    good = desirable.to(logratio.dtype)
    value = torch.sigmoid(beta * (good * (logratio - z0) + (1 - good) * (z0 - logratio)))
    weight = good * desirable_weight + (1 - good) * undesirable_weight
    return weight * (1 - value), (beta * logratio).detach(), z0


def _cut(ids: np.ndarray, labels: np.ndarray) -> int:
    """Where a sequence's answer starts: its first trained token (the prompt carries no labels)."""
    trained = np.flatnonzero(labels != IGNORE_INDEX)
    return int(trained[0]) if len(trained) else len(ids)


def pad_rows(rows: list[tuple[np.ndarray, np.ndarray]], pad_id: int, quantile: float) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` of (ids, labels) sequences; sequences longer than
    the width are cut from the left, keeping their answers (as ``data.collate.pad_pairs`` does)."""
    width = max(batch_length([len(ids) for ids, _ in rows], quantile), 1) if rows else 1
    ids_out = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels_out = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, (ids, labels) in enumerate(rows):
        keep = slice(max(len(ids) - width, 0), len(ids))
        n = keep.stop - keep.start
        ids_out[row, :n], labels_out[row, :n], mask[row, :n] = ids[keep], labels[keep], 1
    return {
        "input_ids": torch.from_numpy(ids_out),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels_out),
    }


class KTOProblem(PreferenceProblem):
    """A causal LM tuned towards its desirable answers and away from its undesirable ones; chat and export as for
    causal_lm. Reuses DPO's log-probabilities and reference model; its own rows, batches, loss and metrics."""

    name: ClassVar[str] = "kto"

    def __init__(self, cfg: Any, tokenizer: Any):
        super().__init__(cfg, tokenizer)
        self._stats: dict[str, float] = {}

    # ------------------------------------------------------------------ data
    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        prompt = example["prompt"]
        if "chosen" in example:  # a preference pair: both answers kept; training uses one (see collate)
            chosen = render_answer_only(self.renderer, prompt, example["chosen"])
            rejected = render_answer_only(self.renderer, prompt, example["rejected"])
            add_pair(builder, row, chosen, rejected, example)
            return
        answer = render_answer_only(self.renderer, prompt, example["completion"])
        builder.add(
            answer.input_ids,
            row,
            labels=answer.labels,
            # A desirable answer is a chosen side with an empty rejected one; an undesirable one the reverse.
            chosen_length=len(answer.input_ids) if example["label"] else 0,
            prompt_length=answer.prompt_length,
            answer_length=answer.answer_length,
            truncated=answer.answer_truncated,
            ends_eos=answer.ends_with_eos,
            empty=not example["completion"].strip(),
        )

    def _answers(self, split: EncodedSplit, i: int, train: bool) -> list[tuple[slice, int, bool]]:
        """Row ``i``'s answers as (where, kind, desirable): a pair's two (in training one, by the row's coin), else
        its one answer."""
        chosen, rejected = pair_sequences(split, i)
        if chosen.stop > chosen.start and rejected.stop > rejected.start:
            if train:  # one answer per prompt, the same in every epoch
                coin = zlib.crc32(f"{self.cfg.dataset.split_seed}:{int(split.rows[i])}".encode()) & 1
                return [(chosen, CHOSEN, True)] if coin else [(rejected, REJECTED, False)]
            return [(chosen, CHOSEN, True), (rejected, REJECTED, False)]
        if chosen.stop > chosen.start:
            return [(chosen, UNPAIRED, True)]
        return [(rejected, UNPAIRED, False)]

    def collate(
        self, split: EncodedSplit, indices: list[Any], train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The batch's answers (one per row in training; both answers of a pair otherwise), then one mismatched
        sequence per row: row k's prompt with row k-1's (first) answer, for the reference point z0.

        Holds ``input_ids`` / ``attention_mask`` / ``labels`` ``[answers + rows, width]``, ``desirable`` and
        ``kind`` ``[answers]``, ``answer_row`` ``[answers]`` (position in ``indices``) and ``num_trained`` (answers).
        """
        answers, desirable, kinds, owner, firsts = [], [], [], [], []
        for k, i in enumerate(indices):
            for n, (where, kind, good) in enumerate(self._answers(split, i, train)):
                ids, labels = split.input_ids[where], split.labels[where]
                answers.append((ids, labels))
                desirable.append(float(good))
                kinds.append(kind)
                owner.append(k)
                if n == 0:
                    firsts.append((ids, labels))
        mismatched = []
        if len(indices) > 1:  # one row alone has no other answer: z0 is then 0
            for k in range(len(indices)):
                prompt_ids, _ = firsts[k]
                prompt_ids = prompt_ids[: _cut(*firsts[k])]
                ids, labels = firsts[k - 1]
                cut = _cut(ids, labels)
                mismatched.append(
                    (
                        np.concatenate([prompt_ids, ids[cut:]]),
                        np.concatenate([np.full(len(prompt_ids), IGNORE_INDEX, labels.dtype), labels[cut:]]),
                    )
                )
        batch = pad_rows(answers + mismatched, self.tokenizer.pad_token_id, self.cfg.tokenizer.padding_quantile)
        batch["desirable"] = torch.tensor(desirable)
        batch["kind"] = torch.tensor(kinds, dtype=torch.long)
        batch["answer_row"] = torch.tensor(owner, dtype=torch.long)
        batch["num_trained"] = torch.tensor(len(answers))
        return batch

    def padding_free(self) -> bool:
        return False  # answers and mismatched sequences are padded rows (the planner reads this)

    # ------------------------------------------------------------------ loss
    def uses_reference(self) -> bool:
        return True

    def attach(self, model: Any, data: Any) -> None:
        """Nothing to precompute: z0 pairs each prompt with another row of the same batch (a rule refuses
        ``training.precompute_reference``)."""

    def _losses(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(losses, rewards, z0) of a batch; the policy's answers carry gradients when the model trains."""
        beta, options = self.cfg.training.beta, KTOOptions.of(self.cfg)
        m = int(batch["desirable"].shape[0])
        rows = ("input_ids", "attention_mask", "labels")
        answers = {k: batch[k][:m] for k in rows}
        mismatched = {k: batch[k][m:] for k in rows}
        policy, _ = self.sequence_logps(model, answers)
        policy_kl = torch.zeros(0, device=policy.device)
        if mismatched["input_ids"].shape[0]:
            with torch.no_grad():  # z0 is a baseline, not trained (TRL: the KL pass runs without gradients)
                policy_kl, _ = self.sequence_logps(model, mismatched)
        reference = self.reference_logps(model, {k: batch[k] for k in rows})  # one pass over all sequences
        return kto_losses(
            policy,
            reference[:m],
            policy_kl,
            reference[m:],
            batch["desirable"].to(policy.device),
            beta,
            options.desirable_weight,
            options.undesirable_weight,
        )

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed weighted KTO loss over the answers of the batch, and the number of answers."""
        losses, rewards, z0 = self._losses(model, batch)
        good = batch["desirable"].to(rewards.device) > 0.5
        self._stats = {"kl": float(z0)}
        if good.any():
            self._stats["desirable_reward"] = float(rewards[good].mean())
        if (~good).any():
            self._stats["undesirable_reward"] = float(rewards[~good].mean())
        return losses.sum(), torch.tensor(losses.shape[0])

    def pop_stats(self) -> dict[str, float]:
        """z0 and the mean rewards of the last batch (logged with the step, as TRL logs them)."""
        stats, self._stats = self._stats, {}
        return stats

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        """Reward accuracy: on pairs, the share whose chosen answer's implicit reward beats the rejected one's (ties
        half); on unpaired rows (when there are no pairs), the share whose reward has its label's sign. Also the
        mean rewards of desirable (chosen) and undesirable (rejected) answers, their gap and the KL estimate z0."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("loss", "reward", "desirable", "kind", "row")}
        kl_sum, kl_batches = 0.0, 0
        size = self.loss_batch_size()
        for start in range(0, len(split), size):
            indices = list(range(start, min(start + size, len(split))))
            batch = {k: v.to(device) for k, v in self.collate(split, indices, train=False).items()}
            losses, rewards, z0 = self._losses(model, batch)
            if len(indices) > 1:
                kl_sum, kl_batches = kl_sum + float(z0), kl_batches + 1
            for key, value in (("loss", losses), ("reward", rewards), ("desirable", batch["desirable"])):
                parts[key].append(value.float().cpu().numpy())
            parts["kind"].append(batch["kind"].cpu().numpy())
            parts["row"].append(batch["answer_row"].cpu().numpy() + start)
        model.train(was_training)
        got = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        return EvalResult(kto_metrics(got, kl_sum / kl_batches if kl_batches else None), kto_rows(examples, got))


def kto_metrics(got: dict[str, np.ndarray], kl: float | None) -> dict[str, float]:
    """The validation metrics from each answer's loss, reward, label, kind and row (a metric without rows is left
    out rather than NaN)."""
    reward, good, kind = got["reward"], got["desirable"] > 0.5, got["kind"]
    metrics = {"loss": float(got["loss"].mean()) if len(reward) else float("nan")}
    chosen, rejected = reward[kind == CHOSEN], reward[kind == REJECTED]
    if len(chosen):
        metrics["reward_accuracy"] = pairwise_accuracy(chosen, rejected)
    elif len(reward):
        signed = np.where(good, reward, -reward)
        metrics["reward_accuracy"] = float(np.mean((signed > 0) + 0.5 * (signed == 0)))
    if good.any():
        metrics["desirable_reward"] = float(reward[good].mean())
    if (~good).any():
        metrics["undesirable_reward"] = float(reward[~good].mean())
    if good.any() and (~good).any():
        metrics["reward_margin"] = metrics["desirable_reward"] - metrics["undesirable_reward"]
    if kl is not None:
        metrics["kl"] = kl
    return metrics


def kto_rows(examples: list[dict[str, Any]], got: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One report row per validation row: a pair as DPO's (margin = chosen minus rejected reward); an unpaired
    answer under 'chosen' or 'rejected' by its label, its margin its reward signed by the label."""
    rows = []
    for r, ex in enumerate(examples):
        mine = got["row"] == r
        reward, kind, good = got["reward"][mine], got["kind"][mine], got["desirable"][mine] > 0.5
        if "chosen" in ex:
            rows += pair_rows([ex], reward[kind == CHOSEN], reward[kind == REJECTED])
            continue
        signed = float(reward[0] if good[0] else -reward[0])
        rows.append(
            {
                "prompt": last_user_turn(ex["prompt"]),
                "reference": ex["completion"] if ex["label"] else "",
                "prediction": "" if ex["label"] else ex["completion"],
                "reward": float(reward[0]),
                "margin": signed,
                "score": float(signed > 0) + 0.5 * float(signed == 0),
            }
        )
    return rows


def kto_rules(cfg: RunConfig) -> list[tuple[str, str]]:
    """KTO's config rules: a causal LM, preference-shaped data, whole sequences, a batch to estimate z0 from."""
    found, t = [], cfg.training
    if backbone_model_type(cfg.llm_backbone) in ENCODER_MODEL_TYPES:
        found.append(
            ("llm_backbone", "kto tunes a causal LM (e.g. smollm2-135m-instruct); this backbone is an encoder")
        )
    if cfg.dataset.format not in ("auto", "unpaired_preference", "preference"):
        found.append(
            (
                "dataset.format",
                "kto trains on unpaired preference rows or pairs: 'auto', 'unpaired_preference' or 'preference'",
            )
        )
    if t.packing:
        found.append(("training.packing", "kto compares whole answers with the reference and cannot pack them"))
    if isinstance(t.batch_size, int) and t.batch_size < 2:
        found.append(
            ("training.batch_size", "kto estimates its reference point from the other rows of a batch: use 2 or more")
        )
    if t.precompute_reference:
        found.append(
            (
                "training.precompute_reference",
                "kto pairs each prompt with another row's answer in every batch, so its reference runs during training",
            )
        )
    if t.label_smoothing > 0:
        found.append(("training.label_smoothing", "applies to dpo's sigmoid and simpo losses, not kto"))
    custom = [m for m in cfg.all_metrics() if CUSTOM_METRIC.match(m)]
    if custom:
        found.append(("prediction.metric", f"kto reports reward metrics only, not '{custom[0]}'"))
    return found


def kto_reference(cfg: RunConfig) -> Reference:
    """Planner: a live reference model (the disabled adapter with LoRA; a frozen copy otherwise)."""
    return "model"


SPEC = register_spec(
    ProblemSpec(
        name="kto",
        summary="preference tuning of a causal LM on unpaired answers labelled desirable or undesirable: KTO",
        build=KTOProblem,
        data_kinds=("unpaired", "pair"),
        default_format="unpaired_preference",
        metrics=("Reward_Accuracy", "Reward_Margin", "Desirable_Reward", "Undesirable_Reward", "KL"),
        lower_is_better=("KL",),
        losses=("KTO",),
        rules=kto_rules,
        generative=True,
        shown_kinds=("unpaired",),
        reference=kto_reference,
        endpoints=("chat", "completions"),
        exports=("adapter", "merged", "gguf"),
        rows_layout="pairs",
        options=KTOOptions,
        score_note=" A pair: margin = the implicit reward (beta x log-ratio to the reference) of the chosen answer "
        "minus the rejected one's, score 1 when positive. An unpaired answer: margin = its reward, negated for an "
        "undesirable one, score 1 when positive.",
    )
)
