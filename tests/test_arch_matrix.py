"""Any architecture transformers loads: tiny random models of many architectures, built from configs (no download).

Each causal LM (llama, gpt_neox, qwen2, gemma, phi3, gpt2, mistral) and classifier (bert, distilbert, roberta,
deberta-v2) trains 2 steps with LoRA and with its other method (full / head-only), then the run is reloaded,
predicts a file, and its merged export passes the parity check. gpt_neox and gpt2 get a tokenizer without a chat
template, as pythia and gpt2 have: they run on the plain fallback template, chat included.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ASSETS, causal_config, classification_config

from tunelab.config import load_config
from tunelab.data.prompts import BUILTIN_TEMPLATES
from tunelab.errors import ModelError
from tunelab.infer.export import export_run
from tunelab.infer.model import load_run
from tunelab.models.adapters import apply_adapter, unwrap
from tunelab.models.heads import classification_head, head_parameter_names, is_linear
from tunelab.training.loop import train

# Kept small so the whole matrix runs in CI within minutes: no "before" evaluation, 2 validation rows, short parity
# generations (the parity logic itself is unchanged).
FAST = {"evaluate_before_training": False, "max_steps": 2}
SIZE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _causal_configs(vocab: int, pad: int, bos: int, eos: int) -> dict:
    from transformers import (
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
    )

    ids = {"vocab_size": vocab, "pad_token_id": pad, "bos_token_id": bos, "eos_token_id": eos}
    decoder = {**SIZE, **ids, "num_key_value_heads": 1, "max_position_embeddings": 512}
    return {
        "llama": LlamaConfig(**decoder, tie_word_embeddings=True),
        "gpt_neox": GPTNeoXConfig(**SIZE, **ids, max_position_embeddings=512, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**decoder, tie_word_embeddings=True),
        "gemma": GemmaConfig(**decoder, head_dim=16),
        "phi3": Phi3Config(**{**decoder, "num_key_value_heads": 2}, original_max_position_embeddings=512),
        "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=512, **ids),
        "mistral": MistralConfig(**decoder, sliding_window=None, tie_word_embeddings=False),
    }


def _encoder_configs(vocab: int, pad: int) -> dict:
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig

    return {
        "bert": BertConfig(**SIZE, vocab_size=vocab, pad_token_id=pad, max_position_embeddings=512),
        "distilbert": DistilBertConfig(
            vocab_size=vocab, dim=32, hidden_dim=64, n_layers=2, n_heads=2, pad_token_id=pad
        ),
        # RoBERTa counts positions from pad_token_id + 1.
        "roberta": RobertaConfig(**SIZE, vocab_size=vocab, pad_token_id=pad, max_position_embeddings=520),
        "deberta-v2": DebertaV2Config(
            **SIZE,
            vocab_size=vocab,
            pad_token_id=pad,
            max_position_embeddings=512,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
        ),
    }


CAUSAL = ["llama", "gpt_neox", "qwen2", "gemma", "phi3", "gpt2", "mistral"]
ENCODERS = ["bert", "distilbert", "roberta", "deberta-v2"]
NO_TEMPLATE = ("gpt_neox", "gpt2")  # as pythia and gpt2 ship: no chat template
# What tunelab's GGUF exporter writes; llama's round trip is tests/test_export.py's (each takes ~10 s).
GGUF = ("mistral",)


class Zoo:
    """Tiny model folders, each built on first use and shared by the module's tests."""

    def __init__(self, root: Path):
        from transformers import AutoTokenizer

        self.root = root
        self.tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-tokenizer")
        tok = self.tokenizer
        self.causal = _causal_configs(len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
        self.encoders = _encoder_configs(len(tok), tok.pad_token_id)
        self.built: dict[str, Path] = {}

    def __call__(self, arch: str) -> Path:
        if arch not in self.built:
            from transformers import AutoModel, AutoModelForCausalLM

            torch.manual_seed(0)
            path = self.root / arch
            if arch in self.causal:
                model = AutoModelForCausalLM.from_config(self.causal[arch])
            else:
                model = AutoModel.from_config(self.encoders[arch])  # a bare encoder: the head is made by training
            model.save_pretrained(path)
            tokenizer = self.tokenizer
            if arch in NO_TEMPLATE:
                tokenizer = type(tokenizer).from_pretrained(ASSETS / "tiny-tokenizer")
                tokenizer.chat_template = None
            tokenizer.save_pretrained(path)
            self.built[arch] = path
        return self.built[arch]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(autouse=True)
def short_parity(monkeypatch):
    import tunelab.infer.export as export

    monkeypatch.setattr(export, "PARITY_NEW_TOKENS", 6)


@pytest.fixture(scope="module")
def prompts_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("prompts")
    questions = folder / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": f"what is {i} and 2?"}) + "\n" for i in range(3)))
    texts = folder / "texts.csv"
    texts.write_text("text\ngreat movie great\nterrible movie terrible\n")
    return {"causal_lm": questions, "classification": texts}


def _chat(run_dir: Path) -> str:
    from rich.console import Console

    from tunelab.infer.chat import chat_repl

    turns = iter(["what is 1 and 2?", "and 3?"])

    def read(_prompt: str) -> str:
        try:
            return next(turns)
        except StopIteration:
            raise EOFError from None

    sink = io.StringIO()
    chat_repl(run_dir, Console(file=sink, width=200), read=read)
    return sink.getvalue()


@pytest.mark.parametrize("method", ["lora", "none"])
@pytest.mark.parametrize("arch", CAUSAL)
def test_causal_lm_trains_reloads_predicts_and_exports(zoo, qa_jsonl, prompts_files, tmp_path, arch, method):
    from tunelab.api import predict_file

    cfg = causal_config(
        zoo(arch),
        qa_jsonl,
        tmp_path,
        experiment_name=f"{arch}-{method}",
        dataset={"validation_size": 2},
        training={**FAST, "adapter": method, "learning_rate": 1e-3},
        prediction={"max_length_inference": 4},
        environment={"release_cpu_memory": False},
    )
    run = train(load_config(base=cfg)).run_dir
    assert (run / ("adapter" if method == "lora" else "model")).is_dir()
    saved_template = (run / "tokenizer" / "chat_template.jinja").read_text()
    prompt = load_run(run).problem.renderer.prompt_text([{"role": "user", "content": "hi"}])
    if arch in NO_TEMPLATE:
        assert saved_template == BUILTIN_TEMPLATES["plain"]  # the fallback is recorded with the run
        assert prompt == "User: hi\nAssistant:"
    else:
        assert saved_template != BUILTIN_TEMPLATES["plain"] and prompt.startswith("<|im_start|>user\nhi")

    if arch == "gpt2" and method == "none":
        # A run saved without a template (trained before the plain fallback) still loads as it trained: plain text.
        old = tmp_path / "old-run"
        shutil.copytree(run, old)
        (old / "tokenizer" / "chat_template.jinja").unlink()
        renderer = load_run(old).problem.renderer
        assert not renderer.use_template and renderer.prompt_text([{"role": "user", "content": "hi"}]) == "hi<|im_end|>"

    out = tmp_path / "predictions.csv"
    assert predict_file(run, prompts_files["causal_lm"], out) == 3
    assert "prediction" in out.read_text().splitlines()[0]
    assert _chat(run).count("model>") == 2

    _, parity = export_run(run, "merged")
    assert parity["passed"], parity
    if method != "lora":
        return
    if arch == "llama":
        return
    if arch in GGUF:
        _, gguf = export_run(run, "gguf", quant="f32")
        assert gguf["passed"], gguf
    else:
        with pytest.raises(ModelError, match="supports the architectures llama, mistral") as info:
            export_run(run, "gguf")
        assert f"'{arch}'" in str(info.value)


@pytest.mark.parametrize("method", ["lora", "head_only"])
@pytest.mark.parametrize("arch", ENCODERS)
def test_classifier_trains_reloads_predicts_and_exports(zoo, sentiment_csv, prompts_files, tmp_path, arch, method):
    from tunelab.api import predict_file

    cfg = classification_config(
        zoo(arch),
        sentiment_csv,
        tmp_path,
        experiment_name=f"{arch}-{method}",
        dataset={"validation_size": 4},
        training={**FAST, "adapter": method},
        environment={"release_cpu_memory": False},
    )
    run = train(load_config(base=cfg)).run_dir
    if method == "lora":
        adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
        head = sorted(classification_head(unwrap(load_run(run).model)))
        assert set(head) <= set(adapter["modules_to_save"])
    out = tmp_path / "predictions.csv"
    assert predict_file(run, prompts_files["classification"], out) == 2
    header = out.read_text().splitlines()[0]
    assert "prediction" in header
    _, parity = export_run(run, "merged")
    assert parity["passed"] and parity["labels_match"], parity


def _lora_targets(model) -> set[str]:
    return {
        name.removesuffix(".base_layer").removeprefix("base_model.model.")
        for name, _ in model.named_modules()
        if name.endswith(".base_layer")
    }


@pytest.mark.parametrize("arch", CAUSAL + ENCODERS)
def test_lora_adapts_every_backbone_linear_layer_and_the_head_trains_in_full(zoo, arch, tmp_path):
    """LoRA's default targets are every linear layer of the backbone (fused ones too), never a head; a
    classification head is exactly what transformers initialises anew on a bare checkpoint, and it trains in full."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    classification = arch in ENCODERS
    auto = AutoModelForSequenceClassification if classification else AutoModelForCausalLM
    model, info = auto.from_pretrained(
        zoo(arch), output_loading_info=True, **({"num_labels": 2} if classification else {})
    )
    problem_type = "classification" if classification else "causal_lm"
    heads = head_parameter_names(model, problem_type)
    head_modules = set(classification_head(model)) if classification else set()
    if classification:
        assert heads == set(info["missing_keys"]), (heads, info["missing_keys"])
    linear = {
        name
        for name, m in model.named_modules()
        if is_linear(m)
        and not any(name == h or name.startswith(h + ".") for h in head_modules)
        and m is not model.get_output_embeddings()
    }
    fused = {"gpt_neox": "query_key_value", "gpt2": "c_attn", "phi3": "qkv_proj"}
    if arch in fused:
        assert any(name.endswith(fused[arch]) for name in linear)
    base = {"problem_type": problem_type, "llm_backbone": str(zoo(arch)), "output_directory": str(tmp_path)}
    wrapped = apply_adapter(model, load_config(base=base))
    assert _lora_targets(wrapped) == linear
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    lora = {name for name in trainable if "lora_" in name}
    assert {name.split(".lora_")[0].removeprefix("base_model.model.") for name in lora} == linear
    full = trainable - lora
    if classification:
        # every head parameter trains in full (peft keeps a trained copy of each head module)
        trained_heads = {
            name.replace(".modules_to_save.default", "").removeprefix("base_model.model.") for name in full
        }
        assert trained_heads == heads
    else:
        assert not full


def test_plain_template_fallback_rules(zoo):
    """auto + no template -> the plain template; a named template or H2O-style text fields win over it."""
    from transformers import AutoTokenizer

    from tunelab.data.prompts import PromptRenderer, apply_template_setting

    def renderer(**dataset):
        cfg = load_config(base={"llm_backbone": str(zoo("gpt2")), "dataset": dataset})
        tokenizer = AutoTokenizer.from_pretrained(zoo("gpt2"))
        apply_template_setting(cfg, tokenizer)
        return PromptRenderer(cfg, tokenizer)

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert renderer().prompt_text(chat) == "be brief\n\nUser: hi\nAssistant:"
    full = renderer().segments([*chat, {"role": "assistant", "content": "hello"}])
    assert full[-1] == (" hello<|im_end|>", True)  # the answer ends with EOS, as the model should learn to stop
    assert renderer(chat_template="alpaca").prompt_text(chat[1:]).startswith("### Instruction:")
    h2o = renderer(text_prompt_start="<|prompt|>", text_answer_separator="<|answer|>")
    assert not h2o.use_template and h2o.prompt_text(chat[1:]) == "<|prompt|>hi<|im_end|><|answer|>"
    assert not renderer(use_chat_template=False).use_template
