"""tunelab config import: LLaMA-Factory, Axolotl and H2O LLM Studio configs (their own documented examples, in
tests/assets/imports) become valid tunelab configs, with every field left out listed; bad input ends in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASSETS

from tunelab.config import load_config
from tunelab.data.formats import check_file
from tunelab.importers import import_config

IMPORTS = ASSETS / "imports"
TUNELAB = str(Path(sys.executable).parent / "tunelab")


def tunelab(*args, cwd):
    return subprocess.run([TUNELAB, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def imported(source: Path, tmp_path: Path, *extra):
    """Run the real CLI on ``source`` from ``tmp_path``; the written config, loaded (and so validated) again."""
    out = tmp_path / "imported.yaml"
    proc = tunelab("config", "import", source, "--output", out, *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return load_config(out), proc.stdout


def left_out(source: Path, **kwargs) -> set[str]:
    return {key for key, _ in import_config(source, **kwargs).left_out}


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_llamafactory_lora_sft(tmp_path, monkeypatch):
    source = IMPORTS / "llamafactory" / "llama3_lora_sft.yaml"
    cfg, stdout = imported(source, tmp_path)
    assert cfg.problem_type == "causal_lm" and cfg.llm_backbone == "meta-llama/Meta-Llama-3-8B-Instruct"
    t = cfg.training
    assert (t.adapter, t.lora_r, t.lora_alpha, t.lora_dropout, t.lora_target_modules) == ("lora", 8, 16, 0.0, "")
    assert (t.batch_size, t.grad_accumulation, t.learning_rate, t.epochs) == (1, 8, 1e-4, 3)
    assert (t.schedule, t.warmup_ratio, t.logging_steps, t.save_steps, t.gradient_clip) == ("Cosine", 0.1, 10, 500, 1)
    assert cfg.dataset.chat_template == "llama3" and cfg.dataset.format == "alpaca" and cfg.dataset.data_sample == 1000
    assert cfg.tokenizer.max_length == cfg.tokenizer.max_length_prompt == cfg.tokenizer.max_length_answer == 2048
    assert (cfg.output_directory, cfg.experiment_name) == ("saves/llama3-8b/lora", "sft")
    assert cfg.environment.mixed_precision is True and cfg.environment.seed == 42
    assert cfg.architecture.gradient_checkpointing is True  # LLaMA-Factory's default
    # dataset: names in data/dataset_info.json next to the YAML (the working directory has none)
    data = IMPORTS / "llamafactory" / "data"
    assert cfg.dataset.train_dataframe == [str(data / "identity.json"), str(data / "alpaca_en_demo.json")]
    assert "relative to the YAML's folder" in stdout
    rows, fmt = check_file(cfg.dataset.train_dataframe, cfg)
    assert (rows, fmt) == (6, "alpaca")
    assert left_out(source) == {
        "trust_remote_code",
        "overwrite_cache",
        "preprocessing_num_workers",
        "plot_loss",
        "overwrite_output_dir",
        "ddp_timeout",
    }
    # run from LLaMA-Factory's own folder: dataset_dir is relative to the working directory, paths come out relative
    shutil.copytree(data, tmp_path / "data")
    cfg, stdout = imported(source, tmp_path, "--force")
    assert cfg.dataset.train_dataframe == ["data/identity.json", "data/alpaca_en_demo.json"]
    assert "relative to the working directory" in stdout


def test_llamafactory_dpo_with_sharegpt_pairs(tmp_path):
    source = tmp_path / "llama3_lora_dpo.yaml"
    text = (IMPORTS / "llamafactory" / "llama3_lora_sft.yaml").read_text()
    text = text.replace("stage: sft", "stage: dpo\npref_beta: 0.1\npref_loss: sigmoid")
    source.write_text(text.replace("identity,alpaca_en_demo", "dpo_en_demo").replace("1.0e-4", "5.0e-6"))
    shutil.copytree(IMPORTS / "llamafactory" / "data", tmp_path / "data")
    cfg, _ = imported(source, tmp_path)
    assert cfg.problem_type == "dpo" and cfg.training.preference_loss == "sigmoid" and cfg.training.beta == 0.1
    ds = cfg.dataset
    assert (ds.format, ds.prompt_column, ds.chosen_column, ds.rejected_column) == (
        "preference",
        ("conversations",),
        "chosen",
        "rejected",
    )
    assert ds.train_dataframe == "data/dpo_en_demo.json" and cfg.training.learning_rate == 5e-6


def test_axolotl_lora_8b(tmp_path):
    source = IMPORTS / "axolotl" / "lora-8b.yml"
    cfg, _ = imported(source, tmp_path)
    assert cfg.problem_type == "causal_lm" and cfg.llm_backbone == "NousResearch/Meta-Llama-3-8B"
    assert cfg.architecture.backbone_dtype == "int8" and cfg.architecture.gradient_checkpointing is True
    t = cfg.training
    assert (t.adapter, t.lora_r, t.lora_alpha, t.lora_dropout, t.lora_target_modules) == ("lora", 32, 16, 0.05, "")
    assert (t.batch_size, t.grad_accumulation, t.epochs, t.learning_rate, t.optimizer) == (2, 4, 4, 2e-4, "AdamW8bit")
    assert (t.schedule, t.warmup_ratio, t.packing, t.logging_steps) == ("Cosine", 0.1, True, 1)
    assert (t.evaluation_epochs, t.save_epochs, t.gradient_clip) == (0.25, 1.0, 1.0)
    ds = cfg.dataset
    assert (ds.train_dataframe, ds.format, ds.validation_size) == ("mhenrichsen/alpaca_2k_test", "alpaca", 0.05)
    assert cfg.tokenizer.max_length == cfg.tokenizer.max_length_prompt == 4096
    assert cfg.environment.mixed_precision == "auto"
    assert (cfg.output_directory, cfg.experiment_name) == ("outputs", "lora-out")
    assert left_out(source) == {
        "model_type",
        "tokenizer_type",
        "special_tokens",
        "lora_modules_to_save",
        "flash_attention",
    }


def test_axolotl_qlora_dpo_and_chat_template(tmp_path):
    source = tmp_path / "dpo.yml"
    source.write_text(
        "base_model: meta-llama/Meta-Llama-3-8B-Instruct\nload_in_4bit: true\nadapter: qlora\nrl: dpo\nrl_beta: 0.2\n"
        "chat_template: llama3\ndatasets:\n  - path: fozziethebeat/alpaca_messages_2k_dpo_test\n"
        "    type: chat_template.default\n    field_messages: conversation\n    field_chosen: chosen\n"
        "    field_rejected: rejected\n    split: train\nlora_target_modules: [q_proj, v_proj]\nnum_epochs: 1\n"
        "warmup_steps: 10\nlr_scheduler: rex\n"
    )
    result = import_config(source)
    cfg = result.config
    assert (cfg.problem_type, cfg.training.preference_loss, cfg.training.beta) == ("dpo", "sigmoid", 0.2)
    assert cfg.architecture.backbone_dtype == "int4" and cfg.training.adapter == "lora"
    assert cfg.dataset.train_dataframe == "fozziethebeat/alpaca_messages_2k_dpo_test@train"
    assert (cfg.dataset.format, cfg.dataset.prompt_column) == ("preference", ("conversation",))
    assert cfg.training.lora_target_modules == "q_proj,v_proj" and cfg.dataset.chat_template == "llama3"
    reasons = dict(result.left_out)
    assert set(reasons) == {"lr_scheduler"} and "rex" in reasons["lr_scheduler"] and cfg.training.warmup_steps == 10


def test_h2o_causal_lm_cfg(tmp_path):
    source = IMPORTS / "h2o" / "cfg.yaml"
    cfg, _ = imported(source, tmp_path)
    assert cfg.problem_type == "causal_lm" and cfg.llm_backbone == "h2oai/h2ogpt-4096-llama2-7b"
    assert (cfg.experiment_name, cfg.output_directory) == ("test-causal-language-modeling-oasst", "/tmp/output")
    ds = cfg.dataset
    assert (ds.format, ds.prompt_column, ds.answer_column, ds.system_column) == (
        "columns",
        ("instruction",),
        "output",
        "",
    )
    assert (ds.text_prompt_start, ds.text_answer_separator, ds.add_eos_token_to_system) == (
        "<|prompt|>",
        "<|answer|>",
        True,
    )
    assert (ds.data_sample, ds.data_sample_choice, ds.train_dataframe) == (
        0.01,
        ["train", "validation"],
        "/tmp/train_full.pq",
    )
    t = cfg.training
    assert (t.adapter, t.lora_r, t.lora_alpha, t.loss_function, t.evaluate_before_training) == (
        "lora",
        4,
        16,
        "CrossEntropy",
        False,
    )
    assert cfg.architecture.backbone_dtype == "int4" and cfg.prediction.metric == "Perplexity"
    assert cfg.prediction.repetition_penalty == 1.2 and cfg.tokenizer.max_length == 512
    assert left_out(source) == {
        "environment.gpus",
        "environment.trust_remote_code",
        "logging.neptune_project",
        "prediction.num_history",
    }


def test_h2o_chained_conversations_keep_their_options(tmp_path):
    text = (IMPORTS / "h2o" / "cfg.yaml").read_text()
    text = text.replace("parent_id_column: None", "parent_id_column: parent_id")
    text = text.replace("limit_chained_samples: false", "limit_chained_samples: true")
    text = text.replace("random_parent_probability: 0.0", "random_parent_probability: 0.2")
    text = text.replace("personalize: false", "personalize: true").replace("metric: Perplexity", "metric: GPT")
    source = tmp_path / "cfg.yaml"
    source.write_text(text)
    result = import_config(source)
    cfg = result.config
    assert (cfg.dataset.format, cfg.dataset.parent_id_column, cfg.dataset.limit_chained_samples) == (
        "h2o_multiturn",
        "parent_id",
        True,
    )
    assert cfg.augmentation.random_parent_probability == 0.2 and cfg.dataset.personalize is True
    assert "prediction.metric" in dict(result.left_out) and cfg.prediction.metric == "BLEU"  # tunelab's default


def test_from_forces_the_source(tmp_path):
    source = tmp_path / "tiny.yaml"
    source.write_text("learning_rate: 2e-4\nseed: 7\nlogging_steps: 5\n")  # keys every tool has
    with pytest.raises(Exception, match="cannot tell"):
        import_config(source)
    axolotl = import_config(source, source="axolotl").config
    assert (axolotl.training.learning_rate, axolotl.environment.seed, axolotl.training.logging_steps) == (2e-4, 7, 5)
    assert import_config(source, source="h2o").left_out == [
        (k, "no tunelab equivalent") for k in ("learning_rate", "seed", "logging_steps")
    ]


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "text, needles",
    [
        ("base_model: gpt2\n  bad: [indent\n", ("line 2", "not valid YAML")),
        ("- stage: sft\n- dataset: x\n", ("not a mapping",)),
        ("epochs: 3\nname: mine\n", ("cannot tell which tool", "--from")),
        ("problem_type: causal_lm\nllm_backbone: gpt2\n", ("already is a tunelab config",)),
        ("model_name_or_path: gpt2\nstage: kto\n", ("stage 'kto'", "field 'stage'")),
    ],
)
def test_bad_sources_end_in_one_line(tmp_path, text, needles):
    source = tmp_path / "source.yaml"
    source.write_text(text)
    proc = tunelab("config", "import", source, "--output", tmp_path / "out.yaml", cwd=tmp_path)
    assert_one_line_error(proc, "source.yaml", *needles)
    assert not (tmp_path / "out.yaml").exists()


def test_unknown_dataset_and_missing_dataset_info(tmp_path):
    source = tmp_path / "sft.yaml"
    source.write_text("model_name_or_path: gpt2\nstage: sft\ndataset: alpaca_en_demo,no_such_data\n")
    proc = tunelab("config", "import", source, "-o", "out.yaml", cwd=tmp_path)
    assert_one_line_error(proc, "dataset_info.json not found", "field 'dataset_dir'")
    shutil.copytree(IMPORTS / "llamafactory" / "data", tmp_path / "data")
    proc = tunelab("config", "import", source, "-o", "out.yaml", cwd=tmp_path)
    assert_one_line_error(proc, "dataset 'no_such_data' is not in", "alpaca_en_demo", "field 'dataset'")


def test_output_is_kept_without_force_and_from_is_checked(tmp_path):
    out = tmp_path / "out.yaml"
    out.write_text("mine: true\n")
    source = IMPORTS / "axolotl" / "lora-8b.yml"
    assert_one_line_error(tunelab("config", "import", source, "-o", out, cwd=tmp_path), "already exists", "--force")
    assert out.read_text() == "mine: true\n"
    bogus = tunelab("config", "import", source, "-o", tmp_path / "new.yaml", "--from", "ludwig", cwd=tmp_path)
    assert_one_line_error(bogus, "unknown source 'ludwig'")
    assert tunelab("config", "import", source, "-o", out, "--force", cwd=tmp_path).returncode == 0
    assert load_config(out).training.lora_r == 32
