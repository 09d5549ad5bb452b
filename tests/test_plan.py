"""The planner's accounting: reference models, RL sampling, padding-free batches, chunked logits."""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.config import load_config


def _plan(model, data, tmp_path, problem_type="causal_lm", **sections):
    from tunelab.models.load import load_tokenizer, resolve_backbone
    from tunelab.plan import build_plan
    from tunelab.problems import build_problem

    base = {
        "problem_type": problem_type,
        "llm_backbone": str(model),
        "output_directory": str(tmp_path),
        "dataset": {"train_dataframe": str(data), "prompt_column": ["question"], "answer_column": "answer"},
        "training": {"batch_size": 4},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    cfg = load_config(base=base)
    source = resolve_backbone(cfg.llm_backbone)
    problem = build_problem(cfg, load_tokenizer(source))
    return build_plan(cfg, problem, source, 64, 16.0), cfg, problem


def test_dpo_reference_costs_nothing_with_lora_and_a_copy_without(tiny_llama, qa_jsonl, tmp_path):
    lora, _, _ = _plan(tiny_llama, qa_jsonl, tmp_path, "dpo")
    full, _, _ = _plan(tiny_llama, qa_jsonl, tmp_path, "dpo", training={"adapter": "none"})
    pre, _, _ = _plan(tiny_llama, qa_jsonl, tmp_path, "dpo", training={"adapter": "none", "precompute_reference": True})
    simpo, _, _ = _plan(tiny_llama, qa_jsonl, tmp_path, "dpo", training={"adapter": "none", "preference_loss": "simpo"})
    assert lora.reference == 0 and any("adapter switched off" in n for n in lora.notes)
    assert full.reference == full.parameters * 4  # a float32 frozen copy
    assert pre.reference == 0 and simpo.reference == 0
    # Pairs: two sequences per row, twice the activations of the same rows as SFT.
    sft, _, _ = _plan(tiny_llama, qa_jsonl, tmp_path)
    assert lora.activations == pytest.approx(2 * sft.activations, rel=0.01)


def test_rl_plans_the_sampling_memory(tiny_llama, qa_jsonl, tmp_path):
    rl = {"reward_function": "tunelab.rewards:length_reward", "num_generations": 4, "max_new_tokens": 32}
    plan, cfg, _ = _plan(tiny_llama, qa_jsonl, tmp_path, "rl", rl=rl)
    assert plan.generation >= 4 * 4 * (64 + 32) * 1  # the KV cache of 16 completions, at least
    more, _, _ = _plan(tiny_llama, qa_jsonl, tmp_path, "rl", rl={**rl, "num_generations": 8})
    assert more.generation > plan.generation and more.activations == pytest.approx(2 * plan.activations, rel=0.01)
    assert plan.total > plan.weights + plan.generation


def test_chunked_loss_bounds_the_logits(tiny_llama, qa_jsonl, tmp_path):
    chunked, _, _ = _plan(tiny_llama, qa_jsonl, tmp_path, training={"batch_size": 64})
    plain, _, _ = _plan(tiny_llama, qa_jsonl, tmp_path, training={"batch_size": 64, "chunked_loss": False})
    assert chunked.logits < plain.logits
    assert chunked.logits == 512 * 384 * 4 * 2


def test_padding_free_batches_are_planned_as_one_row_of_their_tokens(tiny_llama, qa_jsonl, tmp_path):
    from tunelab.plan import micro_batch_shape

    _, cfg, problem = _plan(tiny_llama, qa_jsonl, tmp_path)
    lengths = np.array([10, 20, 30, 40, 50, 60, 70, 80])
    rows, tokens = micro_batch_shape(cfg, problem, lengths)
    assert rows == 1 and tokens <= 80 + 70 + 60 + 50 and tokens >= 4 * 10
    _, padded_cfg, padded = _plan(tiny_llama, qa_jsonl, tmp_path, training={"padding_free": False})
    assert micro_batch_shape(padded_cfg, padded, lengths) == (4, 80)


def test_measured_steps_report_time_and_memory(tiny_llama, qa_jsonl, tmp_path):
    from conftest import causal_config

    from tunelab.training.measure import measure_steps

    measured = measure_steps(load_config(base=causal_config(tiny_llama, qa_jsonl, tmp_path)), steps=2)
    assert measured["steps"] == 2 and measured["step_seconds"] > 0 and measured["peak_bytes"] >= 0
