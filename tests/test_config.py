"""The config schema: defaults, bounds, errors that point at the problem, YAML round trip, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.config import (
    RunConfig,
    apply_overrides,
    commented_yaml,
    config_reference_markdown,
    dump_yaml,
    load_config,
    validate_config,
)
from tunelab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_follow_h2o_names_and_values():
    cfg = RunConfig()
    assert cfg.dataset.validation_size == 0.01
    assert cfg.dataset.prompt_column == ("instruction",)
    assert cfg.dataset.answer_column == "output"
    assert cfg.dataset.mask_prompt_labels is True
    assert cfg.tokenizer.max_length == 256
    assert cfg.training.lora_r == 8 and cfg.training.lora_alpha == 16
    assert cfg.training.max_steps == -1
    assert cfg.prediction.metric == "BLEU"
    assert cfg.environment.seed == -1


def test_problem_type_picks_default_metric():
    assert RunConfig(problem_type="classification").prediction.metric == "Accuracy"
    assert RunConfig(problem_type="causal_lm").prediction.metric == "BLEU"


def test_prompt_column_accepts_a_single_string():
    cfg = validate_config({"dataset": {"prompt_column": "question"}})
    assert cfg.dataset.prompt_column == ("question",)


def test_unknown_key_is_named_with_a_suggestion():
    text = "training:\n  learning_rat: 0.1\n"
    with pytest.raises(ConfigError) as err:
        validate_config(yaml.safe_load(text), "c.yaml", text)
    assert err.value.field == "training.learning_rat"
    assert err.value.line_no == 2
    assert "did you mean 'training.learning_rate'" in str(err.value)


def test_key_in_the_wrong_section_is_pointed_to_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'training.learning_rate'"):
        validate_config({"learning_rate": 0.1})


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError) as err:
        validate_config({"training": {"batch_size": "four"}}, "c.yaml")
    assert err.value.field == "training.batch_size"
    assert "'four'" in str(err.value)


@pytest.mark.parametrize(
    "section,field,value",
    [
        ("training", "learning_rate", 0),
        ("training", "batch_size", 0),
        ("tokenizer", "padding_quantile", 1.5),
        ("dataset", "validation_size", 0),
        ("dataset", "validation_size", 2.5),
        ("training", "lora_dropout", 1.0),
        ("environment", "seed", -2),
        ("training", "optimizer", "Adamw"),
        ("training", "schedule", "cosine"),
    ],
)
def test_bounds_are_enforced(section, field, value):
    with pytest.raises(ConfigError) as err:
        validate_config({section: {field: value}})
    assert err.value.field == f"{section}.{field}"


def test_cross_field_rules_are_reported_together():
    with pytest.raises(ConfigError) as err:
        validate_config(
            {
                "problem_type": "classification",
                "prediction": {"metric": "BLEU"},
                "dataset": {"validation_strategy": "custom"},
            }
        )
    message = str(err.value)
    assert "2 problems" in message
    assert "prediction.metric" in message and "dataset.validation_dataframe" in message


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        base={
            "problem_type": "classification",
            "dataset": {"prompt_column": ["a", "b"]},
            "training": {"learning_rate": 3e-4, "adapter": "head_only"},
        }
    )
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg.to_dict()))
    assert load_config(path) == cfg


def test_commented_yaml_loads_back_to_the_same_config():
    cfg = RunConfig(problem_type="classification")
    text = commented_yaml(cfg)
    assert "# Peak learning rate." in text
    assert validate_config(yaml.safe_load(text)) == cfg


def test_overrides_parse_values_as_yaml():
    data = apply_overrides(
        {}, ["training.learning_rate=2e-4", "dataset.prompt_column=[a, b]", "llm_backbone=foo/bar", "training.epochs=3"]
    )
    cfg = validate_config(data)
    assert cfg.training.learning_rate == pytest.approx(2e-4)
    assert cfg.dataset.prompt_column == ("a", "b")
    assert cfg.llm_backbone == "foo/bar"
    assert cfg.training.epochs == 3


@pytest.mark.parametrize("override", ["nosection", "bogus.field=1", "a.b.c=1"])
def test_bad_overrides_fail_clearly(override):
    with pytest.raises(ConfigError):
        validate_config(apply_overrides({}, [override]))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


def test_experiment_name_must_be_a_safe_folder_name():
    with pytest.raises(ConfigError):
        validate_config({"experiment_name": "../escape"})


def test_docs_config_md_is_current():
    expected = config_reference_markdown()
    current = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert current == expected, "docs/config.md is stale: run `tunelab config docs`"


def test_every_field_has_a_description():
    from tunelab.config import SECTIONS

    for model in [RunConfig, *SECTIONS.values()]:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_shipped_examples_validate():
    from tunelab.tune import load_space

    files = sorted((REPO / "examples").rglob("*.yaml"))
    spaces = [p for p in files if "spaces" in p.parts]
    configs = [p for p in files if p not in spaces]
    assert configs and spaces, "no example configs found"
    for path in configs:
        load_config(path)
    for path in spaces:
        load_space(path)
