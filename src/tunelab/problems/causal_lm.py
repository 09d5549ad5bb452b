"""Causal language modelling: instruction / chat fine-tuning with answer-only loss, and continued pre-training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.config import CUSTOM_METRIC, RunConfig, metric_key
from tunelab.data.collate import pack_causal, pad_causal
from tunelab.data.prompts import IGNORE_INDEX, PromptRenderer, apply_template_setting
from tunelab.data.readers import Record
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.evaluate.metrics import TEXT_METRICS, compute_custom_metric, compute_perplexity
from tunelab.generation.generate import generate_batched
from tunelab.models.adapters import is_prompt_learning, unwrap
from tunelab.models.attention import varlen_attention
from tunelab.models.fused_loss import chunked_cross_entropy, chunked_token_losses, plain_head
from tunelab.problems.base import EvalResult, ProblemSpec, register_spec


def score_answers(
    cfg: RunConfig, prompts: list[str], answers: list[str], references: list[str]
) -> tuple[dict[str, float], list[float]]:
    """Every configured answer metric (BLEU always), and a per-row score for the report.

    The per-row score follows the metric that picks the best checkpoint when it has one per row (a text metric or
    the judge); otherwise sentence BLEU.
    """
    names = ["BLEU"] + [m for m in cfg.all_metrics() if m.lower() not in ("bleu", "perplexity")]
    metrics: dict[str, float] = {}
    per_row: dict[str, list[float]] = {}
    for name in names:
        key = metric_key(name)
        if key in TEXT_METRICS:
            corpus, row_score = TEXT_METRICS[key]
            metrics[key] = corpus(answers, references)
            per_row[key] = [row_score(a, r) for a, r in zip(answers, references)]
        elif key == "judge":
            from tunelab.evaluate.judge import judge_answers

            result = judge_answers(cfg.judge, prompts, references, answers)
            metrics.update(result.metrics())
            per_row[key] = [float("nan") if s is None else s for s in result.scores]
        elif CUSTOM_METRIC.match(name):
            metrics[key] = compute_custom_metric(name, answers, references)
    best = cfg.best_metric()
    return metrics, per_row.get(best, per_row["bleu"])


def _head_fast_path(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) when logits are exactly ``lm_head(decoder(x))``; None when the model does more."""
    if is_prompt_learning(model):
        return None  # soft tokens are added by peft's own forward
    base = unwrap(model)
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The forward arguments of a batch. Packed batches carry position ids that restart per example and no
    attention mask: transformers then keeps attention inside each example."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


