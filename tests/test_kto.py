"""KTO on tiny models: the loss against a hand computation, unpaired and paired data, weights, held-out pairs."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch
from conftest import ASSETS
from test_preference import pair_config, pairs_jsonl  # noqa: F401  (the 48 polite-answer pairs fixture)

from tunelab.config import load_config
from tunelab.errors import ConfigError


@pytest.fixture(scope="session")
def unpaired_jsonl(tmp_path_factory):
    """40 unpaired answers (TRL's shape): the correct sum is desirable, "no" undesirable; 3 in 4 are undesirable."""
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("data") / "unpaired.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(40):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            good = i % 4 == 0
            answer = f"{a} and {b} is {a + b}" if good else "no"
            fh.write(json.dumps({"prompt": f"what is {a} and {b}?", "completion": answer, "label": good}) + "\n")
    return path


def kto_config(model, data, out, **sections):
    return pair_config(model, data, out, "kto", **sections)


# ---------------------------------------------------------------------------------------------- the loss
def test_kto_loss_matches_a_hand_computation():
    from tunelab.problems.kto import kto_losses

    policy, reference = torch.tensor([-3.0, -5.0, -2.0]), torch.tensor([-4.0, -4.0, -2.5])
    policy_kl, reference_kl = torch.tensor([-6.0, -7.0, -8.0]), torch.tensor([-6.5, -7.5, -8.0])
    desirable = torch.tensor([1.0, 0.0, 0.0])
    losses, rewards, z0 = kto_losses(policy, reference, policy_kl, reference_kl, desirable, 0.5, 2.0, 0.5)
    # z0 = mean(0.5, 0.5, 0) = 1/3; log-ratios 1, -1, 0.5.
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [
        2.0 * (1 - sig(0.5 * (1 - 1 / 3))),  # desirable, weight 2: 1 - sigmoid(beta (logratio - z0))
        0.5 * (1 - sig(0.5 * (1 / 3 + 1))),  # undesirable, weight 0.5: 1 - sigmoid(beta (z0 - logratio))
        0.5 * (1 - sig(0.5 * (1 / 3 - 0.5))),
    ]
    assert torch.allclose(losses, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(rewards, torch.tensor([0.5, -0.5, 0.25])) and math.isclose(float(z0), 1 / 3, rel_tol=1e-6)
    # The reference point is clamped at 0 and carries no gradient; the rewards carry none either.
    policy.requires_grad_(True)
    policy_kl = torch.tensor([-9.0, -9.0, -9.0], requires_grad=True)
    losses, rewards, z0 = kto_losses(policy, reference, policy_kl, reference_kl, desirable, 0.5)
    assert float(z0) == 0.0 and not z0.requires_grad and not rewards.requires_grad
    losses.sum().backward()
    assert policy_kl.grad is None and policy.grad[0] < 0 < policy.grad[1]  # desirable pushed up, undesirable down
    # No mismatched sequences (a batch of one row): z0 = 0.
    _, _, z0 = kto_losses(policy, reference, torch.zeros(0), torch.zeros(0), desirable, 0.5)
    assert float(z0) == 0.0


def test_kto_batch_pairs_each_prompt_with_the_previous_rows_answer(tiny_llama, tmp_path, unpaired_jsonl, monkeypatch):
    from tunelab.data.pipeline import build_splits
    from tunelab.data.prompts import IGNORE_INDEX
    from tunelab.models.load import load_tokenizer, resolve_backbone
    from tunelab.problems import build_problem

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = kto_config(tiny_llama, unpaired_jsonl, tmp_path / "out")
    tok = load_tokenizer(resolve_backbone(cfg.llm_backbone))
    problem = build_problem(cfg, tok)
    data = build_splits(cfg, problem)
    batch = problem.collate(data.train, [0, 1, 2], train=True)
    assert batch["input_ids"].shape[0] == 6 and int(batch["num_trained"]) == 3  # 3 answers, 3 mismatched

    def text(row, trained):
        keep = (batch["labels"][row] != IGNORE_INDEX) == trained
        keep &= batch["attention_mask"][row] == 1
        return tok.decode(batch["input_ids"][row][keep])

    for k in range(3):
        assert text(3 + k, True) == text((k - 1) % 3, True)  # row k-1's answer ...
        assert text(3 + k, False) == text(k, False)  # ... after row k's prompt
    labels = [json.loads(line)["label"] for line in unpaired_jsonl.read_text().splitlines()]
    train_labels = [labels[int(r) - 1] for r in data.train.rows[:3]]
    assert batch["desirable"].tolist() == [float(x) for x in train_labels]


# ---------------------------------------------------------------------------------------------- training
def test_kto_trains_on_unpaired_data_and_logs_its_reference_point(tiny_llama, tmp_path, unpaired_jsonl, monkeypatch):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = kto_config(tiny_llama, unpaired_jsonl, tmp_path / "out", training={"max_steps": 2, "logging_steps": 1})
    result = train(cfg)
    before, after = result.metrics["before"], result.metrics["after"]
    # Before training the policy is the reference: every reward is 0, KL 0, every sign a tie.
    assert before["reward_accuracy"] == 0.5 and before["kl"] == 0.0 and before["desirable_reward"] == 0.0
    assert {"reward_accuracy", "reward_margin", "desirable_reward", "undesirable_reward", "kl"} <= set(after)
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logged if "kl" in row]
    assert len(steps) >= 2 and all(row["kl"] >= 0 for row in steps), logged


def test_kto_on_pairs_uses_one_answer_per_prompt_and_raises_held_out_reward_accuracy(
    tiny_llama,
    tmp_path,
    pairs_jsonl,  # noqa: F811  (the fixture imported above)
    monkeypatch,
):
    from tunelab.data.pipeline import build_splits
    from tunelab.models.load import load_tokenizer, resolve_backbone
    from tunelab.problems import build_problem
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = kto_config(tiny_llama, pairs_jsonl, tmp_path / "out", training={"epochs": 3, "beta": 0.5})
    problem = build_problem(cfg, load_tokenizer(resolve_backbone(cfg.llm_backbone)))
    data = build_splits(cfg, problem)
    rows = list(range(len(data.train)))
    first = problem.collate(data.train, rows, train=True)
    again = problem.collate(data.train, rows, train=True)
    assert int(first["num_trained"]) == len(rows)  # one answer per pair, the same one every epoch
    assert torch.equal(first["desirable"], again["desirable"]) and 0.25 < float(first["desirable"].mean()) < 0.75
    held = problem.collate(data.validation, [0, 1], train=False)
    assert held["kind"].tolist() == [0, 1, 0, 1]  # validation pairs keep both answers

    result = train(cfg)
    before, after = result.metrics["before"], result.metrics["after"]
    assert before["reward_accuracy"] == 0.5 and before["reward_margin"] == 0.0
    assert after["reward_accuracy"] >= 0.75, after
    assert after["desirable_reward"] > after["undesirable_reward"]
    with open(result.run_dir / "validation_predictions.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and all(row["margin"] for row in rows)


def test_weights_balance_unbalanced_data(tiny_llama, tmp_path, unpaired_jsonl, monkeypatch):
    """3 undesirable answers per desirable one: weighting the desirable ones up raises their share of the loss and
    of the gradient, exactly by the weight."""
    from tunelab.data.pipeline import build_splits
    from tunelab.models.load import load_tokenizer, resolve_backbone
    from tunelab.problems import build_problem
    from tunelab.training.setup import build_model

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    losses = {}
    for weight in (1.0, 3.0):
        cfg = kto_config(tiny_llama, unpaired_jsonl, tmp_path / "out", training={"desirable_weight": weight})
        problem = build_problem(cfg, load_tokenizer(resolve_backbone(cfg.llm_backbone)))
        data = build_splits(cfg, problem)
        torch.manual_seed(0)
        model = build_model(cfg, problem, str(tiny_llama))
        with torch.no_grad():  # move the adapter away from the reference, so rewards are not all 0
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        batch = problem.collate(data.train, list(range(len(data.train))), train=True)
        losses[weight] = (problem._losses(model, batch)[0].detach(), batch["desirable"])
    (plain, good), (weighted, _) = losses[1.0], losses[3.0]
    assert 0.15 < float(good.mean()) < 0.35  # the data is unbalanced
    assert torch.allclose(weighted[good == 1], 3 * plain[good == 1], atol=1e-5)
    assert torch.allclose(weighted[good == 0], plain[good == 0], atol=1e-5)


def test_unpaired_validation_reports_rewards_by_label(tiny_llama, tmp_path, unpaired_jsonl, monkeypatch):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = kto_config(
        tiny_llama,
        unpaired_jsonl,
        tmp_path / "out",
        dataset={"validation_size": 12},
        training={"epochs": 4, "beta": 0.5, "desirable_weight": 3.0},
    )
    result = train(cfg)
    after = result.metrics["after"]
    # With no pairs, reward accuracy is the share of answers whose reward has its label's sign.
    assert after["reward_accuracy"] >= 0.75 and after["desirable_reward"] > 0 > after["undesirable_reward"], after


@pytest.mark.parametrize(
    "name", ["trl_unpaired_preference_standard.jsonl", "trl_unpaired_preference_conversational.jsonl"]
)
def test_the_unpaired_fixtures_now_train(name, tiny_llama, tmp_path, monkeypatch):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    data = {
        "problem_type": "kto",
        "llm_backbone": str(tiny_llama),
        "output_directory": str(tmp_path / "out"),
        "dataset": {"train_dataframe": str(ASSETS / "shapes" / name), "validation_size": 4},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3},
        "environment": {"seed": 1},
    }
    result = train(load_config(base=data))
    assert result.metrics["after"]["reward_accuracy"] == result.metrics["after"]["reward_accuracy"]


def test_kto_config_rules(tiny_bert, tiny_llama, tmp_path, unpaired_jsonl):
    with pytest.raises(ConfigError) as err:
        kto_config(
            tiny_bert,
            unpaired_jsonl,
            tmp_path,
            training={"batch_size": 1, "precompute_reference": True, "label_smoothing": 0.1},
        )
    for needle in ("encoder", "reference point", "runs during training", "not kto"):
        assert needle in str(err.value), needle
    with pytest.raises(ConfigError, match="unpaired preference rows or pairs"):
        kto_config(tiny_llama, unpaired_jsonl, tmp_path, dataset={"format": "messages"})
