"""Portable adapters and filled model cards (issue 17, items 1-2).

A run whose backbone is a hub id (a tiny Llama placed in a temporary hub cache under a made-up id) is trained,
exported and moved; a "fresh machine" — a subprocess with its own hub cache holding only the base, offline, no
tunelab — loads the adapter with plain peft and transformers and must give tunelab's logits. The cards must carry the
run's real numbers and hub metadata the hub accepts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import causal_config, classification_config
from huggingface_hub import ModelCard

from tunelab.config import load_config
from tunelab.infer.export import export_run
from tunelab.infer.model import load_run
from tunelab.infer.model_card import build_model_card
from tunelab.models.adapters import point_adapter_at_base
from tunelab.models.load import BUILTIN_MODELS, base_model_reference
from tunelab.rundir import RunDirectory
from tunelab.training.loop import train

HUB_ID = "tunelab-test/tiny-llama"
SHA = "0123456789abcdef0123456789abcdef01234567"
PROMPT = [{"role": "user", "content": "what is 2 and 3?"}]
# Some licence ids of the hub's model-card schema (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = {"apache-2.0", "mit", "openrail", "llama3.1", "gemma", "cc-by-4.0", "cc-by-nc-4.0", "other"}
PLACEHOLDERS = ("[More Information Needed]", "None", "| - |", "not recorded")


def hub_cache(root: Path, model_dir: Path, repo: str = HUB_ID, sha: str = SHA, license_id: str = "mit") -> Path:
    """A hub cache (``models--org--name/snapshots/<sha>``, ``refs/main``) holding ``model_dir`` under ``repo``."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / sha
    shutil.copytree(model_dir, snapshot)
    (snapshot / "README.md").write_text(f"---\nlicense: {license_id}\n---\n# tiny\n", encoding="utf-8")
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(sha, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def hub_run(tiny_llama, qa_jsonl, tmp_path_factory):
    """A LoRA run on ``HUB_ID@SHA`` from a temporary hub cache, exported (adapter, merged) and moved elsewhere."""
    import huggingface_hub.constants

    root = tmp_path_factory.mktemp("portable")
    patch = pytest.MonkeyPatch()
    patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache(root / "hub-origin", tiny_llama)))
    cfg = causal_config(
        f"{HUB_ID}@{SHA}",
        qa_jsonl,
        root / "runs",
        training={"max_steps": 4},
        prediction={"max_length_inference": 4},
    )
    run_dir = train(load_config(base=cfg)).run_dir
    export_run(run_dir, "adapter")
    export_run(run_dir, "merged")
    moved = root / "elsewhere" / "moved-run"
    shutil.copytree(run_dir, moved)
    shutil.rmtree(run_dir)  # nothing may point back at where it was trained
    yield moved
    patch.undo()


def prompt_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


FRESH_MACHINE = r"""
import json, sys
import torch
sys.modules["tunelab"] = None  # a fresh machine: no tunelab
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

out = {}
for folder in sys.argv[2:]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(json.loads(sys.argv[1]), add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        peft_logits = AutoPeftModelForCausalLM.from_pretrained(folder).eval()(input_ids=ids).logits[0, -1]
        plain_logits = AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids=ids).logits[0, -1]
    out[folder] = {"ids": ids[0].tolist(), "peft": peft_logits.tolist(), "transformers": plain_logits.tolist()}
print("RESULT" + json.dumps(out))
"""


