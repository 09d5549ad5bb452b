"""Online RL (GRPO and PPO) on a tiny model: advantages, rewards, the loop's statistics and a rising reward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import TunelabError

DIGIT_REWARD = '''
def digits(prompts, completions, finished=None, weight=1.0, **kwargs):
    """The share of the completion's characters that are digits (a random tiny model writes a few)."""
    return [weight * sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
'''


@pytest.fixture()
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(DIGIT_REWARD, encoding="utf-8")
    return path


def rl_config(model, data, out, reward, **sections):
    cfg = {
        "problem_type": "rl",
        "llm_backbone": str(model),
        "output_directory": str(out),
        "experiment_name": "rl",
        "dataset": {"train_dataframe": str(data), "prompt_column": ["question"], "validation_size": 4},
        "training": {
            "epochs": 1,
            "max_steps": 12,
            "batch_size": 4,
            "learning_rate": 3e-2,
            "logging_steps": 1,
            "evaluation_epochs": 100,
        },
        "rl": {
            "reward_function": f"{reward}:digits",
            "num_generations": 4,
            "max_new_tokens": 12,
            "reward_kwargs": {"weight": 1.0},
        },
        "environment": {"seed": 3},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return load_config(base=cfg)


def test_group_advantages_are_centred_per_prompt():
    from tunelab.problems.rl import group_advantages

    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0])
    adv = group_advantages(rewards, 4, scale=False)
    assert torch.allclose(adv[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.allclose(adv[4:], torch.zeros(4))  # all equal: no signal
    scaled = group_advantages(rewards, 4, scale=True)
    assert torch.allclose(scaled[:4] * (rewards[:4].std() + 1e-4), adv[:4], atol=1e-6)


def test_gae_matches_the_recursion():
    from tunelab.problems.rl import gae

    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.0], [0.4, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    got = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0, by hand: terminal value 0 after the third token.
    d2 = 1.0 - 0.3
    d1 = 0.0 + 0.9 * 0.3 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.1
    a2, a1 = d2, d1 + 0.72 * d2
    assert torch.allclose(got[0], torch.tensor([d0 + 0.72 * a1, a1, a2, 0.0]))
    assert torch.allclose(got[1], torch.tensor([0.5 - 0.4, 0.0, 0.0, 0.0]))


def test_example_reward_functions():
    from tunelab.rewards import exact_match_reward, format_reward, length_reward, number_in_range_reward

    assert length_reward([""] * 3, ["one two", "", "a b c d"], max_words=3, finished=[True, True, True]) == [1, 0, 0]
    assert length_reward([""], ["short"], finished=[False]) == [0.0]
    assert format_reward([""] * 2, ["Answer: 4", "it is 4"]) == [1.0, 0.0]
    assert exact_match_reward([""] * 2, ["The Paris.", "Rome"], references=["paris", None]) == [1.0, 0.0]
    assert number_in_range_reward([""] * 3, ["about 42 items", "-3", "none"], low=0, high=50) == [1.0, 0.0, 0.0]


def test_rl_config_rules(tiny_llama, tiny_bert, qa_jsonl, tmp_path, reward_file):
    with pytest.raises(TunelabError, match="rl needs a reward"):
        rl_config(tiny_llama, qa_jsonl, tmp_path, reward_file, rl={"reward_function": ""})
    with pytest.raises(TunelabError, match="num_generations"):
        rl_config(tiny_llama, qa_jsonl, tmp_path, reward_file, rl={"num_generations": 1})
    with pytest.raises(TunelabError, match="encoder"):
        rl_config(tiny_bert, qa_jsonl, tmp_path, reward_file)
    cfg = rl_config(tiny_llama, qa_jsonl, tmp_path, reward_file, rl={"algorithm": "ppo", "num_generations": 1})
    assert cfg.prediction.metric == "Reward"


def test_a_bad_reward_function_is_one_clear_error(tiny_llama, qa_jsonl, tmp_path, monkeypatch, reward_file):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = rl_config(tiny_llama, qa_jsonl, tmp_path / "out", reward_file, rl={"reward_function": "nowhere_xyz:fn"})
    with pytest.raises(TunelabError, match="rl.reward_function"):
        train(cfg)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_rl_reward_rises_and_statistics_are_logged(tiny_llama, qa_jsonl, tmp_path, monkeypatch, reward_file, algorithm):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    # A random tiny model's logits are nearly flat and LoRA cannot scale them up: train every weight. PPO's
    # per-token KL would outweigh this small reward: keep it light there.
    extra = {"algorithm": algorithm, "num_iterations": 2, "kl_coef": 0.001 if algorithm == "ppo" else 0.04}
    training = {"max_steps": 20, "adapter": "none", "learning_rate": 3e-2}
    cfg = rl_config(tiny_llama, qa_jsonl, tmp_path / "out", reward_file, rl=extra, training=training)
    result = train(cfg)
    records = [r for r in _records(result.run_dir) if "reward" in r]
    assert len(records) >= 8
    for key in ("reward", "reward_std", "kl", "clip_fraction", "entropy", "response_length"):
        assert all(np.isfinite(r[key]) for r in records if key in r), key
    first = np.mean([r["reward"] for r in records[:4]])
    last = np.mean([r["reward"] for r in records[-4:]])
    assert last > first + 0.1, (first, last)
    # Updates on reused completions move the ratio: the clipping acts on some of them.
    assert any(r["clip_fraction"] > 0 for r in _records(result.run_dir) if "clip_fraction" in r)
    if algorithm == "ppo":
        assert any("value_loss" in r for r in _records(result.run_dir))
    assert result.metrics["after"]["reward"] > result.metrics["before"]["reward"]
    report = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert 'alt="reward (higher is better)"' in report


def test_rl_from_a_finished_run_scored_by_a_reward_run(tiny_llama, qa_jsonl, tmp_path):
    """llm_backbone names a finished SFT run (merged once by models/, which loads its weights without infer/) and
    rl.reward_model a reward run (loaded by the run loader the training setup hands the problem)."""
    from conftest import causal_config
    from test_preference import pair_config

    from tunelab.training.loop import train

    sft = train(load_config(base=causal_config(tiny_llama, qa_jsonl, tmp_path / "sft", training={"max_steps": 2})))
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q{i}?", "chosen": f"{i} {i} {i}", "rejected": "no"} for i in range(16)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    reward = train(pair_config(tiny_llama, pairs, tmp_path / "reward", "reward", training={"max_steps": 2}))
    cfg = rl_config(
        sft.run_dir,
        qa_jsonl,
        tmp_path / "rl",
        "unused",
        rl={"reward_function": "", "reward_model": str(reward.run_dir)},
        training={"max_steps": 2},
    )
    result = train(cfg)
    assert np.isfinite(result.metrics["after"]["reward"])
    assert json.loads((result.run_dir / "run.json").read_text())["status"] == "finished"
