"""Reward models and DPO-family preference tuning on tiny models: losses, references, metrics, runs."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import TunelabError


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory):
    """48 preference pairs: the chosen answer is always the polite one, in HH's whole-dialogue form for half."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(48):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            question = f"what is {a} and {b}?"
            good, bad = f"{a} and {b} is {a + b}", "no"
            if i % 2:
                fh.write(json.dumps({"prompt": question, "chosen": good, "rejected": bad}) + "\n")
            else:
                head = f"\n\nHuman: {question}\n\nAssistant:"
                fh.write(json.dumps({"chosen": f"{head} {good}", "rejected": f"{head} {bad}"}) + "\n")
    return path


def pair_config(model, data, out, problem_type, **sections):
    cfg = {
        "problem_type": problem_type,
        "llm_backbone": str(model),
        "output_directory": str(out),
        "experiment_name": problem_type,
        "dataset": {"train_dataframe": str(data), "prompt_column": ["prompt"], "validation_size": 8},
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 2},
        "environment": {"seed": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return load_config(base=cfg)


# ---------------------------------------------------------------------------------------------- losses
def _logps():
    torch.manual_seed(0)
    policy = (torch.randn(6), torch.randn(6))
    reference = (torch.randn(6), torch.randn(6))
    lengths = (torch.full((6,), 4), torch.full((6,), 5))
    return policy, reference, lengths


def test_dpo_sigmoid_loss_matches_the_formula():
    from tunelab.problems.preference import preference_losses

    policy, reference, lengths = _logps()
    losses, chosen, rejected = preference_losses("sigmoid", policy, reference, lengths, beta=0.1)
    h = 0.1 * ((policy[0] - reference[0]) - (policy[1] - reference[1]))
    assert torch.allclose(losses, -torch.nn.functional.logsigmoid(h))
    assert torch.allclose(chosen - rejected, h)
    smoothed, _, _ = preference_losses("sigmoid", policy, reference, lengths, beta=0.1, label_smoothing=0.2)
    assert torch.allclose(smoothed, -0.8 * torch.nn.functional.logsigmoid(h) - 0.2 * torch.nn.functional.logsigmoid(-h))


def test_ipo_hinge_simpo_orpo_losses():
    from tunelab.problems.preference import preference_losses

    policy, reference, lengths = _logps()
    ipo, _, _ = preference_losses("ipo", policy, reference, lengths, beta=0.5)
    gap = (policy[0] - reference[0]) / 4 - (policy[1] - reference[1]) / 5
    assert torch.allclose(ipo, (gap - 1.0) ** 2)
    hinge, _, _ = preference_losses("hinge", policy, reference, lengths, beta=0.5)
    assert torch.allclose(hinge, torch.relu(1 - 0.5 * ((policy[0] - reference[0]) - (policy[1] - reference[1]))))
    simpo, c, r = preference_losses("simpo", policy, None, lengths, beta=2.0, gamma=0.5)
    assert torch.allclose(simpo, -torch.nn.functional.logsigmoid(2.0 * (policy[0] / 4 - policy[1] / 5) - 0.5))
    assert torch.allclose(c, 2.0 * policy[0] / 4)
    # ORPO on log-probabilities below 0: finite, and lower when the chosen answer is likelier.
    good = (torch.tensor([-1.0]), torch.tensor([-8.0]))
    bad = (torch.tensor([-8.0]), torch.tensor([-1.0]))
    ones = (torch.tensor([4]), torch.tensor([4]))
    orpo_good, _, _ = preference_losses("orpo", good, None, ones, beta=0.1)
    orpo_bad, _, _ = preference_losses("orpo", bad, None, ones, beta=0.1)
    assert torch.isfinite(orpo_good).all() and orpo_good.item() < orpo_bad.item()


def test_pairwise_accuracy_counts_ties_half():
    import numpy as np

    from tunelab.problems.pairs import pairwise_accuracy

    assert pairwise_accuracy(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0])) == pytest.approx(0.5)
    assert pairwise_accuracy(np.zeros(4), np.zeros(4)) == 0.5