def fresh_env(root: Path, model_dir: Path) -> dict[str, str]:
    """The environment of a machine that has only the base model in its hub cache, offline, and no tunelab cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TUNELAB_", "TRANSFORMERS_"))}
    env.update(
        HF_HOME=str(root / "hf-home"),
        HF_HUB_CACHE=str(hub_cache(root / "hub-fresh", model_dir)),
        HF_HUB_OFFLINE="1",
        TUNELAB_CACHE=str(root / "no-tunelab-cache"),
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def test_adapter_loads_with_plain_peft_on_a_fresh_machine(hub_run, tiny_llama, tmp_path):
    adapter, exported = hub_run / "adapter", hub_run / "exports" / "adapter"
    for folder in (adapter, exported):
        config = json.loads((folder / "adapter_config.json").read_text())
        assert (config["base_model_name_or_path"], config["revision"]) == (HUB_ID, SHA)
        assert (folder / "tokenizer.json").is_file() and (folder / "chat_template.jinja").is_file()
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_MACHINE, json.dumps(PROMPT), str(adapter), str(exported)],
        capture_output=True,
        text=True,
        env=fresh_env(tmp_path, tiny_llama),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.split("RESULT", 1)[1])
    loaded = load_run(hub_run, device="cpu")  # tunelab's own loading, offline (conftest), from the moved run
    ids = prompt_ids(loaded.tokenizer)
    with torch.no_grad():
        ours = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    for result in fresh.values():
        assert result["ids"] == ids
        for key in ("peft", "transformers"):
            assert (torch.tensor(result[key]) - ours).abs().max().item() < 1e-5, key


def test_tunelab_loads_its_run_by_its_config_not_the_adapter_config(hub_run, tmp_path):
    """tunelab never follows base_model_name_or_path (which would reach for the network): the config names the base."""
    run = tmp_path / "run"
    shutil.copytree(hub_run, run)
    config_path = run / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "nobody/not-on-this-machine"
    config_path.write_text(json.dumps(config))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    loaded = load_run(run, device="cpu")
    assert loaded.cfg.llm_backbone == f"{HUB_ID}@{SHA}"


def front_matter(card: str) -> dict:
    """The card's metadata as the hub's own parser reads it, checked against the hub's model-card schema."""
    data = ModelCard(card).data.to_dict()
    assert isinstance(data["tags"], list) and all(isinstance(t, str) for t in data["tags"])
    assert "license" not in data or data["license"] in HUB_LICENSES
    assert "base_model" not in data or isinstance(data["base_model"], str)
    assert all(isinstance(d, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", d) for d in data.get("datasets", []))
    assert data.get("pipeline_tag") in (None, "text-generation", "text-classification")
    return data


def assert_real_numbers(card: str, run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    info = json.loads((run / "run.json").read_text())
    for name, value in metrics["after"].items():
        row = f"| {name} | {metrics['before'][name]:.4f} | {value:.4f} |"
        assert row in card, row
    assert f"| train | `qa.jsonl` | {info['train_rows']} |" in card
    assert f"| {info['validation_rows']} |" in card
    assert f"{info['trainable_parameters']:,} of {info['total_parameters']:,}" in card
    assert info["hardware"] in card and "training time" in card
    for placeholder in PLACEHOLDERS:
        assert placeholder not in card, placeholder
    assert not re.search(r"(?<![\w\"'])\?(?![\w\"'])", card), "a '?' placeholder"
    assert not re.search(r"\bnan\b", card, re.I), "a NaN"


def test_run_card_replaces_peft_template(hub_run):
    card = (hub_run / "adapter" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == HUB_ID and meta["library_name"] == "peft" and meta["license"] == "mit"
    assert meta["pipeline_tag"] == "text-generation" and "datasets" not in meta  # a local file is no hub dataset
    assert {"tunelab", "lora", "peft"} <= set(meta["tags"])
    assert f"[{HUB_ID}](https://huggingface.co/{HUB_ID}) (revision `{SHA}`)" in card
    assert "r 8, alpha 16, dropout 0.05" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("adapter")' in card
    assert_real_numbers(card, hub_run)


def test_run_card_code_runs_on_a_fresh_machine(hub_run, tiny_llama, tmp_path):
    """The card's own Python snippet, as written, loads and answers in a clean environment."""
    card = (hub_run / "adapter" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    proc = subprocess.run(
        [sys.executable, "-c", 'import sys; sys.modules["tunelab"] = None\n' + code],
        capture_output=True,
        text=True,
        env=fresh_env(tmp_path, tiny_llama),
        cwd=hub_run,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_export_cards_and_merged_config(hub_run):
    merged = hub_run / "exports" / "merged"
    card = (merged / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == HUB_ID and meta["library_name"] == "transformers" and meta["license"] == "mit"
    assert "## Parity check (passed)" in card and 'AutoModelForCausalLM.from_pretrained("merged")' in card
    assert_real_numbers(card, hub_run)
    config = json.loads((merged / "config.json").read_text())
    assert config["_name_or_path"] == HUB_ID and "_model_name_or_path" not in config
    adapter_card = (hub_run / "exports" / "adapter" / "README.md").read_text()
    assert front_matter(adapter_card)["library_name"] == "peft"
    assert_real_numbers(adapter_card, hub_run)


def test_gguf_card_names_the_file_and_the_modelfile(hub_run):
    run = RunDirectory.open(hub_run)
    parity = {"prompts": 5, "mean_kld": 1e-4, "top1_agreement": 1.0, "passed": True, "file": "model-q4_k_m.gguf"}
    card = build_model_card(run, "gguf", folder_name="gguf-q4_k_m", parity=parity, gguf_file=parity["file"])
    meta = front_matter(card)
    assert meta["library_name"] == "gguf" and "gguf" in meta["tags"] and meta["base_model"] == HUB_ID
    assert "llama-cli -m model-q4_k_m.gguf" in card and "llama-server -m model-q4_k_m.gguf" in card
    assert "ollama create causal -f Modelfile" in card
    assert_real_numbers(card, hub_run)


def test_classification_card_code_loads_the_adapter(tiny_bert, sentiment_csv, tmp_path):
    """A classifier's card: classes, text-classification, and load code (with num_labels) that runs as written."""
    run = train(load_config(base=classification_config(tiny_bert, sentiment_csv, tmp_path, training={"max_steps": 3})))
    card = (run.run_dir / "adapter" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "text-classification" and "base_model" not in meta  # a local base
    assert "Warning: the base model is local" in card and "`negative`, `positive`" in card
    config = json.loads((run.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_bert.absolute())
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "AutoPeftModelForSequenceClassification" in code and "num_labels=2" in code
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=run.run_dir, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] in ("negative", "positive")


# ------------------------------------------------------------------------------------------ base model references
@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_builtins_map_to_their_hub_ids(name):
    ref = base_model_reference(name.upper())
    expected = {
        "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    }[name]
    assert (ref.name, ref.revision, ref.kind, ref.local) == (expected, None, "builtin", False)
    assert BUILTIN_MODELS[name].license == "apache-2.0"


def test_references_of_hub_ids_folders_and_files(tmp_path, monkeypatch):
    assert base_model_reference("gpt2").name == "gpt2"
    ref = base_model_reference("org/name@v1.0")
    assert (ref.name, ref.revision, ref.local) == ("org/name", "v1.0", False)
    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    ref = base_model_reference("my-model")
    assert (ref.name, ref.kind, ref.local) == (str(folder), "folder", True)
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    ref = base_model_reference(str(snapshot))
    assert (ref.name, ref.revision, ref.kind) == ("org/name", SHA, "hub")
    assert base_model_reference("weights/model.Q8_0.gguf").kind == "gguf"


@pytest.mark.parametrize(
    "backbone,expected",
    [
        ("smollm2-135m-instruct", ("HuggingFaceTB/SmolLM2-135M-Instruct", None)),
        ("org/name@v2", ("org/name", "v2")),
        ("org/name", ("org/name", None)),
        ("some/file.gguf", ("/cache/converted", None)),  # only this machine has the converted base: kept
    ],
)
def test_point_adapter_at_base(tmp_path, backbone, expected):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/cache/converted", "revision": None, "r": 8})
    )
    point_adapter_at_base(tmp_path, backbone)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == expected and config["r"] == 8
