"""llm_backbone as a hub id in every valid form: gpt2, org/name, org/name@revision — checked by config validate,
loaded from the hub cache at the named revision, and ending in one line when the model cannot be had offline."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import causal_config
from test_cli import TUNELAB, assert_one_line_error, run

from tunelab.errors import ModelError
from tunelab.models.load import _hub_error, check_backbone, hub_id_problem, split_revision


@pytest.mark.parametrize(
    "name", ["gpt2", "distilbert-base-uncased", "EleutherAI/pythia-70m", "org/name@v1.0", "org/name@refs/pr/3"]
)
def test_valid_hub_ids_are_accepted_by_form(name):
    assert hub_id_problem(name) is None
    assert check_backbone(name) == ("hub", name)


@pytest.mark.parametrize("name", ["gpt 2", "org/../name", "org/name/", "org//name", "a--b", "org/name@", "o/n@a b"])
def test_malformed_values_are_refused(name):
    with pytest.raises(ModelError) as info:
        check_backbone(name)
    assert "not a valid hub id" in str(info.value) or "no such folder" in str(info.value)


def test_split_revision_keeps_local_paths_whole(tmp_path):
    folder = tmp_path / "model@v2"
    folder.mkdir()
    assert split_revision(str(folder)) == (str(folder), {})
    assert split_revision("org/name@v2") == ("org/name", {"revision": "v2"})
    assert split_revision("org/name") == ("org/name", {})


def _validate(config: Path, backbone: str):
    return run("config", "validate", config, "--set", f"llm_backbone={backbone}")


def test_config_validate_accepts_every_form_and_refuses_junk(tiny_llama, qa_jsonl, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(causal_config(tiny_llama, qa_jsonl, tmp_path / "out")))
    for backbone in ("gpt2", "distilbert-base-uncased", "org/name", "org/name@v1.0", str(tiny_llama)):
        proc = _validate(config, backbone)
        assert proc.returncode == 0 and "valid" in proc.stdout, (backbone, proc.stderr)
    assert_one_line_error(_validate(config, "gpt 2"), "'gpt 2' is not a valid hub id")
    assert_one_line_error(_validate(config, "org/../x"), "no such folder")
    assert_one_line_error(_validate(config, "org/name/"), "no such folder")
    assert_one_line_error(_validate(config, str(tmp_path)), "no config.json")


def test_offline_train_of_a_hub_model_ends_in_one_line(tiny_llama, qa_jsonl, tmp_path):
    for backbone in ("gpt2", "org/name@v2"):
        data = causal_config(tiny_llama, qa_jsonl, tmp_path / "out", llm_backbone=backbone)
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(data))
        line = assert_one_line_error(run("train", config), f"'{backbone}'", "needs the network", "local folder")
        assert "login" in line


def _status_error(cls, status: int):
    request = httpx.Request("GET", "https://huggingface.co/api/models/org/name")
    return cls("refused", response=httpx.Response(status, request=request))


def test_gated_private_and_missing_revision_are_told_apart():
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    def line(name: str, cause: Exception) -> str:
        try:
            raise OSError("wrapped by transformers") from cause
        except OSError as exc:
            return _hub_error(name, exc).line()

    assert "gated" in line("org/name", _status_error(GatedRepoError, 403))
    assert "private and needs a login" in line("org/name", _status_error(RepositoryNotFoundError, 404))
    assert "no revision 'v9'" in line("org/name@v9", _status_error(RevisionNotFoundError, 404))


def _fake_hub_cache(root: Path, main: Path, v2: Path) -> Path:
    """A hub cache holding 'tiny/llama': main is a Mistral without tokenizer files, v2 a Llama with them."""
    repo = root / "models--tiny--llama"
    (repo / "refs").mkdir(parents=True)
    for ref, commit, source in (("main", "a" * 40, main), ("v2", "b" * 40, v2)):
        shutil.copytree(source, repo / "snapshots" / commit)
        (repo / "refs" / ref).write_text(commit)
    for file in (repo / "snapshots" / ("a" * 40)).iterdir():
        if file.name.startswith(("tokenizer", "chat_template")):
            file.unlink()
    return root


@pytest.fixture
def tiny_mistral(tmp_path, tiny_tokenizer_dir) -> Path:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    path = tmp_path / "mistral"
    MistralForCausalLM(config).save_pretrained(path)
    shutil.copytree(tiny_tokenizer_dir, path, dirs_exist_ok=True)
    return path


def test_revision_reaches_both_model_and_tokenizer(tiny_llama, tiny_mistral, qa_jsonl, tmp_path):
    """Trained from the hub cache at '@v2': the tokenizer exists only there, and the exported model is v2's Llama."""
    cache = _fake_hub_cache(tmp_path / "hub", tiny_mistral, tiny_llama)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cfg = causal_config(
        "tiny/llama@v2", qa_jsonl, tmp_path / "out", training={"max_steps": 2}, prediction={"max_length_inference": 2}
    )
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([TUNELAB, "train", config], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "out" / "causal"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["llm_backbone"] == "tiny/llama@v2"
    proc = subprocess.run(
        [TUNELAB, "export", run_dir, "--format", "merged", "-o", tmp_path / "merged"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"model_type": "llama"' in (tmp_path / "merged" / "config.json").read_text()
    # main has no tokenizer: without the revision the same cache cannot train
    config.write_text(yaml.safe_dump({**cfg, "llm_backbone": "tiny/llama"}))
    proc = subprocess.run([TUNELAB, "train", config, "--force"], capture_output=True, text=True, env=env, timeout=600)
    assert_one_line_error(proc, "could not load the tokenizer")