def test_token_cross_entropy_gradients_match_the_plain_ones():
    from tunelab.models.fused_loss import token_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30, bias=False).requires_grad_(False)
    hidden = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 30, (11,))
    weights = torch.randn(11)
    (torch.nn.functional.cross_entropy(head(hidden), targets, reduction="none") * weights).sum().backward()
    expected = hidden.grad.clone()
    hidden.grad = None
    got = token_cross_entropy(hidden, head, targets, chunk=4)
    (got * weights).sum().backward()
    assert torch.allclose(hidden.grad, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- config
def test_config_rules_for_pairs(tiny_bert, tiny_llama, tmp_path, pairs_jsonl):
    with pytest.raises(TunelabError, match="training.packing"):
        pair_config(tiny_llama, pairs_jsonl, tmp_path, "dpo", training={"packing": True})
    with pytest.raises(TunelabError, match="precompute_reference"):
        pair_config(
            tiny_llama,
            pairs_jsonl,
            tmp_path,
            "dpo",
            training={"preference_loss": "simpo", "precompute_reference": True},
        )
    with pytest.raises(TunelabError, match="encoder"):
        pair_config(tiny_bert, pairs_jsonl, tmp_path, "dpo")
    cfg = pair_config(tiny_bert, pairs_jsonl, tmp_path, "reward")
    assert cfg.prediction.metric == "Pairwise_Accuracy" and cfg.training.loss_function == "BradleyTerry"


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def reward_run(tiny_bert, pairs_jsonl, tmp_path_factory):
    """A reward model trained on the pairs (tiny BERT, full fine-tune of the head and LoRA)."""
    from tunelab.training.loop import train

    out = tmp_path_factory.mktemp("reward")
    cfg = pair_config(
        tiny_bert,
        pairs_jsonl,
        out,
        "reward",
        training={"epochs": 4, "learning_rate": 5e-3},
        dataset={"answer_column": "answer"},  # what `tunelab predict` scores in prompt + answer rows
    )
    return train(cfg)


def test_reward_model_learns_the_preference(reward_run, tmp_path):
    from tunelab.api import predict_file

    before, after = reward_run.metrics["before"], reward_run.metrics["after"]
    assert after["pairwise_accuracy"] == 1.0 and after["mean_margin"] > before["mean_margin"] + 0.1
    assert after["loss"] < before["loss"]
    report = (reward_run.run_dir / "report.html").read_text(encoding="utf-8")
    assert all(title in report for title in ("chosen", "rejected", "margin before", "margin after"))
    # Score a file: a prompt + answer row gets one reward; a preference row gets both and the preferred one.
    rows = tmp_path / "score.jsonl"
    rows.write_text(
        json.dumps({"prompt": "what is 1 and 2?", "answer": "1 and 2 is 3"})
        + "\n"
        + json.dumps({"prompt": "what is 2 and 2?", "chosen": "no", "rejected": "2 and 2 is 4"})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "scores.jsonl"
    assert predict_file(reward_run.run_dir, rows, out) == 2
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert isinstance(scored[0]["reward"], float)
    assert scored[1]["preferred"] == "rejected" and scored[1]["rejected_reward"] > scored[1]["chosen_reward"]


def test_reward_run_serves_scores(reward_run):
    import httpx
    from test_serve import running

    from tunelab.infer.model import load_run
    from tunelab.infer.serve import build_server

    server, sock = build_server(reward_run.run_dir, port=0, device="cpu", log_level="warning")
    reference = load_run(reward_run.run_dir, device="cpu")
    prompt = [{"role": "user", "content": "what is 3 and 4?"}]
    expected = reference.problem.score(reference.model, [prompt, prompt], ["3 and 4 is 7", "no"])
    with running(server, sock) as url:
        body = {"prompt": "what is 3 and 4?", "responses": ["3 and 4 is 7", "no"]}
        reply = httpx.post(f"{url}/v1/score", json=body, timeout=30).json()
        scores = [item["score"] for item in reply["data"]]
        assert scores == pytest.approx(list(expected), abs=1e-5) and scores[0] > scores[1]
        messages = {"prompt": prompt, "responses": "no"}
        assert httpx.post(f"{url}/v1/score", json=messages, timeout=30).json()["data"][0]["score"] == pytest.approx(
            scores[1], abs=1e-5
        )
        wrong = httpx.post(f"{url}/v1/chat/completions", json={"messages": prompt}, timeout=30)
        assert wrong.status_code == 400 and "/v1/score" in wrong.json()["error"]["message"]
        empty = httpx.post(f"{url}/v1/score", json={"prompt": "x", "responses": []}, timeout=30)
        assert empty.status_code == 400


def test_reward_model_on_a_decoder_with_lora(tiny_llama, tmp_path, pairs_jsonl, monkeypatch):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = pair_config(tiny_llama, pairs_jsonl, tmp_path / "out", "reward", training={"epochs": 4, "lora_r": 4})
    result = train(cfg)
    assert result.metrics["after"]["pairwise_accuracy"] >= 0.875
    assert result.trainable_share < 0.5


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "simpo", "orpo"])
def test_dpo_raises_reward_accuracy(tiny_llama, tmp_path, pairs_jsonl, monkeypatch, loss):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    beta = {"simpo": 2.0, "ipo": 0.5}.get(loss, 0.5)
    cfg = pair_config(
        tiny_llama, pairs_jsonl, tmp_path / "out", "dpo", training={"preference_loss": loss, "beta": beta}
    )
    result = train(cfg)
    before, after = result.metrics["before"], result.metrics["after"]
    if loss not in ("simpo", "orpo"):
        # Before training the policy is the reference: every implicit reward is 0, a tie, accuracy 0.5.
        assert before["reward_accuracy"] == 0.5 and before["reward_margin"] == 0.0
    assert after["reward_accuracy"] >= before["reward_accuracy"] + 0.25
    assert after["reward_margin"] > before["reward_margin"]
    assert after["chosen_logps"] > before["chosen_logps"]


