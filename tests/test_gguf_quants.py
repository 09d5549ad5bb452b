"""GGUF types beyond f32/f16/q8_0 (q4_0 here, k-quants through llama.cpp), per-type parity verdicts, a failed
parity kept under a telling name, and the Ollama Modelfile written beside every GGUF export."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import causal_config, save_tiny_llama
from test_cli import TUNELAB, assert_one_line_error

from tunelab.config import PredictionConfig, load_config
from tunelab.errors import ModelError
from tunelab.infer import gguf_export
from tunelab.infer.export import GGUF_PARITY, export_run, gguf_parity_verdict
from tunelab.infer.gguf_export import compare_with_gguf, export_gguf, token_kl_divergence
from tunelab.infer.ollama import _check, _pieces, go_template, modelfile, stop_tokens

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def _reader(path: Path):
    from gguf import GGUFReader

    return GGUFReader(path)


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in _reader(path).tensors}


def test_kl_divergence_is_zero_for_equal_logits_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    assert token_kl_divergence(logits, logits).max() == 0.0
    assert token_kl_divergence(logits, logits + 3.0).max() < 1e-12  # a shift is the same distribution
    noisy = token_kl_divergence(logits, logits + 0.5 * torch.randn(5, 50))
    assert (noisy > 0).all() and noisy.shape == (5,)


def test_q4_0_export_keeps_norms_f32_and_the_tied_head_q8_0(tiny_llama, tmp_path):
    path = export_gguf(tiny_llama, tmp_path / "m.gguf", "Q4_0")  # any spelling of the type
    types = _types(path)
    assert types["token_embd.weight"] == "Q8_0"  # tied: it is also the output head
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == "Q4_0"
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert _reader(path).fields["general.file_type"].contents() == 2  # MOSTLY_Q4_0
    result = compare_with_gguf(tiny_llama, path, [[1, 5, 9, 30, 40], [2, 7, 8]])
    # 4-bit weights move a random tiny model's logits, but not far: the distributions stay close.
    assert 0 < result["mean_kld"] < 0.05 and result["top1_agreement"] >= 0.5, result


def test_unknown_quant_is_one_line(tiny_llama, tmp_path):
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown GGUF quantisation 'q3_k_xl'.*q4_k_m"):
        export_gguf(tiny_llama, tmp_path / "m.gguf", "q3_k_xl")


def _hide_llama_cpp(monkeypatch, program: str | None = None) -> None:
    """As on a machine without llama-cpp-python; ``program`` stands for ``llama-quantize`` on PATH."""
    import builtins

    real_import = builtins.__import__

    def no_llama_cpp(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama_cpp)
    monkeypatch.setattr(gguf_export.shutil, "which", lambda name: program if name == "llama-quantize" else None)


def test_k_quants_without_llama_cpp_say_what_to_install(tiny_llama, tmp_path, monkeypatch):
    _hide_llama_cpp(monkeypatch)
    with pytest.raises(ModelError, match="llama.cpp's quantizer") as info:
        export_gguf(tiny_llama, tmp_path / "m.gguf", "q4_k_m")
    assert "tunelab[gguf]" in info.value.hint and "q4_0" in info.value.hint
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_k_quants_through_a_llama_quantize_program(tiny_llama, tmp_path, monkeypatch):
    """Without llama-cpp-python, ``llama-quantize`` on PATH is called with llama.cpp's own type name."""
    program = tmp_path / "llama-quantize"
    program.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\ncp "$1" "$2"\n')
    program.chmod(0o755)
    _hide_llama_cpp(monkeypatch, str(program))
    out = export_gguf(tiny_llama, tmp_path / "out" / "m.gguf", "q5_k_m")
    args = (tmp_path / "args").read_text().split()
    assert args[2] == "Q5_K_M" and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]  # the f32 intermediate is gone