class CausalLMProblem:
    """Instruction/chat supervised fine-tuning and continued pre-training of a causal LM."""

    name: ClassVar[str] = "causal_lm"

    def __init__(self, cfg: RunConfig, tokenizer: Any):
        self.cfg = cfg
        self.tokenizer = tokenizer
        apply_template_setting(cfg, tokenizer)
        self.renderer = PromptRenderer(cfg, tokenizer)

    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def model_kwargs(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ data
    def label_of(self, example: dict[str, Any]) -> str | None:
        return None

    def fit(self, labels: list[Any], source: str) -> None:
        return None

    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        if "text" in example:  # raw text: continued pre-training, every token trained
            for chunk in self.renderer.render_text(example["text"]):
                builder.add(
                    chunk,
                    row,
                    labels=chunk,
                    prompt_length=0,
                    answer_length=len(chunk),
                    truncated=False,
                    ends_eos=chunk[-1] == self.tokenizer.eos_token_id,
                    empty=False,
                )
            return
        if "segments" in example:  # Axolotl input_output: trained where each segment says
            rendered = self.renderer.render_segments(example["segments"])
            empty = not any(s["text"].strip() for s in example["segments"] if s["train"])
        else:
            rendered = self.renderer.render(example["messages"], example.get("tools"))
            last = example["messages"][-1]
            empty = not (last["content"].strip() or last.get("tool_calls"))
        builder.add(
            rendered.input_ids,
            row,
            labels=rendered.labels,
            prompt_length=rendered.prompt_length,
            answer_length=rendered.answer_length,
            truncated=rendered.answer_truncated,
            ends_eos=rendered.ends_with_eos,
            empty=empty,
        )

    def collate(
        self, split: EncodedSplit, indices: list[Any], train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """A right-padded batch; with packing, ``indices`` is a list of bins (lists of rows) instead.

        Training batches are padding-free by default: the batch's rows concatenated into one sequence (the same
        rows, the same loss, no compute spent on padding). Evaluation batches stay padded, one row per example.
        """
        mask_p = self.cfg.augmentation.token_mask_probability if train else 0.0
        pad = self.tokenizer.pad_token_id
        if indices and isinstance(indices[0], (list, tuple)):
            return pack_causal(split, indices, pad, mask_p, generator)
        if train and self.padding_free():
            return pack_causal(split, [list(indices)], pad, mask_p, generator)
        return pad_causal(
            split,
            indices,
            self.tokenizer.pad_token_id,
            self.cfg.tokenizer.padding_quantile,
            mask_p,
            generator=generator,
        )

    def padding_free(self) -> bool:
        """Whether training batches are concatenated without padding (soft prompts need one sequence per row)."""
        t = self.cfg.training
        return t.padding_free and t.adapter not in ("prefix_tuning", "prompt_tuning")

    # ------------------------------------------------------------------ loss
    def trained_hidden(
        self, model: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """What the loss needs at trained positions only: (hidden states or logits, head, targets, batch rows).

        The LM head runs only where a label is trained: prompt and padding positions never get vocabulary logits,
        which is most of the memory and a good share of the compute for a large vocabulary. When the model's logits
        are exactly ``lm_head(decoder(x))`` this returns the final hidden states ``[trained, hidden]`` and the head
        (so the loss can apply it chunk by chunk); otherwise the logits ``[trained, vocab]`` and None.
        """
        labels = batch["labels"][:, 1:]  # [batch, seq-1]: the token each position predicts
        trained = labels != IGNORE_INDEX
        inputs = model_inputs(batch)
        fast = _head_fast_path(model)
        rows = trained.nonzero()[:, 0]
        if fast is None:
            with varlen_attention(unwrap(model), batch):
                logits = model(**inputs).logits
            # Prompt tuning prepends soft tokens: keep the positions of the real tokens.
            return logits[:, logits.shape[1] - labels.shape[1] - 1 : -1][trained], None, labels[trained], rows
        decoder, head = fast
        with varlen_attention(unwrap(model), batch):
            hidden = decoder(**inputs).last_hidden_state
        return hidden[:, :-1][trained], head, labels[trained], rows  # [trained, hidden]

    def trained_logits(
        self, model: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``[trained, vocab]`` at trained positions only, their target tokens, and the batch row of each."""
        states, head, targets, rows = self.trained_hidden(model, batch)
        return (states if head is None else head(states)), targets, rows

    def _chunked(self, head: Any) -> bool:
        return head is not None and self.cfg.training.chunked_loss and plain_head(head)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over trained tokens, and their count."""
        states, head, targets, _ = self.trained_hidden(model, batch)
        if self._chunked(head):
            return chunked_cross_entropy(states, head, targets), torch.tensor(len(targets))
        logits = states if head is None else head(states)
        return F.cross_entropy(logits.float(), targets, reduction="sum"), torch.tensor(len(targets))

    # ------------------------------------------------------------------ evaluation
    def prompt_ids(self, examples: list[dict[str, Any]]) -> list[list[int]]:
        """Token ids of each example's prompt (every turn before the last assistant answer)."""
        out = []
        for ex in examples:
            messages = ex["messages"] if "messages" in ex else ex["prompt"]  # a preference pair's prompt
            if messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            out.append(self.renderer.prompt_ids(messages))
        return out

    def inference_batch_size(self) -> int:
        """Rows per generate call; 0 lets ``generate_batched`` pick (auto)."""
        return self.cfg.prediction.batch_size_inference

    def loss_batch_size(self) -> int:
        """Rows per validation-loss batch: the inference batch size, else the training one."""
        train = self.cfg.training.batch_size
        return self.cfg.prediction.batch_size_inference or (train if isinstance(train, int) else 8)

    @torch.no_grad()
    def validation_loss(self, model: Any, split: EncodedSplit) -> tuple[float, np.ndarray]:
        """Mean token loss over the split, and each row's mean token loss."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        row_sum = torch.zeros(len(split), dtype=torch.float64)
        row_count = torch.zeros(len(split), dtype=torch.float64)
        batch_size = self.loss_batch_size()
        for start in range(0, len(split), batch_size):
            indices = list(range(start, min(start + batch_size, len(split))))
            batch = {k: v.to(device) for k, v in self.collate(split, indices, train=False).items()}
            states, head, targets, rows = self.trained_hidden(model, batch)
            if self._chunked(head):
                token_loss = chunked_token_losses(states, head, targets).double().cpu()
            else:
                logits = states if head is None else head(states)
                token_loss = F.cross_entropy(logits.float(), targets, reduction="none").double().cpu()
            rows = rows.cpu() + start
            row_sum.index_add_(0, rows, token_loss)
            row_count.index_add_(0, rows, torch.ones_like(token_loss))
        model.train(was_training)
        mean = float(row_sum.sum() / row_count.sum().clamp(min=1))
        return mean, (row_sum / row_count.clamp(min=1)).numpy()

    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        mean_loss, per_row_loss = self.validation_loss(model, split)
        metrics = {"loss": mean_loss, "perplexity": compute_perplexity(mean_loss)}
        if len(per_row_loss) != len(examples) or any("messages" not in ex for ex in examples):
            # Raw text (possibly several chunks per document): nothing to answer, so loss and perplexity only.
            return EvalResult(
                metrics,
                [
                    {"prompt": "", "reference": "", "prediction": "", "score": float("nan"), "loss": float(lo)}
                    for lo in per_row_loss
                ],
            )
        references = [ex["messages"][-1]["content"] for ex in examples]
        prompts = [ex["messages"][-2]["content"] for ex in examples]  # the last user turn, as written
        answers = [""] * len(examples)
        scores = [float("nan")] * len(examples)
        if generate:
            answers = generate_batched(
                model, self.tokenizer, self.prompt_ids(examples), self.cfg.prediction, self.inference_batch_size()
            )
            answer_metrics, scores = score_answers(self.cfg, prompts, answers, references)
            metrics.update(answer_metrics)
        rows = [
            {"prompt": p, "reference": r, "prediction": a, "score": sc, "loss": float(lo)}
            for p, r, a, sc, lo in zip(prompts, references, answers, scores, per_row_loss)
        ]
        return EvalResult(metrics, rows)

    def predict(self, model: Any, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answers = generate_batched(
            model, self.tokenizer, self.prompt_ids(examples), self.cfg.prediction, self.inference_batch_size()
        )
        return [{"prediction": a} for a in answers]

    def save(self, run_dir: Path) -> None:
        return None

    def load(self, run_dir: Path) -> None:
        return None


def causal_lm_rules(cfg: RunConfig) -> list[tuple[str, str]]:
    """Supervised fine-tuning needs an answer to train on, and ``freeze`` needs something to unfreeze."""
    found = []
    t = cfg.training
    if t.adapter == "freeze" and not (t.trainable_layers or t.trainable_patterns):
        found.append(("training.trainable_layers", "freeze trains nothing: set trainable_layers or trainable_patterns"))
    if not cfg.dataset.answer_column:
        found.append(("dataset.answer_column", "required for causal_lm"))
    return found


SPEC = register_spec(
    ProblemSpec(
        name="causal_lm",
        summary="instruction/chat supervised fine-tuning and continued pre-training of a causal LM",
        build=CausalLMProblem,
        data_kinds=("conversation", "text", "segments", "pair"),
        default_format="columns",
        metrics=("BLEU", "Perplexity", "chrF", "ROUGE_L", "Exact_Match", "judge"),
        lower_is_better=("Perplexity",),
        losses=("CrossEntropy",),
        rules=causal_lm_rules,
        generative=True,
        token_masking=True,
        endpoints=("chat", "completions"),
        exports=("adapter", "merged", "gguf"),
        rows_layout="answers",
        score_note=" Score: the row's score under the metric that picks the best checkpoint, else sentence BLEU.",
    )
)