def test_dpo_reference_is_the_disabled_adapter_and_precompute_agrees(tiny_llama, tmp_path, pairs_jsonl, monkeypatch):
    """LoRA: the reference log-probs equal the base model's; the precomputed table equals the live reference."""
    from tunelab.data.pipeline import build_splits
    from tunelab.models.load import load_tokenizer, resolve_backbone
    from tunelab.problems import build_problem
    from tunelab.training.setup import build_model

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = pair_config(tiny_llama, pairs_jsonl, tmp_path / "out", "dpo", training={"precompute_reference": True})
    problem = build_problem(cfg, load_tokenizer(resolve_backbone(cfg.llm_backbone)))
    data = build_splits(cfg, problem)
    model = build_model(cfg, problem, str(tiny_llama))
    with torch.no_grad():  # move the adapter away from the base model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = problem.collate(data.train, [0, 1, 2], train=False)
    live = problem.reference_logps(model, batch)
    base = build_model(
        cfg.model_copy(update={"training": cfg.training.model_copy(update={"adapter": "none"})}),
        problem,
        str(tiny_llama),
    )
    base_sums, _ = problem.sequence_logps(base.eval(), batch)
    assert torch.allclose(live, base_sums, atol=1e-5)
    policy, _ = problem.sequence_logps(model.eval(), batch)
    assert not torch.allclose(policy, live, atol=1e-3)  # the adapter matters, and was off for the reference
    problem.attach(model, data)
    assert torch.allclose(problem.reference_logps(model, batch), live, atol=1e-5)


def test_dpo_full_fine_tune_uses_a_frozen_copy(tiny_llama, tmp_path, pairs_jsonl, monkeypatch):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = pair_config(
        tiny_llama, pairs_jsonl, tmp_path / "out", "dpo", training={"adapter": "none", "learning_rate": 1e-3}
    )
    result = train(cfg)
    assert result.metrics["before"]["reward_accuracy"] == 0.5
    assert result.metrics["after"]["reward_accuracy"] > 0.7


def test_pairs_refused_for_non_pair_data(tiny_llama, tmp_path, qa_jsonl, monkeypatch):
    from tunelab.training.loop import train

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = pair_config(tiny_llama, qa_jsonl, tmp_path / "out", "dpo", dataset={"prompt_column": ["question"]})
    with pytest.raises(TunelabError, match="which dpo cannot train on; it suits problem_type causal_lm or rl"):
        train(cfg)
