"""Exporting a Llama-architecture causal LM folder (llama, mistral) to one GGUF file, the format of llama.cpp.

The file follows llama.cpp's ``convert_hf_to_gguf.py`` conventions (tensor names, the Q/K row permutation, metadata
keys, a byte-level BPE vocabulary as ``tokenizer.ggml.model = "gpt2"``), so llama.cpp, ollama and transformers'
own GGUF loader can all read it back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import ConfigError, ModelError

log = logging.getLogger("tunelab")

# Tensor types this module writes itself (the gguf package quantises them), and the k-quant mixes made by llama.cpp's
# own quantizer from an f32 file (they keep sensitive tensors, such as the output head, at higher precision).
NATIVE_QUANTS = ("f32", "f16", "q8_0", "q4_0")
LLAMA_CPP_QUANTS = {"q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}
QUANTS = NATIVE_QUANTS + tuple(LLAMA_CPP_QUANTS)
# transformers model types written as llama.cpp's "llama" architecture (llama.cpp's converter maps Mistral there too).
MODEL_TYPES = ("llama", "mistral")


def normalize_quant(quant: str) -> str:
    """``quant`` in the spelling used here (``Q4_K_M`` -> ``q4_k_m``).

    Raises:
        ConfigError: for a type this exporter does not write.
    """
    name = str(quant).strip().lower()
    if name not in QUANTS:
        raise ConfigError(f"unknown GGUF quantisation '{quant}'", field="quant", hint=f"use one of {', '.join(QUANTS)}")
    return name


def llama_cpp_quantizer() -> Any:
    """A function ``(source, target, quant)`` quantising an f32 GGUF file with llama.cpp: through llama-cpp-python
    when installed, else the ``llama-quantize`` program on PATH.

    Raises:
        ModelError: when neither is available.
    """
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:
        return _quantize_in_process
    program = shutil.which("llama-quantize")
    if program:
        return lambda source, target, quant: _quantize_with_program(program, source, target, quant)
    raise ModelError(
        "k-quant GGUF types (q4_k_m, q5_k_m, q6_k) are made by llama.cpp's quantizer, which is not installed",
        hint="pip install 'tunelab[gguf]' (llama-cpp-python: builds llama.cpp, a few minutes) or put llama.cpp's "
        "llama-quantize on PATH; f32, f16, q8_0 and q4_0 need nothing more",
    )


def _quantize_in_process(source: Path, target: Path, quant: str) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + LLAMA_CPP_QUANTS[quant])
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise ModelError(f"llama.cpp could not quantise the model to {quant}", file=str(source))


def _quantize_with_program(program: str, source: Path, target: Path, quant: str) -> None:
    import subprocess

    done = subprocess.run(
        [program, str(source), str(target), LLAMA_CPP_QUANTS[quant].removeprefix("MOSTLY_")],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"llama-quantize failed to make {quant} ({tail[0]})", file=str(source))


def check_model_type(model_type: str | None, where: str = "") -> None:
    """Refuse, in one line naming what is supported, a model type this exporter cannot write.

    Raises:
        ModelError: for any other model type.
    """
    if model_type not in MODEL_TYPES:
        raise ModelError(
            f"GGUF export supports the architectures {', '.join(MODEL_TYPES)}, not model_type '{model_type}'",
            file=where or None,
            hint="export with --format merged (a transformers folder) and convert that with llama.cpp's "
            "convert_hf_to_gguf.py, which knows more architectures",
        )


# The regex Llama 3 splits text with before byte-level BPE; llama.cpp calls this pre-tokenizer "llama-bpe".
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# HF weight name (after "model.") -> llama.cpp tensor name.
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass
class _Hparams:
    vocab_size: int
    context_length: int
    hidden: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    tied: bool
    name: str


@dataclass
class _TensorPlan:
    source: str  # name in the safetensors file
    file: Path
    name: str  # llama.cpp name
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    permute_heads: int = 0  # >0: apply llama.cpp's rotary row permutation with this many heads


@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    chat_templates: dict[str, str] = field(default_factory=dict)


def export_gguf(model_dir: str | Path, out_path: str | Path, quant: str = "f16") -> Path:
    """Convert a transformers Llama folder (safetensors weights, fast BPE tokenizer) into a single GGUF file.

    Tensors are streamed one at a time, so memory stays near the size of the largest tensor. The file appears at
    ``out_path`` only once complete (written next to it, then renamed).

    Args:
        model_dir: folder with ``config.json`` (model_type ``llama``), ``*.safetensors`` and a tokenizer.
        out_path: the ``.gguf`` file to write; its folder is created if needed.
        quant: one of ``QUANTS``. Norms stay F32 as in llama.cpp; with ``q8_0`` / ``q4_0`` a matrix whose rows are
            not a multiple of 32 falls back to F16, and with ``q4_0`` the output head (the embeddings when tied)
            is Q8_0, as llama.cpp keeps it at a higher precision. The k-quants are written as f32 and quantised by
            llama.cpp (``llama_cpp_quantizer``).

    Returns:
        The path of the written file.

    Raises:
        ConfigError: for an unknown ``quant``.
        ModelError: for a model or tokenizer this exporter cannot convert.
    """
    quant = normalize_quant(quant)
    quantizer = llama_cpp_quantizer() if quant in LLAMA_CPP_QUANTS else None  # fail before any work
    model_dir = Path(model_dir)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    source = tmp.with_suffix(".f32.tmp")
    try:
        if quantizer is None:
            hp = _write_native(model_dir, tmp, quant)
        else:
            hp = _write_native(model_dir, source, "f32")
            quantizer(source, tmp, quant)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        source.unlink(missing_ok=True)
    log.info("wrote %s (%s, %d layers)", out, quant, hp.layers)
    return out


def _write_native(model_dir: Path, tmp: Path, quant: str) -> _Hparams:
    """Write the GGUF file of ``model_dir`` with tensor type ``quant`` (one of ``NATIVE_QUANTS``) to ``tmp``."""
    import gguf

    hp = _read_hparams(model_dir)
    plans = _plan_tensors(model_dir, hp, quant)
    vocab = _read_vocab(model_dir, hp.vocab_size)
    writer = gguf.GGUFWriter(tmp, "llama")
    _add_model_metadata(writer, hp, quant)
    _add_vocab_metadata(writer, vocab)
    for plan in plans:
        writer.add_tensor_info(plan.name, plan.shape, np.float32, _nbytes(plan), raw_dtype=plan.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in _tensor_data(plans):
        writer.write_tensor_data(data)
    writer.close()
    return hp


def _read_hparams(model_dir: Path) -> _Hparams:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelError("no config.json, so this is not a transformers model folder", file=str(model_dir))
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"config.json cannot be read ({exc})", file=str(config_file)) from exc
    check_model_type(raw.get("model_type") if isinstance(raw, dict) else None, str(config_file))
    from transformers import LlamaConfig

    cfg = LlamaConfig.from_dict(raw)
    # transformers' GGUF reader rebuilds a plain Llama config: anything it cannot express would load as a
    # different model, so refuse it here instead of writing a file that silently disagrees.
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    unsupported = {
        "hidden_act": cfg.hidden_act != "silu",
        "attention_bias": bool(getattr(cfg, "attention_bias", False)),
        "mlp_bias": bool(getattr(cfg, "mlp_bias", False)),
        "rope_parameters.rope_type": rope.get("rope_type", "default") != "default",
    }
    for key, bad in unsupported.items():
        if bad:
            raise ModelError(
                "this Llama variant cannot be exported to GGUF yet",
                file=str(config_file),
                field=key,
                hint="only SiLU MLPs, bias-free projections and plain RoPE (no scaling) are supported",
            )
    heads = cfg.num_attention_heads
    # Sliding-window attention (Mistral) has no llama.cpp "llama" equivalent: the context stops at the window,
    # where both agree.
    window = getattr(cfg, "sliding_window", None) or cfg.max_position_embeddings
    return _Hparams(
        vocab_size=cfg.vocab_size,
        context_length=min(cfg.max_position_embeddings, window),
        hidden=cfg.hidden_size,
        layers=cfg.num_hidden_layers,
        ffn=cfg.intermediate_size,
        heads=heads,
        kv_heads=cfg.num_key_value_heads or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        rope_theta=float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))),
        rms_eps=float(cfg.rms_norm_eps),
        tied=bool(cfg.tie_word_embeddings),
        name=str(raw.get("_name_or_path") or model_dir.name),
    )


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for a single or a sharded checkpoint."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(
            "no safetensors weights in the model folder",
            file=str(model_dir),
            hint="save the model with save_pretrained(..., safe_serialization=True)",
        )
    found: dict[str, Path] = {}
    for file in files:
        with safe_open(file, framework="pt") as fh:
            found.update(dict.fromkeys(fh.keys(), file))
    return found


def _gguf_name(source: str, hp: _Hparams, model_dir: Path) -> str | None:
    """llama.cpp's name for an HF Llama weight; None for one it leaves out; raises for one it has no place for."""
    if source == "model.embed_tokens.weight":
        return "token_embd.weight"
    if source == "model.norm.weight":
        return "output_norm.weight"
    if source == "lm_head.weight":
        return None if hp.tied else "output.weight"
    if source.endswith("rotary_emb.inv_freq"):
        return None  # recomputed from rope.freq_base, as llama.cpp does
    match = _LAYER_RE.match(source)
    if match and match.group(2) in _LAYER_TENSORS and int(match.group(1)) < hp.layers:
        return f"blk.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}"
    raise ModelError(
        f"weight '{source}' has no counterpart in a llama.cpp Llama model",
        file=str(model_dir),
        hint="only plain LlamaForCausalLM checkpoints (no adapters, biases or extra heads) can be exported; "
        "merge LoRA adapters into the base weights first",
    )


