"""Exports: adapter and merged models with a parity check and a model card; refusals; push offline."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import causal_config, classification_config
from test_cli import TUNELAB, assert_one_line_error

from tunelab.config import load_config
from tunelab.infer.export import ExportError, export_run, push_export
from tunelab.training.loop import train


@pytest.fixture(scope="module")
def lora_run(tiny_llama, qa_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        base=causal_config(
            tiny_llama,
            qa_jsonl,
            out,
            training={"max_steps": 4, "use_dora": True},
            prediction={"max_length_inference": 4},
        )
    )
    return train(cfg).run_dir


def test_merged_export_matches_the_adapter(lora_run):
    folder, parity = export_run(lora_run, "merged")
    assert parity["passed"] and parity["greedy_matches"] == parity["prompts"] == 5
    assert parity["max_abs_logit_diff"] < 1e-4
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert (folder / "chat_template.jinja").is_file() or "chat_template" in (
        folder / "tokenizer_config.json"
    ).read_text()
    card = (folder / "README.md").read_text()
    assert "Parity check" in card and "lora" in card and "library_name: transformers" in card
    assert json.loads((folder / "parity.json").read_text())["passed"]
    with pytest.raises(ExportError, match="already exists"):
        export_run(lora_run, "merged")


def test_adapter_export_and_half_precision_merge(lora_run, tmp_path):
    folder, parity = export_run(lora_run, "adapter", out=tmp_path / "adapter")
    assert parity["passed"] and (folder / "adapter_config.json").is_file()
    _, half = export_run(lora_run, "merged", out=tmp_path / "bf16", dtype="bfloat16")
    assert half["max_abs_logit_diff"] <= half["tolerance"]


def test_classification_merge(tiny_bert, sentiment_csv, tmp_path):
    run = train(load_config(base=classification_config(tiny_bert, sentiment_csv, tmp_path, training={"max_steps": 3})))
    _, parity = export_run(run.run_dir, "merged")
    assert parity["passed"] and parity["labels_match"]


def test_prompt_tuning_cannot_be_merged(tiny_llama, qa_jsonl, tmp_path):
    run = train(
        load_config(
            base=causal_config(
                tiny_llama,
                qa_jsonl,
                tmp_path,
                training={"max_steps": 2, "adapter": "prompt_tuning", "num_virtual_tokens": 4},
                prediction={"max_length_inference": 2},
            )
        )
    )
    with pytest.raises(ExportError, match="cannot be merged"):
        export_run(run.run_dir, "merged")
    assert export_run(run.run_dir, "adapter")[1]["passed"]


def test_cli_export_and_push_offline(lora_run, tmp_path):
    proc = subprocess.run(
        [TUNELAB, "export", lora_run, "--format", "merged", "-o", tmp_path / "m"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "parity check passed" in proc.stdout, proc.stderr
    assert_one_line_error(
        subprocess.run([TUNELAB, "export", lora_run, "--format", "onnx"], capture_output=True, text=True),
        "unknown export format",
    )
    assert_one_line_error(
        subprocess.run([TUNELAB, "push", tmp_path / "m", "--repo-id", "me/x"], capture_output=True, text=True),
        "offline",
    )
    with pytest.raises(ExportError, match="not an export folder"):
        push_export(tmp_path, "me/x")


def test_gguf_export_of_a_lora_run(lora_run, tmp_path):
    folder, parity = export_run(lora_run, "gguf", out=tmp_path / "gguf", quant="f16")
    assert (folder / "model-f16.gguf").is_file() and (folder / "README.md").is_file()
    assert parity["top1_agreement"] == 1.0 and parity["passed"]
    assert parity["mean_kld"] <= parity["criteria"]["max_mean_kld"]
