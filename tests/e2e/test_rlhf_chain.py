"""The RLHF chain of examples/rlhf from YAML only: SFT run -> reward run -> RL run that uses both (shortened)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, shared_file
from test_real_models import metrics_of, tunelab

pytestmark = pytest.mark.e2e
EXAMPLES = REPO / "examples" / "rlhf"


def test_sft_reward_rl_chain_from_yaml(tmp_path):
    shared_file("hh_rlhf_harmless_test.jsonl.gz")
    out = tmp_path / "output"
    short = ["--set", f"output_directory={out}", "--set", "training.save_steps=0"]
    tunelab(
        "train", EXAMPLES / "sft.yaml", *short,
        "--set", "training.max_steps=2", "--set", "dataset.validation_size=6", "--set", "dataset.data_sample=32",
        "--set", "prediction.max_length_inference=8", cwd=REPO,
    )  # fmt: skip
    tunelab(
        "train", EXAMPLES / "reward.yaml", *short,
        "--set", "training.max_steps=2", "--set", "dataset.validation_size=6", "--set", "dataset.data_sample=32",
        cwd=REPO,
    )  # fmt: skip
    # The RL config names the two runs by their directories; here they live under the test's output folder.
    tunelab(
        "train", EXAMPLES / "rl.yaml", *short,
        "--set", f"llm_backbone={out / 'rlhf-sft'}", "--set", f"rl.reward_model={out / 'rlhf-reward'}",
        "--set", "training.max_steps=2", "--set", "dataset.validation_size=4", "--set", "dataset.data_sample=4",
        "--set", "rl.max_new_tokens=8", "--set", "rl.num_generations=2", cwd=REPO,
    )  # fmt: skip
    rl = out / "rlhf-rl"
    info = json.loads((rl / "run.json").read_text())
    assert info["status"] == "finished"
    assert "run-rlhf-sft" in info["backbone_source"]  # the SFT run, merged into its base weights, is the policy
    records = [json.loads(line) for line in (rl / "metrics.jsonl").read_text().splitlines()]
    stepped = [r for r in records if "reward" in r]
    assert len(stepped) == 2 and all({"kl", "clip_fraction", "entropy", "response_length"} <= set(r) for r in stepped)
    assert "reward" in metrics_of(rl)["after"]
    reward = metrics_of(out / "rlhf-reward")["after"]
    assert 0.0 <= reward["pairwise_accuracy"] <= 1.0 and "mean_margin" in reward
    assert (rl / "report.html").is_file()