def _plan_tensors(model_dir: Path, hp: _Hparams, quant: str) -> list[_TensorPlan]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from safetensors import safe_open

    matrix_type = {
        "f32": GGMLQuantizationType.F32,
        "f16": GGMLQuantizationType.F16,
        "q8_0": GGMLQuantizationType.Q8_0,
        "q4_0": GGMLQuantizationType.Q4_0,
    }[quant]
    plans: list[_TensorPlan] = []
    for source, file in sorted(_weight_files(model_dir).items()):
        name = _gguf_name(source, hp, model_dir)
        if name is None:
            continue
        with safe_open(file, framework="pt") as fh:
            shape = tuple(fh.get_slice(source).get_shape())
        qtype = matrix_type
        head = name == "output.weight" or (hp.tied and name == "token_embd.weight")
        if quant == "q4_0" and head:
            qtype = GGMLQuantizationType.Q8_0  # the output head is the most sensitive matrix (llama.cpp: Q6_K)
        if len(shape) <= 1:
            qtype = GGMLQuantizationType.F32  # norms are tiny and precision-sensitive: llama.cpp keeps them F32
        elif shape[-1] % GGML_QUANT_SIZES[qtype][0]:
            qtype = GGMLQuantizationType.F16  # a row that does not fill whole Q8_0 blocks cannot be quantised
        heads = hp.heads if name.endswith("attn_q.weight") else hp.kv_heads if name.endswith("attn_k.weight") else 0
        plans.append(_TensorPlan(source, file, name, shape, qtype, heads))
    names = {plan.name for plan in plans}
    required = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{leaf}" for i in range(hp.layers) for leaf in _LAYER_TENSORS.values()
    }
    if not hp.tied:
        required.add("output.weight")
    missing = sorted(required - names)
    if missing:
        raise ModelError(
            f"the checkpoint lacks {len(missing)} Llama weight(s), e.g. '{missing[0]}'",
            file=str(model_dir),
            hint="export a complete LlamaForCausalLM saved with save_pretrained",
        )
    # llama.cpp's own order: embeddings, then block by block, then the output head.
    return sorted(plans, key=_plan_order)


