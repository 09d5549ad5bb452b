"""The example configs on tiny stand-ins of their architectures, offline.

- examples/online/ (hub models, for online users): each validates with `config validate`, and each trains 2 steps
  with llm_backbone swapped for a tiny random model of the same architecture and the data for a small fixture.
- the shipped examples with nothing changed but llm_backbone (a tiny gpt_neox or distilbert folder), a small sample of
  their real data and 2 steps: `tunelab train` then `tunelab export --format merged` succeed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, shared_file
from test_arch_matrix import Zoo
from test_cli import TUNELAB, assert_one_line_error

from tunelab.config import load_config
from tunelab.models.load import check_backbone
from tunelab.training.loop import train

ONLINE = REPO / "examples" / "online"
# example -> (the architecture of its hub model, its data's shape)
STAND_INS = {
    "distilbert_sst2_lora.yaml": ("distilbert", "sst2"),
    "pythia70m_lamini_docs.yaml": ("gpt_neox", "lamini"),
    "mistral7b_instruct_qlora.yaml": ("mistral", "lamini"),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def mistral64(tmp_path_factory) -> Path:
    """A 2-layer Mistral of hidden size 64 (bitsandbytes' 4-bit blocks need 64 values) with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(REPO / "tests" / "assets" / "tiny-tokenizer")
    config = MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    path = tmp_path_factory.mktemp("models") / "mistral64"
    MistralForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict[str, Path]:
    """Small files shaped like each example's data: Lamini's question/answer JSONL, SST-2's label<TAB>sentence."""
    folder = tmp_path_factory.mktemp("data")
    lamini = folder / "lamini.jsonl"
    lamini.write_text(
        "".join(
            json.dumps({"question": f"### Question:\nWhat is {i} plus 1?\n\n### Answer:", "answer": f"It is {i + 1}."})
            + "\n"
            for i in range(30)
        )
    )
    sst2 = folder / "sst2.tsv"
    sst2.write_text(
        "label\tsentence\n" + "".join(f"{i % 2}\t{'a fine film' if i % 2 else 'a dull film'} {i}\n" for i in range(40))
    )
    return {"lamini": lamini, "sst2": sst2}


def test_every_online_example_is_covered():
    assert sorted(p.name for p in ONLINE.glob("*.yaml")) == sorted(STAND_INS)
    assert (ONLINE / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_online_example_validates(name):
    """`tunelab config validate` accepts it (a hub id, checked by form), with its real data when that is here."""
    cfg = load_config(ONLINE / name)
    assert check_backbone(cfg.llm_backbone)[0] == "hub"
    shared_file(Path(cfg.dataset.train_dataframe).name)
    proc = subprocess.run(
        [TUNELAB, "config", "validate", ONLINE / name], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stderr


@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_online_example_trains_on_a_tiny_stand_in(name, zoo, mistral64, small_data, tmp_path):
    arch, shape = STAND_INS[name]
    backbone = mistral64 if arch == "mistral" else zoo(arch)
    overrides = [
        f"llm_backbone={backbone}",
        f"dataset.train_dataframe={small_data[shape]}",
        "dataset.validation_size=4",
        f"output_directory={tmp_path}",
        "training.max_steps=2",
        "training.evaluate_before_training=false",
        "prediction.max_length_inference=4",
    ]
    cfg = load_config(ONLINE / name, overrides)
    if cfg.architecture.backbone_dtype == "int4":
        pytest.importorskip("bitsandbytes")  # NF4 runs on CPU too: the stand-in keeps the example's 4-bit backbone
    result = train(cfg)
    assert result.metrics["after"]
    model_dir = result.run_dir / ("model" if cfg.training.adapter == "none" else "adapter")
    assert model_dir.is_dir()
    if cfg.architecture.backbone_dtype == "int4":
        from tunelab.infer.model import load_run

        layers = {type(m).__name__ for m in load_run(result.run_dir, device="cpu").model.modules()}
        assert "Linear4bit" in layers  # the stand-in really ran QLoRA
    if arch == "gpt_neox":  # pythia has no chat template: the plain one is recorded with the run
        assert "Assistant:" in (result.run_dir / "tokenizer" / "chat_template.jinja").read_text()


def _lamini_sample(path: Path) -> Path:
    """60 rows of the real Lamini data whose answers fit the tiny tokenizer's token limits (it splits words finer)."""
    source = shared_file("lamini_docs.jsonl")
    rows = [line for line in source.open(encoding="utf-8") if 20 <= len(json.loads(line)["answer"]) <= 250]
    path.write_text("".join(rows[:60]), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "example,arch", [("lamini_docs_smollm2_lora.yaml", "gpt_neox"), ("sst2_minilm_lora.yaml", "distilbert")]
)
def test_shipped_example_trains_and_exports_with_a_tiny_backbone(example, arch, zoo, tmp_path):
    """Nothing changed but llm_backbone, 2 steps and a small sample of the real data (and short generations)."""
    overrides = [f"llm_backbone={zoo(arch)}", "training.max_steps=2", f"output_directory={tmp_path / 'out'}"]
    if arch == "gpt_neox":
        overrides += [f"dataset.train_dataframe={_lamini_sample(tmp_path / 'lamini.jsonl')}"]
        overrides += ["prediction.max_length_inference=8"]
    else:
        shared_file("sst2_train_5k.tsv")
        overrides += ["dataset.data_sample=64"]
    args = [arg for item in overrides for arg in ("--set", item)]
    proc = subprocess.run(
        [TUNELAB, "train", REPO / "examples" / example, *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "out" / yaml.safe_load((REPO / "examples" / example).read_text())["experiment_name"]
    proc = subprocess.run(
        [TUNELAB, "export", run_dir, "--format", "merged"], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "exports" / "merged" / "parity.json").read_text())["passed"]
    shutil.rmtree(run_dir / "exports")
    if arch == "gpt_neox":  # llama.cpp's 'gptneox' is not one tunelab's GGUF writer knows: one line, exit 2
        proc = subprocess.run([TUNELAB, "export", run_dir, "--format", "gguf"], capture_output=True, text=True)
        assert_one_line_error(proc, "supports the architectures llama, mistral", "'gpt_neox'")