@pytest.fixture(scope="module")
def kquant_llama(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny Llama whose rows are multiples of 256, the k-quant block size (smaller rows fall back to q5_0/q8_0)."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("models") / "kquant-llama",
        tiny_tokenizer_dir,
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (pip install 'tunelab[gguf]')")
@pytest.mark.parametrize(("quant", "file_type", "main"), [("q4_k_m", 15, "Q4_K"), ("q6_k", 18, "Q6_K")])
def test_k_quants_with_llama_cpp(kquant_llama, tmp_path, quant, file_type, main):
    path = export_gguf(kquant_llama, tmp_path / "m.gguf", quant)
    types = _types(path)
    assert _reader(path).fields["general.file_type"].contents() == file_type
    assert types["blk.0.attn_q.weight"] == main and types["output_norm.weight"] == "F32"
    result = compare_with_gguf(kquant_llama, path, [[1, 5, 9, 30, 40, 41, 42], [2, 7, 8, 100]])
    assert 0 < result["mean_kld"] < 0.05, result


def test_parity_verdicts_follow_each_types_criteria():
    good_q8 = {"mean_kld": 1e-3, "top1_agreement": 0.98, "greedy_match": False}
    assert gguf_parity_verdict("q8_0", good_q8)["passed"]
    assert not gguf_parity_verdict("f16", good_q8)["passed"]  # f16 must be far closer
    assert not gguf_parity_verdict("q8_0", good_q8 | {"top1_agreement": 0.9})["passed"]
    exact = {"mean_kld": 0.0, "top1_agreement": 1.0, "greedy_match": True}
    assert gguf_parity_verdict("f32", exact)["passed"]
    assert not gguf_parity_verdict("f32", exact | {"greedy_match": False})["passed"]
    # Looser bounds for fewer bits, never tighter.
    order = ["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]
    klds = [GGUF_PARITY[q]["max_mean_kld"] for q in order]
    assert klds == sorted(klds) and set(GGUF_PARITY) == set(gguf_export.QUANTS)


@pytest.fixture(scope="module")
def lora_run(tiny_llama, qa_jsonl, tmp_path_factory):
    from tunelab.training.loop import train

    cfg = load_config(
        base=causal_config(
            tiny_llama,
            qa_jsonl,
            tmp_path_factory.mktemp("runs"),
            training={"max_steps": 2},
            prediction={"max_length_inference": 4},
        )
    )
    return train(cfg).run_dir


def test_gguf_export_writes_a_modelfile_and_its_verdict(lora_run, tmp_path):
    folder, parity = export_run(lora_run, "gguf", out=tmp_path / "g", quant="f16")
    assert parity["passed"] and parity["criteria"] == GGUF_PARITY["f16"] and parity["file"] == "model-f16.gguf"
    text = (folder / "Modelfile").read_text()
    assert text.splitlines()[1] == "FROM ./model-f16.gguf"
    assert 'TEMPLATE """' in text and "<|im_start|>" in text and "{{ .Content }}" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text


def test_failed_parity_keeps_the_file_under_a_telling_name_and_exits_1(lora_run, tmp_path, monkeypatch):
    out = tmp_path / "g"
    bad = {"mean_kld": 0.5, "top1_agreement": 0.5, "greedy_match": False, "greedy_matches": [False]}
    monkeypatch.setattr(gguf_export, "compare_with_gguf", lambda *a, **k: dict(bad, max_abs_logit_diff=9.0))
    folder, parity = export_run(lora_run, "gguf", out=out, quant="q8_0")
    assert not parity["passed"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "Modelfile",
        "README.md",
        "model-q8_0.PARITY-FAILED.gguf",
        "parity.json",
    ]
    assert "FROM ./model-q8_0.PARITY-FAILED.gguf" in (folder / "Modelfile").read_text()


def test_cli_refuses_an_unknown_gguf_type(lora_run):
    proc = subprocess.run(
        [TUNELAB, "export", str(lora_run), "--format", "gguf", "--quant", "q2"], capture_output=True, text=True
    )
    assert_one_line_error(proc, "unknown GGUF type 'q2'")


# ---------------------------------------------------------------- Ollama templates


def _tokenizer(template_name: str | None, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from tunelab.data.prompts import BUILTIN_TEMPLATES

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    if template_name:
        tok.chat_template = BUILTIN_TEMPLATES[template_name]
    return tok


@pytest.mark.parametrize("name", ["chatml", "llama3", "zephyr", "alpaca", "plain"])
def test_ollama_template_pieces_rebuild_the_chat_template(name, tiny_tokenizer_dir):
    tok = _tokenizer(name, tiny_tokenizer_dir)
    pieces = _pieces(tok)
    assert _check(tok, pieces)
    template = go_template(tok)
    assert template is not None and "{{ range .Messages }}" in template and template.count("{{ .Content }}") == 2


def test_ollama_template_of_smollm2_keeps_its_default_system_prompt(tiny_tokenizer_dir):
    tok = _tokenizer(None, tiny_tokenizer_dir)
    tok.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are SmolLM<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    template = go_template(tok)
    assert "{{ else }}<|im_start|>system\nYou are SmolLM<|im_end|>\n{{ end }}" in template
    assert "<|im_end|>" in stop_tokens(tok)


def test_ollama_template_left_to_the_gguf_when_turns_are_not_concatenated(tiny_tokenizer_dir):
    tok = _tokenizer(None, tiny_tokenizer_dir)
    # Mistral-style: the system prompt is folded into the first user turn.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
        "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }} {% endif %}"
        "{{ m['content'] }} [/INST]{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    assert go_template(tok) is None
    text = modelfile("m.gguf", tok, PredictionConfig(), 512)
    assert "TEMPLATE" not in text and "uses the one stored in the GGUF file" in text


def test_modelfile_carries_sampling_settings(tiny_tokenizer_dir):
    tok = _tokenizer("chatml", tiny_tokenizer_dir)
    settings = PredictionConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1)
    text = modelfile("m.gguf", tok, settings, 1024)
    for line in [
        "PARAMETER temperature 0.7",
        "PARAMETER top_p 0.9",
        "PARAMETER top_k 40",
        "PARAMETER repeat_penalty 1.1",
        "PARAMETER num_ctx 1024",
    ]:
        assert line in text