def _plan_order(plan: _TensorPlan) -> tuple[int, int, str]:
    if plan.name.startswith("blk."):
        return (1, int(plan.name.split(".")[1]), plan.name)
    return (0 if plan.name.startswith("token_embd") else 2, 0, plan.name)


def _nbytes(plan: _TensorPlan) -> int:
    from gguf.quants import quant_shape_to_byte_shape

    return math.prod(quant_shape_to_byte_shape(plan.shape, plan.qtype))


def _permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    # HF stores each head's rotary pairs as two halves; llama.cpp's RoPE wants them interleaved, so convert_hf_to_gguf
    # reorders the rows of Q and K. transformers' GGUF loader undoes exactly this.
    shape = weight.shape
    return weight.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _tensor_data(plans: list[_TensorPlan]) -> Iterator[np.ndarray]:
    """Each planned tensor converted, permuted and quantised, loading one at a time."""
    import torch
    from gguf.quants import quantize
    from safetensors import safe_open

    for plan in plans:
        with safe_open(plan.file, framework="pt") as fh:
            # through float32 because numpy has no bfloat16
            weight = fh.get_tensor(plan.source).to(torch.float32).numpy()
        if plan.permute_heads:
            weight = _permute_rows(weight, plan.permute_heads)
        yield np.ascontiguousarray(quantize(np.ascontiguousarray(weight), plan.qtype))


