"""Reward models: a one-number scoring head on any backbone, trained on preference pairs (Bradley-Terry).

The loss is ``-log sigmoid(r(chosen) - r(rejected) - margin)`` summed over pairs; metrics are the pairwise accuracy
(the share of validation pairs whose chosen answer scores higher) and the mean margin. A trained reward run scores
answers for ``tunelab predict``, ``tunelab serve`` (``/v1/score``) and online RL (``rl.reward_model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.config import RunConfig
from tunelab.data.collate import pad_pairs, pad_sequences
from tunelab.data.prompts import IGNORE_INDEX, PromptRenderer, Rendered, apply_template_setting
from tunelab.data.readers import Record
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.problems.base import EvalResult, ProblemSpec, register_spec
from tunelab.problems.pairs import add_pair, pair_rows, pair_rules, pairwise_accuracy, two_sequences, with_answer


class RewardProblem:
    """A sequence-scoring head trained so that chosen answers score above rejected ones."""

    name: ClassVar[str] = "reward"
    stratify = False

    def __init__(self, cfg: RunConfig, tokenizer: Any):
        self.cfg = cfg
        self.tokenizer = tokenizer
        apply_template_setting(cfg, tokenizer)
        self.renderer = PromptRenderer(cfg, tokenizer)

    def auto_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1, "pad_token_id": self.tokenizer.pad_token_id}

    # ------------------------------------------------------------------ data
    def label_of(self, example: dict[str, Any]) -> None:
        return None

    def fit(self, labels: list[Any], source: str) -> None:
        return None

    def sequence(self, prompt: list[dict[str, str]], answer: str) -> Rendered:
        """One scored sequence: the prompt and the answer, cut to the token limits (the prompt from the left).

        With a chat template (decoders) the conversation is rendered exactly as SFT renders it; without one
        (encoders) it is the tokenizer's pair encoding, ``[CLS] prompt [SEP] answer [SEP]`` for BERT.
        """
        if self.renderer.use_template:
            return self.renderer.render(with_answer(prompt, answer))
        tok, limits = self.tokenizer, self.cfg.tokenizer
        prompt_ids = tok("\n".join(f"{m['role']}: {m['content']}" for m in prompt), add_special_tokens=False)
        answer_full = tok(answer, add_special_tokens=False)["input_ids"]
        room = limits.max_length - tok.num_special_tokens_to_add(pair=True)
        answer_ids = answer_full[: max(min(limits.max_length_answer, room - 1), 1)]
        keep = max(min(limits.max_length_prompt, room - len(answer_ids)), 0)
        kept_prompt = prompt_ids["input_ids"][len(prompt_ids["input_ids"]) - keep :] if keep else []
        ids = tok.build_inputs_with_special_tokens(kept_prompt, answer_ids)
        truncated = len(answer_ids) < len(answer_full)
        return Rendered(ids, [IGNORE_INDEX] * len(ids), len(kept_prompt), len(answer_ids), truncated, True)

    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        # Data without pairs was refused when the format was detected (ExampleReader).
        prompt = example["prompt"]
        add_pair(
            builder, row, self.sequence(prompt, example["chosen"]), self.sequence(prompt, example["rejected"]), example
        )

    def collate(
        self, split: EncodedSplit, indices: list[int], train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        batch = pad_pairs(split, indices, self.tokenizer.pad_token_id, self.cfg.tokenizer.padding_quantile)
        batch.pop("labels", None)  # a reward model has no per-token labels
        return batch

    # ------------------------------------------------------------------ loss
    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed Bradley-Terry loss over the pairs of the batch, and the number of pairs."""
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
        pairs = scores.shape[0] // 2
        margin = scores[:pairs] - scores[pairs:] - self.cfg.training.reward_margin
        return -F.logsigmoid(margin).sum(), torch.tensor(pairs)

    # ------------------------------------------------------------------ scoring
    def batch_size(self) -> int:
        train = self.cfg.training.batch_size
        return self.cfg.prediction.batch_size_inference or (train if isinstance(train, int) else 16)

    @torch.no_grad()
    def _scores(self, model: Any, sequences: list[np.ndarray]) -> np.ndarray:
        """The reward of each token sequence, in batches of similar length."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = np.zeros(len(sequences), dtype=np.float64)
        order = np.argsort([len(s) for s in sequences], kind="stable")
        size = self.batch_size()
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            batch = pad_sequences([sequences[i] for i in rows], self.tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            out[rows] = logits.logits[:, 0].float().cpu().numpy()
        model.train(was_training)
        return out

    def pair_scores(self, model: Any, split: EncodedSplit) -> tuple[np.ndarray, np.ndarray]:
        """(chosen rewards, rejected rewards) of every pair of a split."""
        from tunelab.data.collate import pair_sequences

        sequences = []
        for i in range(len(split)):
            chosen, rejected = pair_sequences(split, i)
            sequences += [split.input_ids[chosen], split.input_ids[rejected]]
        scores = self._scores(model, sequences)
        return scores[0::2], scores[1::2]

    def score(self, model: Any, prompts: list[list[dict[str, str]]], answers: list[str]) -> np.ndarray:
        """The reward of each (prompt messages, answer) pair."""
        return self._scores(model, [np.asarray(self.sequence(p, a).input_ids) for p, a in zip(prompts, answers)])

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        chosen, rejected = self.pair_scores(model, split)
        margin = chosen - rejected
        bt = -F.logsigmoid(torch.from_numpy(margin - self.cfg.training.reward_margin)).numpy()
        metrics = {
            "loss": float(bt.mean()) if len(bt) else float("nan"),
            "pairwise_accuracy": pairwise_accuracy(chosen, rejected),
            "mean_margin": float(margin.mean()) if len(margin) else float("nan"),
        }
        return EvalResult(metrics, pair_rows(examples, chosen, rejected))

    def predict(self, model: Any, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rewards: ``reward`` for prompt + answer rows; both rewards and the preferred one for preference rows."""
        pairs = [ex for ex in examples if "chosen" in ex]
        singles = [ex for ex in examples if "chosen" not in ex]
        single_scores = iter(self.score(model, [ex["prompt"] for ex in singles], [ex["answer"] for ex in singles]))
        pair_prompts = [ex["prompt"] for ex in pairs for _ in range(2)]
        pair_answers = [answer for ex in pairs for answer in (ex["chosen"], ex["rejected"])]
        pair_scores = iter(self.score(model, pair_prompts, pair_answers))
        out = []
        for ex in examples:
            if "chosen" not in ex:
                out.append({"reward": float(next(single_scores))})
                continue
            c, r = float(next(pair_scores)), float(next(pair_scores))
            out.append({"chosen_reward": c, "rejected_reward": r, "preferred": "chosen" if c >= r else "rejected"})
        return out

    def save(self, run_dir: Path) -> None:
        return None

    def load(self, run_dir: Path) -> None:
        return None


SPEC = register_spec(
    ProblemSpec(
        name="reward",
        summary="a reward model scoring answers, trained on preference pairs (Bradley-Terry)",
        build=RewardProblem,
        data_kinds=("pair",),
        default_format="preference",
        metrics=("Pairwise_Accuracy", "Mean_Margin"),
        losses=("BradleyTerry",),
        rules=pair_rules,
        sequences_per_row=two_sequences,
        endpoints=("score",),
        rows_layout="pairs",
        score_note=" Margin: the reward of the chosen answer minus the rejected one's; score 1 when it is positive.",
    )
)
