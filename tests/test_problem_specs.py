"""Each problem type owns its knowledge: specs are complete; nothing outside problems/ asks for a type by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tunelab.config import RunConfig, load_config
from tunelab.data.shapes import FORMAT_KINDS, KIND_TITLES
from tunelab.errors import ConfigError
from tunelab.problem_spec import ENDPOINT_PATHS, all_specs, problem_types, spec_of, starter_config
from tunelab.problems.base import Problem

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"
OLD_LISTS = ("CAUSAL_LM_PROBLEMS", "PAIRWISE_PROBLEMS", "PROBLEM_DATA_KINDS", "PROBLEM_METRICS", "PROBLEM_LOSSES")
HOOKS = [name for name in vars(Problem) if not name.startswith("_") and callable(getattr(Problem, name))]


def _outside_problems() -> list[Path]:
    files = [p for p in SRC.rglob("*.py") if "problems" not in p.relative_to(SRC).parts]
    return files + sorted((SRC / "ui" / "static").glob("*.js"))


def _name_comparisons(text: str, names: list[str]) -> list[str]:
    """Comparisons of a quoted problem-type name: `x == "dpo"`, `"dpo" != x`, `x in ("dpo", ...)`, `[..].includes`.

    A comparison with a ``format`` (``dataset.format == "classification"``) names a data format, not a problem type.
    """
    quoted = "|".join(re.escape(n) for n in names)
    patterns = [
        rf"([\w.\[\]\"'()]+)\s*(?:==|!=|===|!==)\s*[\"']({quoted})[\"']",
        rf"[\"']({quoted})[\"']\s*(?:==|!=|===|!==)\s*([\w.]+)",
        rf"\bin\s*[(\[{{][^)\]}}]*[\"']({quoted})[\"']",
        rf"[\[(][^)\]]*[\"']({quoted})[\"'][^)\]]*[\])]\s*\.includes\(",
    ]
    found = []
    for line in text.splitlines():
        for pattern in patterns:
            for match in re.finditer(pattern, line):
                subject = match.group(1) if pattern is patterns[0] else match.group(2) if pattern is patterns[1] else ""
                if subject.endswith("format"):
                    continue
                found.append(line.strip())
    return found


def test_nothing_outside_problems_compares_problem_type_names():
    names = problem_types()
    offenders = []
    for path in _outside_problems():
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(SRC))
        for line in text.splitlines():
            if re.search(r"problem_type\s*(==|!=|===|!==|\bin\b|\bnot in\b)", line):
                offenders.append(f"{where}: {line.strip()}")
            offenders += [f"{where}: {line.strip()}" for name in OLD_LISTS if re.search(rf"\b{name}\b", line)]
        offenders += [f"{where}: {line}" for line in _name_comparisons(text, names)]
    assert not offenders, "ask the ProblemSpec instead of the name:\n" + "\n".join(offenders)


def test_the_grep_finds_what_it_looks_for():
    names = problem_types()
    assert _name_comparisons('if cfg.problem_type == "dpo":', names)
    assert _name_comparisons('elif kind in ("reward", "dpo"):', names)
    assert _name_comparisons('TL.canChat = (r) => ["causal_lm", "rl"].includes(r.problem_type);', names)
    assert _name_comparisons('if "rl" != problem:', names)
    assert not _name_comparisons('if detection.format != "classification":', names)
    assert not _name_comparisons('m.set("problem_type", "reward", "reward_model")', names)


@pytest.mark.parametrize("name", problem_types())
def test_every_spec_is_complete_and_consistent(name):
    spec = spec_of(name)
    assert spec.name == name and spec.summary
    assert spec.data_kinds and set(spec.data_kinds) <= set(KIND_TITLES)
    assert FORMAT_KINDS[spec.default_format] in spec.data_kinds, "the default format must produce a kind it accepts"
    assert spec.metrics and spec.losses
    assert {m.lower() for m in spec.lower_is_better} - {m.lower() for m in spec.metrics} <= {"kl", "value_loss"}
    assert set(spec.endpoints) <= set(ENDPOINT_PATHS)
    assert set(spec.exports) <= {"adapter", "merged", "gguf"} and "adapter" in spec.exports
    assert ("gguf" in spec.exports) <= spec.generative, "GGUF export is for causal LMs"
    assert spec.can_chat <= spec.generative
    assert set(spec.shown_kinds) <= set(spec.data_kinds)
    assert all(hasattr(spec.build, hook) for hook in HOOKS), "the problem class implements the Problem protocol"
    # Its starter config, with what inspecting needs, validates; the planner hooks answer for it.
    overrides = [o for o in spec.inspect_overrides]
    cfg = load_config(base=starter_config(name), overrides=overrides)
    assert cfg.spec is spec
    assert cfg.prediction.metric == spec.metrics[0] and cfg.training.loss_function == spec.losses[0]
    assert spec.sequences_per_row(cfg) >= 1
    assert spec.reference(cfg) in ("none", "model", "precomputed")
    sampling = spec.sampling(cfg)
    assert sampling is None or sampling.completions_per_row >= 1
    assert spec.public()["name"] == name


def test_the_protocol_declares_the_hooks_the_code_calls():
    called = set()
    for path in _outside_problems():
        called |= set(re.findall(r"\bproblem\.([a-z_]+)\(", path.read_text(encoding="utf-8")))
    optional = {"attach", "prompt_ids", "padding_free", "pop_stats"}  # documented on Problem, read with getattr
    assert called - optional <= set(HOOKS), called - set(HOOKS)
    assert "example" not in HOOKS


def test_unknown_problem_type_names_the_closest_one():
    with pytest.raises(ConfigError) as err:
        spec_of("dpoo")
    assert "unknown problem type 'dpoo'" in str(err.value) and err.value.hint == "did you mean 'dpo'?"
    with pytest.raises(ConfigError, match="did you mean 'classification'"):
        load_config(overrides=["problem_type=clasification"])
    with pytest.raises(ValidationError, match="did you mean 'regression'"):
        RunConfig(problem_type="regresion")


def test_config_rules_come_from_the_spec():
    with pytest.raises(ConfigError, match="rl needs a reward"):
        load_config(overrides=["problem_type=rl"])
    with pytest.raises(ConfigError, match="cannot pack them"):
        load_config(overrides=["problem_type=dpo", "training.packing=true"])
    assert RunConfig(problem_type="dpo").problems() == []
    assert [s.name for s in all_specs()] == problem_types()


def test_studio_reads_the_facts_from_the_api():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tunelab.ui.routes_runs import router

    app = FastAPI()
    app.include_router(router)
    data = TestClient(app).get("/api/problem-types").json()["problem_types"]
    assert [p["name"] for p in data] == problem_types()
    chat = {p["name"] for p in data if p["can_chat"]}
    assert chat == {s.name for s in all_specs() if s.can_chat} and chat
    static = SRC / "ui" / "static"
    assert "/api/problem-types" in (static / "util.js").read_text(encoding="utf-8")
