"""Online reinforcement learning of a causal LM: sample completions, score them, and follow the reward (GRPO or PPO).

Each training batch holds prompts. Its loss call samples ``rl.num_generations`` completions per prompt with the
current policy, scores them (``rl.reward_function`` and/or the reward run ``rl.reward_model``) and computes:

- ``grpo``: each completion's advantage is its reward minus its group's mean (divided by the group's std), the same
  for all its tokens; the loss is the clipped policy-gradient surrogate plus ``kl_coef`` x the k3 estimate of the
  KL divergence to the reference model, averaged over each completion's tokens.
- ``ppo``: a value head on the policy's hidden states; per-token rewards are ``-kl_coef`` x the log-ratio to the
  reference with the score added at the last token; advantages by GAE, whitened over the batch; the loss is the
  clipped surrogate plus ``value_coef`` x the clipped value loss.

The reference model is the backbone with the adapter switched off (no second copy for LoRA-style adapters). With
``rl.num_iterations`` > 1 the training plan repeats every batch that many times and the completions sampled the
first time are reused, so the probability ratio moves away from 1 and the clipping acts. Reward mean/std, KL, clip
fraction, entropy and response length are logged at every logged step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from tunelab.config import CUSTOM_METRIC, ENCODER_MODEL_TYPES, RunConfig, backbone_model_type
from tunelab.data.collate import pad_left
from tunelab.data.prompts import IGNORE_INDEX
from tunelab.data.readers import Record
from tunelab.data.tokenize import EncodedSplit, SplitBuilder
from tunelab.errors import ConfigError
from tunelab.generation.generate import generate_batched, generation_kwargs
from tunelab.models.fused_loss import token_cross_entropy
from tunelab.problems.base import EvalResult, ProblemSpec, Reference, Sampling, register_spec
from tunelab.problems.causal_lm import CausalLMProblem, _head_fast_path
from tunelab.problems.pairs import last_user_turn
from tunelab.problems.reference import ReferenceModel


class Rewarder:
    """Scores completions with the configured reward function and/or reward run (their sum when both are set)."""

    def __init__(self, cfg: Any, device: torch.device, load_run: Callable[..., Any] | None = None):
        from tunelab.evaluate.metrics import load_metric_function

        rl = cfg.rl
        self.kwargs = dict(rl.reward_kwargs)
        self.function = load_metric_function(rl.reward_function, "rl.reward_function") if rl.reward_function else None
        self.model = None
        if rl.reward_model:
            if load_run is None:
                raise ConfigError("rl.reward_model cannot be loaded here (no run loader)", field="rl.reward_model")
            self.model = load_run(rl.reward_model, device=str(device))
            if self.model.cfg.problem_type != "reward":
                raise ConfigError(
                    f"rl.reward_model must be a reward run, and this one is a {self.model.cfg.problem_type} run",
                    file=rl.reward_model,
                    field="rl.reward_model",
                    hint="train one with problem_type: reward",
                )

    def __call__(
        self, prompts: list[list[dict[str, str]]], completions: list[str], references: list[str], finished: list[bool]
    ) -> np.ndarray:
        total = np.zeros(len(completions), dtype=np.float64)
        if self.function is not None:
            values = self.function(
                [last_user_turn(p) for p in prompts],
                completions,
                references=[r or None for r in references],
                finished=finished,
                **self.kwargs,
            )
            try:
                values = np.asarray([float(v) for v in values], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"the reward function returned something that is not a list of numbers ({exc})",
                    field="rl.reward_function",
                ) from None
            if values.shape != total.shape:
                raise ConfigError(
                    f"the reward function returned {len(values)} rewards for {len(total)} completions",
                    field="rl.reward_function",
                    hint="return one number per completion",
                )
            total += values
        if self.model is not None:
            total += self.model.problem.score(self.model.model, prompts, completions)
        return total


@dataclass
class Rollout:
    """Completions sampled for one batch of prompts, with what the updates on them need."""

    key: tuple[int, ...]
    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, position_ids, labels of prompt + completion
    mask: torch.Tensor  # [sequences, completion tokens]: which completion positions are real
    old_logps: torch.Tensor | None  # [tokens]: log-probabilities when sampled (None: reuse the current ones)
    ref_logps: torch.Tensor | None  # [tokens]
    advantages: torch.Tensor  # [tokens]
    returns: torch.Tensor | None  # [tokens] (ppo)
    old_values: torch.Tensor | None  # [tokens] (ppo)
    rewards: np.ndarray
    lengths: np.ndarray
    uses: int = 0


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates ``[sequences, tokens]`` (0 past each sequence's end; terminal value 0)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(running)
    for t in reversed(range(rewards.shape[1])):
        live = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * live
        advantages[:, t] = running
        next_value = values[:, t] * live
    return advantages


def group_advantages(rewards: torch.Tensor, group: int, scale: bool) -> torch.Tensor:
    """GRPO: each reward minus its group's mean, over the group's std when ``scale`` (groups are consecutive)."""
    grouped = rewards.view(-1, group)  # [prompts, generations]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return centred.reshape(-1)


class RLProblem(ReferenceModel, CausalLMProblem):
    """A causal LM trained on its own sampled completions toward a reward."""

    name: ClassVar[str] = "rl"
    stratify = False
    loss_growth_guard = False  # a policy-gradient surrogate hovers around 0: its growth means nothing
    # Loads the reward run (rl.reward_model). Problems sit below the module that loads runs, so whoever builds the
    # problem gives it: tunelab.infer.model.build_run_problem.
    load_run: Callable[..., Any] | None = None

    def __init__(self, cfg: Any, tokenizer: Any):
        super().__init__(cfg, tokenizer)
        self.rewarder: Rewarder | None = None
        self.batch_repeats = cfg.rl.num_iterations
        self.value_head: torch.nn.Module | None = None
        self._rollout: Rollout | None = None
        self._stats: dict[str, float] = {}

    # ------------------------------------------------------------------ data
    def encode(self, example: dict[str, Any], builder: SplitBuilder, row: int, record: Record) -> None:
        messages = example["messages"]
        if not messages or messages[-1]["role"] not in ("user", "tool"):
            raise record.error("an rl prompt must end with a user message", hint="give prompt rows")
        ids = self.renderer.prompt_ids(messages)
        builder.add(
            ids,
            row,
            prompt_json=json.dumps(messages, ensure_ascii=False),
            reference=example.get("reference") or "",
            prompt_length=len(ids),
            answer_length=0,
            truncated=False,
            ends_eos=True,
            empty=not messages[-1]["content"].strip(),
        )

    def collate(
        self, split: EncodedSplit, indices: list[Any], train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        batch = pad_left([split.ids(i) for i in indices], self.tokenizer.pad_token_id)
        batch["prompt_index"] = torch.as_tensor(list(indices), dtype=torch.long)
        batch["num_trained"] = torch.tensor(len(indices) * self.cfg.rl.num_generations)  # completions
        return batch

    def attach(self, model: Any, data: Any) -> None:
        """Load the reward, remember the training prompts and, for ppo, give the policy a value head."""
        device = next(model.parameters()).device
        self.rewarder = Rewarder(self.cfg, device, self.load_run)
        self.train_split = data.train
        if self.cfg.rl.algorithm == "ppo" and self.value_head is None:
            hidden = model.get_input_embeddings().weight.shape[1]
            self.value_head = torch.nn.Linear(hidden, 1).to(device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            model.value_head = self.value_head  # a submodule: trained, checkpointed and resumed with the adapter

    # ------------------------------------------------------------------ sampling
    def _prompts_of(self, split: EncodedSplit, indices: list[int]) -> tuple[list[Any], list[str]]:
        prompts = [json.loads(str(split.meta["prompt_json"][i])) for i in indices]
        return prompts, [str(split.meta["reference"][i]) for i in indices]

    @torch.no_grad()
    def _sample(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, list]:
        """Sampled completions of every prompt: the inputs of prompt + completion, the completion mask ``[sequences,
        new tokens]`` (up to and including the first EOS) and whether each completion ended with EOS."""
        rl, g = self.cfg.rl, self.cfg.rl.num_generations
        prompt_ids = batch["input_ids"].repeat_interleave(g, dim=0)
        prompt_mask = batch["attention_mask"].repeat_interleave(g, dim=0)
        kwargs = generation_kwargs(self.cfg.prediction, self.tokenizer, model)
        eos = torch.tensor(kwargs["eos_token_id"], device=prompt_ids.device)
        was_training = model.training
        model.eval()
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            temperature=rl.temperature,
            top_p=rl.top_p,
            top_k=0,
            max_new_tokens=rl.max_new_tokens,
            min_new_tokens=1,
            pad_token_id=kwargs["pad_token_id"],
            eos_token_id=kwargs["eos_token_id"],
            use_cache=True,
        )
        model.train(was_training)
        completion = out[:, prompt_ids.shape[1] :]  # [sequences, new tokens]
        is_eos = torch.isin(completion, eos)
        # Real tokens: up to and including the first EOS.
        ended_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        mask = ~ended_before
        full_mask = torch.cat([prompt_mask, mask.long()], dim=1)
        labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), completion.masked_fill(~mask, IGNORE_INDEX)], 1)
        inputs = {
            "input_ids": torch.cat([prompt_ids, completion.masked_fill(~mask, kwargs["pad_token_id"])], dim=1),
            "attention_mask": full_mask,
            "position_ids": (full_mask.cumsum(dim=1) - 1).masked_fill(full_mask == 0, 0),
            "labels": labels,
        }
        return inputs, mask, is_eos.any(dim=1).tolist()

    def _token_states(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """(final hidden states, or logits without a plain head; the head or None; targets) at completion tokens."""
        labels = inputs["labels"][:, 1:]
        trained = labels != IGNORE_INDEX
        forward = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")}
        fast = _head_fast_path(model)
        if fast is None:
            logits = model(**forward, use_cache=False).logits
            return logits[:, logits.shape[1] - labels.shape[1] - 1 : -1][trained], None, labels[trained]
        decoder, head = fast
        hidden = decoder(**forward, use_cache=False).last_hidden_state
        return hidden[:, :-1][trained], head, labels[trained]

    def _logps(self, states: torch.Tensor, head: Any, targets: torch.Tensor) -> torch.Tensor:
        if head is None:
            return -torch.nn.functional.cross_entropy(states.float(), targets, reduction="none")
        return -token_cross_entropy(states, head, targets)

    @torch.no_grad()
    def _entropy(self, states: torch.Tensor, head: Any) -> float:
        total, count = 0.0, 0
        for start in range(0, states.shape[0], 256):
            logits = (states[start : start + 256] if head is None else head(states[start : start + 256])).float()
            logp = torch.log_softmax(logits, dim=-1)
            total += float(-(logp.exp() * logp).sum())
            count += logits.shape[0]
        return total / max(count, 1)

    @torch.no_grad()
    def _rollout_for(self, model: Any, batch: dict[str, torch.Tensor]) -> Rollout:
        """The batch's rollout: sampled now, or reused for the ``num_iterations`` updates of the same prompts."""
        key = tuple(batch["prompt_index"].tolist())
        if self._rollout is not None and self._rollout.key == key and self._rollout.uses < self.batch_repeats:
            return self._rollout
        rl, g = self.cfg.rl, self.cfg.rl.num_generations
        inputs, mask, finished = self._sample(model, batch)
        prompts, references = self._prompts_of(self.train_split, [i for i in key for _ in range(g)])
        lengths = mask.sum(dim=1)
        completions = inputs["input_ids"][:, -mask.shape[1] :]
        texts = [
            self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            for row, n in zip(completions, lengths.tolist())
        ]
        assert self.rewarder is not None
        rewards = self.rewarder(prompts, texts, references, finished)
        was_training = model.training
        model.eval()  # the log-probabilities of the sampling policy: no dropout
        states, head, targets = self._token_states(model, inputs)
        old = self._logps(states, head, targets) if self.batch_repeats > 1 or rl.algorithm == "ppo" else None
        ref = None
        if rl.kl_coef > 0:
            with self.reference_model(model) as reference:
                ref = self._logps(*self._token_states(reference, inputs))
        score = torch.as_tensor(rewards, dtype=torch.float32, device=states.device)
        returns = old_values = None
        if rl.algorithm == "grpo":
            per_sequence = group_advantages(score, g, rl.scale_rewards)
            advantages = per_sequence.repeat_interleave(lengths.to(per_sequence.device))
        else:
            assert self.value_head is not None and old is not None
            old_values = self.value_head(states.float()).squeeze(-1)  # [tokens]
            token_rewards = torch.zeros(mask.shape, dtype=torch.float32, device=states.device)
            if ref is not None:
                token_rewards[mask] = -rl.kl_coef * (old - ref)
            last = (lengths - 1).clamp(min=0).to(states.device)
            token_rewards[torch.arange(mask.shape[0], device=states.device), last] += score
            values_2d = torch.zeros_like(token_rewards)
            values_2d[mask] = old_values
            adv_2d = gae(token_rewards, values_2d, mask.to(states.device), rl.gamma, rl.gae_lambda)
            advantages = adv_2d[mask]
            returns = advantages + old_values
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        model.train(was_training)
        self._rollout = Rollout(
            key, inputs, mask, old, ref, advantages, returns, old_values, rewards, lengths.cpu().numpy()
        )
        return self._rollout

    # ------------------------------------------------------------------ loss
    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipped surrogate (+ KL or value loss), a mean over each completion's tokens, summed over completions."""
        rl = self.cfg.rl
        rollout = self._rollout_for(model, batch)
        rollout.uses += 1
        # No dropout, so the log-probabilities trained on are those the completions were sampled with.
        was_training = model.training
        model.eval()
        states, head, targets = self._token_states(model, rollout.inputs)
        logps = self._logps(states, head, targets)
        model.train(was_training)
        old = rollout.old_logps if rollout.old_logps is not None else logps.detach()
        ratio = torch.exp(logps - old)
        clipped = ratio.clamp(1 - rl.clip_range, 1 + rl.clip_range)
        per_token = -torch.minimum(ratio * rollout.advantages, clipped * rollout.advantages)
        stats: dict[str, float] = {}
        if rl.algorithm == "grpo" and rollout.ref_logps is not None:
            log_ratio = rollout.ref_logps - logps
            kl = torch.exp(log_ratio) - log_ratio - 1  # k3: unbiased, always >= 0
            per_token = per_token + rl.kl_coef * kl
            stats["kl"] = float(kl.detach().mean())
        elif rollout.ref_logps is not None:
            stats["kl"] = float((old - rollout.ref_logps).mean())
        if rl.algorithm == "ppo":
            assert self.value_head is not None and rollout.returns is not None and rollout.old_values is not None
            values = self.value_head(states.float()).squeeze(-1)
            kept = rollout.old_values + (values - rollout.old_values).clamp(-rl.value_clip, rl.value_clip)
            value_loss = 0.5 * torch.maximum((values - rollout.returns) ** 2, (kept - rollout.returns) ** 2)
            per_token = per_token + rl.value_coef * value_loss
            stats["value_loss"] = float(value_loss.detach().mean())
        lengths = torch.as_tensor(rollout.lengths, device=per_token.device)
        sequence = torch.repeat_interleave(torch.arange(len(lengths), device=per_token.device), lengths)
        sums = torch.zeros(len(lengths), device=per_token.device).index_add(0, sequence, per_token.float())
        loss = (sums / lengths.clamp(min=1)).sum()
        if rollout.uses == 1:  # the rollout's own numbers once, its update numbers at every use
            stats.update(
                reward=float(np.mean(rollout.rewards)),
                reward_std=float(np.std(rollout.rewards)),
                response_length=float(np.mean(rollout.lengths)),
            )
        stats.update(
            clip_fraction=float(((ratio - 1).abs() > rl.clip_range).float().mean()),
            entropy=self._entropy(states.detach(), head),
        )
        self._stats = stats
        return loss, torch.tensor(len(lengths))

    def pop_stats(self) -> dict[str, float]:
        """Training statistics of the last loss call (logged with the step)."""
        stats, self._stats = self._stats, {}
        return stats

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, model: Any, split: EncodedSplit, examples: list[dict[str, Any]], generate: bool = True
    ) -> EvalResult:
        """Greedy completions of the validation prompts and their mean reward."""
        prediction = self.cfg.prediction.model_copy(
            update={"max_length_inference": self.cfg.rl.max_new_tokens, "do_sample": False}
        )
        prompts, references = self._prompts_of(split, list(range(len(split))))
        answers = generate_batched(
            model, self.tokenizer, [split.ids(i) for i in range(len(split))], prediction, self.inference_batch_size()
        )
        if self.rewarder is None:
            self.rewarder = Rewarder(self.cfg, next(model.parameters()).device, self.load_run)
        lengths = [len(self.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
        finished = [n < self.cfg.rl.max_new_tokens for n in lengths]
        rewards = self.rewarder(prompts, answers, references, finished)
        metrics = {
            "reward": float(np.mean(rewards)) if len(rewards) else math.nan,
            "response_length": float(np.mean(lengths)) if lengths else math.nan,
        }
        rows = [
            {"prompt": last_user_turn(p), "reference": r, "prediction": a, "score": float(s)}
            for p, r, a, s in zip(prompts, references, answers, rewards)
        ]
        return EvalResult(metrics, rows)


def rl_rules(cfg: RunConfig) -> list[tuple[str, str]]:
    """The rules of online RL: a reward, enough completions per prompt for GRPO, a causal LM, no packing."""
    found, rl = [], cfg.rl
    if not (rl.reward_function or rl.reward_model):
        found.append(("rl.reward_function", "rl needs a reward: set rl.reward_function and/or rl.reward_model"))
    if rl.reward_function and not CUSTOM_METRIC.match(rl.reward_function):
        found.append(("rl.reward_function", f"'{rl.reward_function}' is not 'module:function'"))
    if rl.algorithm == "grpo" and rl.num_generations < 2:
        found.append(("rl.num_generations", "grpo compares completions of one prompt: use at least 2"))
    if cfg.training.packing:
        found.append(("training.packing", "rl trains on sampled completions and cannot pack them"))
    if rl.algorithm == "ppo" and cfg.training.adapter in ("prefix_tuning", "prompt_tuning"):
        found.append(("training.adapter", "ppo's value head reads hidden states, which soft prompts hide"))
    if backbone_model_type(cfg.llm_backbone) in ENCODER_MODEL_TYPES:
        found.append(("llm_backbone", "rl tunes a causal LM (e.g. smollm2-135m-instruct); this is an encoder"))
    return found


def _completions(cfg: RunConfig) -> int:
    return cfg.rl.num_generations


def _reference(cfg: RunConfig) -> Reference:
    return "model" if cfg.rl.kl_coef > 0 else "none"


def _sampling(cfg: RunConfig) -> Sampling:
    return Sampling(cfg.rl.num_generations, cfg.rl.max_new_tokens, cfg.rl.reward_model)


SPEC = register_spec(
    ProblemSpec(
        name="rl",
        summary="online RL: sampled completions scored by a reward function or model, GRPO or PPO",
        build=RLProblem,
        data_kinds=("prompt", "conversation", "pair", "stepwise"),
        default_format="columns",
        metrics=("Reward", "Response_Length"),
        lower_is_better=("kl", "value_loss"),
        losses=("ClippedPolicy",),  # GRPO or PPO: rl.algorithm
        rules=rl_rules,
        generative=True,
        shown_kinds=("prompt", "stepwise"),
        # rl needs a reward to validate; inspecting data renders prompts only, so any reward will do.
        inspect_overrides=("rl.reward_function=tunelab.rewards:length_reward",),
        sequences_per_row=_completions,
        reference=_reference,
        sampling=_sampling,
        endpoints=("chat", "completions"),
        exports=("adapter", "merged", "gguf"),
        rows_layout="answers",
        score_note=" Score: the reward of the greedy answer.",
    )
)