def _add_model_metadata(writer: Any, hp: _Hparams, quant: str) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    file_type = {
        "f32": LlamaFileType.ALL_F32,
        "f16": LlamaFileType.MOSTLY_F16,
        "q8_0": LlamaFileType.MOSTLY_Q8_0,
        "q4_0": LlamaFileType.MOSTLY_Q4_0,
    }
    writer.add_type("model")
    writer.add_name(hp.name)
    writer.add_file_type(int(file_type[quant]))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_vocab_size(hp.vocab_size)
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden)
    writer.add_block_count(hp.layers)
    writer.add_feed_forward_length(hp.ffn)
    writer.add_head_count(hp.heads)
    writer.add_head_count_kv(hp.kv_heads)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    if hp.head_dim != hp.hidden // hp.heads:
        # llama.cpp derives the head size from embedding_length / head_count unless told otherwise.
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)


def _add_vocab_metadata(writer: Any, vocab: _Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for kind, token_id in vocab.special_ids.items():
        adders[kind](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_templates:
        writer.add_chat_template([{"name": name, "template": text} for name, text in vocab.chat_templates.items()])


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    from tunelab.models.load import quiet_transformers

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # a missing or unreadable tokenizer takes many exception types in transformers
        raise ModelError(
            f"could not load the tokenizer ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            file=str(model_dir),
            hint="save the tokenizer next to the model with tokenizer.save_pretrained",
        ) from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ModelError("GGUF export needs a fast (tokenizers) tokenizer", file=str(model_dir))
    return tokenizer


def _pre_tokenizer_name(spec: dict | None, model_dir: Path) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a tokenizers pre-tokenizer, or a ModelError for one it cannot name."""
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec or {}]
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1] if kinds[-1:] == ["ByteLevel"] else None
    if byte_level is not None and not byte_level.get("add_prefix_space"):
        first, regex = steps[0], byte_level.get("use_regex", True)
        if len(steps) == 1 and regex:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and first.get("individual_digits") and regex:
            # llama.cpp reproduces this split; transformers' GGUF reader falls back to plain GPT-2 splitting.
            log.warning("digits are split one by one: llama.cpp matches this, transformers' GGUF loader may not")
            return "smollm"
        isolated = first.get("behavior") == "Isolated" and not first.get("invert")
        if kinds == ["Split", "ByteLevel"] and not regex and isolated:
            if (first.get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT:
                return "llama-bpe"
    raise ModelError(
        f"the tokenizer's pre-tokenizer ({' + '.join(str(k) for k in kinds)}) has no llama.cpp equivalent here",
        file=str(model_dir),
        hint="GGUF export supports byte-level BPE tokenizers as in GPT-2, SmolLM2 and Llama 3",
    )


def _check_bpe(backend: dict, model_dir: Path) -> None:
    model = backend.get("model") or {}
    decoder = backend.get("decoder") or {}
    problems = [
        model.get("type") != "BPE" and f"a {model.get('type')} model, not BPE",
        model.get("byte_fallback") and "byte fallback (a sentencepiece-style vocabulary)",
        backend.get("normalizer") is not None and "a normalizer",
        (model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")) and "subword affixes",
        decoder.get("type") != "ByteLevel" and "no byte-level decoder",
    ]
    found = [problem for problem in problems if problem]
    if found:
        raise ModelError(
            f"the tokenizer is not a plain byte-level BPE ({', '.join(found)}), which is all GGUF export writes",
            file=str(model_dir),
            hint="sentencepiece (Llama 2 style) vocabularies are not supported yet",
        )


def _read_vocab(model_dir: Path, vocab_size: int) -> _Vocab:
    from gguf import TokenType

    tokenizer = _load_tokenizer(model_dir)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    _check_bpe(backend, model_dir)
    pre = _pre_tokenizer_name(backend.get("pre_tokenizer"), model_dir)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if by_id and max(by_id) >= vocab_size:
        raise ModelError(
            f"the tokenizer has token id {max(by_id)} but the model's vocabulary has only {vocab_size} rows",
            file=str(model_dir),
        )
    added = {item["content"]: item for item in backend.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            # llama.cpp's filler for embedding rows the tokenizer never produces
            tokens.append(f"[PAD{index}]")
            types.append(int(TokenType.UNUSED))
        elif token in added:
            tokens.append(token)
            types.append(int(TokenType.CONTROL if added[token].get("special") else TokenType.USER_DEFINED))
        else:
            tokens.append(token)
            types.append(int(TokenType.NORMAL))
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in backend["model"].get("merges", [])]
    special_ids = {
        kind: token_id
        for kind in ("bos", "eos", "unk", "pad")
        if (token_id := getattr(tokenizer, f"{kind}_token_id", None)) is not None
    }
    add_bos, add_eos = _added_specials(tokenizer)
    templates = tokenizer.chat_template
    if isinstance(templates, str):
        templates = {"default": templates}
    return _Vocab(tokens, types, merges, pre, special_ids, add_bos, add_eos, dict(templates or {}))


def _added_specials(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding adds BOS in front and EOS at the end, read off the tokenizer's behaviour."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos and plain[:1] != [bos]
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos and plain[-1:] != [eos]
    return add_bos, add_eos


def compare_with_gguf(model_dir: str | Path, gguf_path: str | Path, prompts: list[list[int]]) -> dict:
    """Run the original folder and its GGUF export side by side (float32, CPU) on the same token ids.

    Args:
        model_dir: the transformers folder that was exported.
        gguf_path: the GGUF file, loaded back through transformers' GGUF reader.
        prompts: token-id prompts, each non-empty.

    Returns:
        ``max_abs_logit_diff`` (over every prompt position and vocabulary entry), ``mean_kld`` / ``max_kld`` (the
        KL divergence of the export's next-token distribution from the original's, per prompt position, as in
        llama.cpp's KLD statistics), ``top1_agreement`` (share of prompt positions whose argmax agrees) and
        ``greedy_match`` (whether 16 greedily generated tokens are
        identical for every prompt; end-of-sequence does not stop generation, so both always produce 16), plus
        ``greedy_matches``, the same verdict per prompt.

    Raises:
        ValueError: for no prompts or an empty one.
        ModelError: when either model cannot be loaded.
    """
    import torch

    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("compare_with_gguf needs at least one prompt and no empty prompt")
    gguf_path = Path(gguf_path)
    runs = []
    for folder, gguf_file in ((Path(model_dir), None), (gguf_path.parent, gguf_path.name)):
        model = _load_causal_lm(folder, gguf_file)
        runs.append([_logits_and_greedy(model, prompt, 16) for prompt in prompts])
        del model  # keep one model in memory at a time
    ref_all = torch.cat([logits for logits, _ in runs[0]])
    out_all = torch.cat([logits for logits, _ in runs[1]])
    kld = token_kl_divergence(ref_all, out_all)
    greedy_matches = [ref[1] == out[1] for ref, out in zip(*runs)]
    return {
        "max_abs_logit_diff": float((ref_all - out_all).abs().max()),
        "mean_kld": float(kld.mean()),
        "max_kld": float(kld.max()),
        "top1_agreement": float((ref_all.argmax(-1) == out_all.argmax(-1)).float().mean()),
        "greedy_match": all(greedy_matches),
        "greedy_matches": greedy_matches,
    }


def token_kl_divergence(reference: Any, other: Any) -> Any:
    """KL(reference || other) of the next-token distributions, one value per row of two ``[positions, vocab]``
    logit tensors (float64, so near-identical models give 0, not rounding noise)."""
    import torch

    ref = torch.log_softmax(reference.double(), -1)
    out = torch.log_softmax(other.double(), -1)
    return (ref.exp() * (ref - out)).sum(-1).clamp_min(0.0)


def _load_causal_lm(folder: Path, gguf_file: str | None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import quiet_transformers

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load the model ({str(exc).splitlines()[0]})", file=str(folder)) from exc
    return model.to("cpu").eval()


def _logits_and_greedy(model: Any, prompt: list[int], steps: int) -> tuple[Any, list[int]]:
    """The prompt's float32 logits and ``steps`` argmax tokens after it (no stop token, so counts always match)."""
    import inspect

    import torch

    # transformers 5 renamed the KV-cache argument from past_key_values to cache.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        logits = out.logits[0].float()
        generated: list[int] = []
        for _ in range(steps):
            generated.append(int(out.logits[0, -1].argmax()))
            cache = getattr(out, cache_arg, None)
            out = model(input_ids=torch.tensor([generated[-1:]]), use_cache=True, **{cache_arg: cache})
    return logits, generated
