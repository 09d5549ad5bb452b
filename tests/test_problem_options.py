"""A problem type declares its own config fields (``ProblemSpec.options``): written in the training section, validated
against the run's problem type, documented, read typed, saved and loaded with the run."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import yaml
from pydantic import Field, ValidationError

from tunelab.config import (
    all_field_paths,
    commented_yaml,
    config_reference_markdown,
    load_config,
    save_config,
    validate_config,
)
from tunelab.errors import ConfigError
from tunelab.problem_spec import SPECS, ProblemOptions, register_spec, spec_of, starter_config


class ToyOptions(ProblemOptions):
    toy_weight: float = Field(1.0, gt=0, le=10, description="toy: how much the toy loss weighs.")
    toy_mode: str = Field("plain", description="toy: which toy loss.")


@pytest.fixture
def toy():
    """A problem type 'toyopt' (causal_lm's behaviour) with its own options, registered for one test."""
    spec = dataclasses.replace(spec_of("causal_lm"), name="toyopt", summary="a toy with options", options=ToyOptions)
    register_spec(spec)
    yield spec
    del SPECS._items["toyopt"]


def _error(data: dict, text: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        validate_config(data, "c.yaml", text)
    return err.value


def test_options_are_validated_and_read_typed(toy):
    cfg = validate_config({"problem_type": "toyopt", "training": {"toy_weight": 2.5, "learning_rate": 2e-4}})
    options = ToyOptions.of(cfg)
    assert options.toy_weight == 2.5 and options.toy_mode == "plain"
    assert cfg.problem_options is options
    assert cfg.training.learning_rate == 2e-4


def test_unset_options_take_their_defaults(toy):
    cfg = validate_config({"problem_type": "toyopt"})
    assert ToyOptions.of(cfg).toy_weight == 1.0
    assert cfg.to_dict()["training"]["toy_weight"] == 1.0  # saved with the run like every other field


def test_a_type_without_options_has_none(toy):
    cfg = validate_config({"problem_type": "causal_lm"})
    assert cfg.problem_options is None
    assert "toy_weight" not in cfg.to_dict()["training"]
    with pytest.raises(TypeError, match="not the options of problem_type causal_lm"):
        ToyOptions.of(cfg)


def test_wrong_type_names_the_option(toy):
    err = _error({"problem_type": "toyopt", "training": {"toy_weight": "heavy"}})
    assert err.field == "training.toy_weight"
    assert "'heavy'" in str(err)


def test_out_of_bounds_names_the_option(toy):
    err = _error({"problem_type": "toyopt", "training": {"toy_weight": 11}})
    assert err.field == "training.toy_weight"
    assert "less than or equal to 10" in str(err)


def test_another_types_option_is_named_as_such(toy):
    text = "problem_type: dpo\ntraining:\n  toy_weight: 2.0\n"
    err = _error(yaml.safe_load(text), text)
    assert err.field == "training.toy_weight" and err.line_no == 3
    assert err.what == "a toyopt option; this run's problem_type is dpo"


def test_typo_of_an_option_suggests_it(toy):
    err = _error({"problem_type": "toyopt", "training": {"toy_wieght": 2.0}})
    assert err.field == "training.toy_wieght"
    assert "unknown field (did you mean 'training.toy_weight'?)" in str(err)


def test_ordinary_typos_are_reported_as_before(toy):
    err = _error({"problem_type": "toyopt", "training": {"learning_rat": 0.1}})
    assert err.what == "unknown field (did you mean 'training.learning_rate'?)"


def test_every_problem_of_the_section_is_reported_at_once(toy):
    data = {"problem_type": "toyopt", "training": {"learning_rate": 0, "toy_weight": -1, "learning_rat": 1}}
    err = _error(data)
    assert err.what.startswith("3 problems: ")
    for path in ("training.learning_rate", "training.toy_weight", "training.learning_rat"):
        assert path in err.what
    err = _error({"problem_type": "dpo", "training": {"learning_rate": 0, "toy_weight": 1}})
    assert err.what.startswith("2 problems: ") and "a toyopt option" in err.what


def test_unknown_problem_type_does_not_report_options(toy):
    err = _error({"problem_type": "toyopz", "training": {"toy_weight": 2.0}})
    assert err.field == "problem_type" and "did you mean 'toyopt'" in str(err)


def test_docs_list_options_in_the_training_section(toy):
    text = config_reference_markdown()
    training = text.split("## training", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in training.splitlines() if line.startswith("| `training.toy_weight` "))
    cells = [
        "`training.toy_weight`",
        "`1.0`",
        "float (> 0, ≤ 10)",
        "(problem_type: toyopt) toy: how much the toy loss weighs.",
    ]
    assert row == "| " + " | ".join(cells) + " |"
    assert "training.toy_weight" in all_field_paths()  # a tune search space may name it


def test_config_init_writes_the_options(toy):
    cfg = load_config(base=starter_config("toyopt"))
    text = commented_yaml(cfg)
    assert "# toy: how much the toy loss weighs.\n  toy_weight: 1.0" in text
    assert validate_config(yaml.safe_load(text)).problem_options == ToyOptions()
    assert "toy_weight" not in commented_yaml(load_config(base=starter_config("causal_lm")))


def test_saved_config_round_trips(toy, tmp_path):
    cfg = load_config(base={"problem_type": "toyopt"}, overrides=["training.toy_weight=3", "training.toy_mode=odd"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert ToyOptions.of(again) == ToyOptions(toy_weight=3, toy_mode="odd")
    assert again.to_dict() == cfg.to_dict()
    assert ToyOptions.of(pickle.loads(pickle.dumps(cfg))).toy_weight == 3  # data-loader workers get a copy
    assert ToyOptions.of(cfg.model_copy(deep=True)).toy_weight == 3


def test_options_assignment_is_validated(toy):
    cfg = validate_config({"problem_type": "toyopt"})
    with pytest.raises(ValidationError):
        ToyOptions.of(cfg).toy_weight = -1


def test_an_option_may_not_shadow_a_training_field():
    class Shadow(ProblemOptions):
        beta: float = 0.5

    spec = dataclasses.replace(spec_of("causal_lm"), name="shadow", options=Shadow)
    with pytest.raises(ValueError, match="option 'beta' is already a field of the training section"):
        register_spec(spec)
    assert "shadow" not in SPECS.names()


def test_studio_form_shows_options_for_their_type_only(toy):
    from tunelab.ui.form import check_values, default_values, form_schema

    training = next(g for g in form_schema()["groups"] if g["name"] == "training")
    row = next(f for f in training["fields"] if f["path"] == "training.toy_weight")
    assert row["problem_types"] == ["toyopt"] and row["default"] == "1.0"
    assert default_values("toyopt")["training.toy_weight"] == "1.0"
    cfg, problems = check_values({"problem_type": "toyopt", "training.toy_weight": "4"}, "out")
    assert not problems and ToyOptions.of(cfg).toy_weight == 4
    # The row is hidden for another type: a value left from switching types is not sent to the config.
    cfg, problems = check_values({"problem_type": "causal_lm", "training.toy_weight": "4"}, "out")
    assert not problems and cfg.problem_options is None
    cfg, problems = check_values({"problem_type": "toyopt", "training.toy_weight": "-1"}, "out")
    assert problems[0]["field"] == "training.toy_weight"


def test_importers_may_set_an_option(toy):
    from tunelab.importers.common import Mapper

    m = Mapper({}, "src.yaml")
    assert m.set("training.toy_weight", 2.0, "toy_w")
    assert not m.set("training.toy_weight", -2.0, "toy_w2")
    assert m.data["training"] == {"toy_weight": 2.0}
    assert "does not fit tunelab's training.toy_weight" in m.left_out[0][1]
