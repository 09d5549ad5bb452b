"""Config checks that catch what will fail: the backbone is resolved, fields another field turns off are warned
about, typo suggestions stay in their section, float16 on a CPU is refused, metric_for_best takes logged names, and
warm-up is given in epochs, steps or as a ratio (one of them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import causal_config
from test_cli import assert_one_line_error, run

import tunelab
from tunelab.config import validate_config
from tunelab.errors import ConfigError, ModelError
from tunelab.models import load
from tunelab.models.load import accelerator_available, check_dtype_for_device, verify_backbone

needs_cpu_only = pytest.mark.skipif(accelerator_available(), reason="float16 is refused only without a GPU")


# ------------------------------------------------------------------------------------------ suggestions
@pytest.mark.parametrize(
    "path,suggested",
    [
        ("training.max_grad_norm", "training.gradient_clip"),  # the Trainer's name; was 'training.use_dora'
        ("training.clip_grad_norm", None),  # was 'training.simpo_gamma'
        ("training.grad_norm", None),  # was 'training.adapter'
        ("training.learning_rat", "training.learning_rate"),
        ("training.warmup_step", "training.warmup_steps"),
        ("dataset.prompt_col", "dataset.prompt_column"),
        ("prediction.temprature", "prediction.temperature"),
        ("trainng.epochs", "training"),  # a misspelt section
        ("lora_r", "training.lora_r"),
    ],
)
def test_unknown_field_suggestions_come_from_the_same_section(path, suggested):
    section, _, leaf = path.rpartition(".")
    data = {section: {leaf: 1}} if section else {leaf: 1}
    with pytest.raises(ConfigError) as err:
        validate_config(data)
    text = str(err.value)
    if suggested:
        assert f"did you mean '{suggested}'?" in text
    else:
        assert "did you mean" not in text and "docs/config.md" in text


# ------------------------------------------------------------------------------------------ disabled fields
def _warned(data: dict) -> dict[str, str]:
    return dict(validate_config(data).warnings())


def test_fields_turned_off_by_another_field_are_warnings(tmp_path, tiny_llama, qa_jsonl):
    off = {"dataset": {"mask_prompt_labels": False}, "augmentation": {"token_mask_probability": 0.2}}
    assert "mask_prompt_labels" in _warned(off)["augmentation.token_mask_probability"]
    assert "augmentation.token_mask_probability" not in _warned({"augmentation": {"token_mask_probability": 0.2}})
    warned = _warned(
        {
            "training": {"adapter": "none", "lora_r": 4, "max_steps": 5, "epochs": 3, "num_virtual_tokens": 8},
            "architecture": {"quantization": "fp4"},
        }
    )
    assert {"training.lora_r", "training.epochs", "training.num_virtual_tokens", "architecture.quantization"} <= set(
        warned
    )
    assert _warned({}) == {} and _warned({"training": {"adapter": "lora", "lora_r": 4}}) == {}
    # config validate reports them and still passes
    cfg = causal_config(tiny_llama, qa_jsonl, tmp_path / "out")
    cfg["dataset"]["mask_prompt_labels"] = False
    cfg["augmentation"] = {"token_mask_probability": 0.1}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run("config", "validate", path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "augmentation.token_mask_probability" in warnings[0]


# ------------------------------------------------------------------------------------------ backbone
def test_config_validate_resolves_local_backbones(tiny_llama, qa_jsonl, tmp_path):
    assert "local folder" in verify_backbone(str(tiny_llama)) and "(llama)" in verify_backbone(str(tiny_llama))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_llama / "config.json", no_weights)
    with pytest.raises(ModelError, match="no weights"):
        verify_backbone(str(no_weights))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "*.txt"))
    with pytest.raises(ModelError, match="no tokenizer files"):
        verify_backbone(str(no_tokenizer))
    fake = tmp_path / "model.gguf"
    fake.write_text("not a gguf")
    # through the CLI: one line, exit 2 (config validate said 'valid' for all three before)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(causal_config(tiny_llama, qa_jsonl, tmp_path / "out")))
    for backbone, needle in ((no_weights, "no weights"), (no_tokenizer, "no tokenizer"), (fake, "not a GGUF file")):
        assert_one_line_error(run("config", "validate", config, "--set", f"llm_backbone={backbone}"), needle)


def test_config_validate_says_a_hub_id_could_not_be_checked_offline(tiny_llama, qa_jsonl, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(causal_config(tiny_llama, qa_jsonl, tmp_path / "out")))
    proc = run("config", "validate", config, "--set", "llm_backbone=some-org/some-model")
    assert proc.returncode == 0, proc.stderr
    assert "some-org/some-model: could not be checked (offline" in proc.stdout


def test_a_hub_id_is_looked_up_with_the_network(monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    asked = []

    def missing(self, repo_id, **kwargs):
        asked.append((repo_id, kwargs.get("revision")))
        response = httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise RepositoryNotFoundError("404 Client Error", response=response)

    monkeypatch.setattr(HfApi, "model_info", missing)
    with pytest.raises(ModelError, match="no such model on the hub"):
        verify_backbone("some-org/not-there@v1")
    assert asked == [("some-org/not-there", "v1")]
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kwargs: object())
    assert "found on the hub" in verify_backbone("some-org/there")

    def unreachable(self, repo_id, **kwargs):
        raise httpx.ConnectError("no route")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    assert "could not be checked (the hub could not be reached" in verify_backbone("some-org/there")


# ------------------------------------------------------------------------------------------ float16 on a CPU
@needs_cpu_only
def test_float16_on_a_cpu_is_an_error_naming_the_alternatives(tiny_llama, qa_jsonl, tmp_path):
    config = tmp_path / "c.yaml"
    data = causal_config(tiny_llama, qa_jsonl, tmp_path / "out", architecture={"backbone_dtype": "float16"})
    config.write_text(yaml.safe_dump(data))
    line = assert_one_line_error(run("config", "validate", config), "architecture.backbone_dtype", "float32")
    assert ("bfloat16" in line) == load.cpu_has_bf16()
    assert_one_line_error(run("train", config), "architecture.backbone_dtype", "float16")
    assert not (tmp_path / "out").exists()  # refused before any run directory is made


def test_float16_is_accepted_where_there_is_a_gpu(monkeypatch):
    cfg = validate_config({"architecture": {"backbone_dtype": "float16"}})
    monkeypatch.setattr(load, "accelerator_available", lambda: True)
    check_dtype_for_device(cfg.architecture)
    monkeypatch.setattr(load, "accelerator_available", lambda: False)
    with pytest.raises(ConfigError, match="float16"):
        check_dtype_for_device(cfg.architecture)
    check_dtype_for_device(validate_config({"architecture": {"backbone_dtype": "bfloat16"}}).architecture)


# ------------------------------------------------------------------------------------------ metric_for_best
@pytest.mark.parametrize("name,key", [("eval_loss", "loss"), ("val_loss", "loss"), ("eval_bleu", "bleu")])
def test_metric_for_best_takes_logged_names(name, key):
    cfg = validate_config({"training": {"metric_for_best": name}})
    assert cfg.best_metric() == key


def test_metric_for_best_is_computed_even_when_not_a_configured_metric(tiny_llama, qa_jsonl, tmp_path):
    cfg = causal_config(
        tiny_llama,
        qa_jsonl,
        tmp_path / "out",
        training={"max_steps": 2, "metric_for_best": "eval_rouge_l", "evaluate_before_training": False},
        prediction={"max_length_inference": 2},
    )
    result = tunelab.train(cfg)
    assert "rouge_l" in result.metrics["after"]  # BLEU alone was computed, so no checkpoint could be 'best'


# ------------------------------------------------------------------------------------------ warm-up
def test_warm_up_is_given_one_way_only():
    with pytest.raises(ConfigError, match="warm-up is given twice"):
        validate_config({"training": {"warmup_steps": 3, "warmup_epochs": 0.5}})


def _learning_rates(tiny_llama, qa_jsonl, tmp_path, name, **training):
    cfg = causal_config(
        tiny_llama,
        qa_jsonl,
        tmp_path / name,
        training={
            "max_steps": 6,
            "batch_size": 8,  # 32 training rows (40, less duplicates and 5 for validation): 4 steps per epoch
            "logging_steps": 1,
            "schedule": "Constant",
            "evaluate_before_training": False,
            "evaluation_epochs": 100,
            **training,
        },
        prediction={"max_length_inference": 2},
    )
    run_dir = tunelab.train(cfg).run_dir
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["learning_rate"] for r in records if "learning_rate" in r]


def test_warm_up_in_steps_ratio_or_epochs_gives_the_same_schedule(tiny_llama, qa_jsonl, tmp_path):
    steps = _learning_rates(tiny_llama, qa_jsonl, tmp_path, "steps", warmup_steps=3)
    ratio = _learning_rates(tiny_llama, qa_jsonl, tmp_path, "ratio", warmup_ratio=0.5)
    epochs = _learning_rates(tiny_llama, qa_jsonl, tmp_path, "epochs", warmup_epochs=0.75)
    plain = _learning_rates(tiny_llama, qa_jsonl, tmp_path, "plain")
    assert steps == pytest.approx(ratio) and steps == pytest.approx(epochs)
    assert len(steps) == 6 and steps[0] < steps[1] < steps[2] == steps[5]
    assert plain == pytest.approx([steps[5]] * 6)
