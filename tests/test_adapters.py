"""Every way to update a model, on tiny models: what trains, how much, that it learns, that it saves and loads."""

from __future__ import annotations

import pytest
import torch
from conftest import causal_config, classification_config

from tunelab.config import load_config
from tunelab.data.pipeline import build_splits
from tunelab.errors import ConfigError
from tunelab.models.adapters import count_parameters, load_trained, model_dir_name, save_trained, unwrap
from tunelab.models.load import load_backbone, load_tokenizer, resolve_backbone
from tunelab.problems import build_problem
from tunelab.training.optim import build_optimizer
from tunelab.training.setup import build_model

CAUSAL = ["lora", "dora", "rslora", "ia3", "prefix_tuning", "prompt_tuning", "ln_tuning", "freeze", "head_only", "none"]
CLASSIFY = ["lora", "ia3", "prompt_tuning", "ln_tuning", "bitfit", "freeze", "head_only", "none"]


def training_section(method: str) -> dict:
    extra = {
        "dora": {"adapter": "lora", "use_dora": True},
        "rslora": {"adapter": "lora", "use_rslora": True},
        "freeze": {"adapter": "freeze", "trainable_layers": 1},
    }
    return extra.get(method, {"adapter": method})


def setup_for(model_path, data, tmp_path, method, problem_type):
    make = causal_config if problem_type == "causal_lm" else classification_config
    cfg = load_config(base=make(model_path, data, tmp_path, training=training_section(method)))
    tok = load_tokenizer(resolve_backbone(cfg.llm_backbone))
    problem = build_problem(cfg, tok)
    splits = build_splits(cfg, problem, use_cache=False)
    torch.manual_seed(0)
    return cfg, problem, splits, build_model(cfg, problem, str(model_path))


def linear_layers(model):
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, torch.nn.Linear)}


def analytic_trainable(method: str, base: torch.nn.Module, cfg, classification: bool) -> int:
    """The trainable-parameter count each method should give, from the backbone's shapes alone."""
    t = cfg.training
    config = base.config
    head = 0
    if classification:
        head_module = getattr(base, "classifier", None) or base.score
        head = sum(p.numel() for p in head_module.parameters())
    linears = {
        n: m
        for n, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and n.split(".")[0] not in ("classifier", "score", "lm_head")
    }
    if method in ("lora", "rslora"):
        return head + sum(t.lora_r * (m.in_features + m.out_features) for m in linears.values())
    if method == "dora":
        return head + sum(t.lora_r * (m.in_features + m.out_features) + m.out_features for m in linears.values())
    if method == "ia3":
        # peft's defaults: llama k_proj, v_proj, down_proj (feed-forward: scales its input); bert key, value and
        # every *output.dense (attention and feed-forward outputs, both treated as feed-forward).
        keys = ("k_proj", "v_proj") if config.model_type == "llama" else ("attention.self.key", "attention.self.value")
        ff = "down_proj" if config.model_type == "llama" else "output.dense"
        total = sum(m.out_features for n, m in linears.items() if n.endswith(keys))
        total += sum(m.in_features for n, m in linears.items() if n.endswith(ff))
        return head + total
    if method == "prompt_tuning":
        return head + t.num_virtual_tokens * config.hidden_size
    if method == "prefix_tuning":
        kv_dim = (
            config.hidden_size
            // config.num_attention_heads
            * getattr(config, "num_key_value_heads", config.num_attention_heads)
        )
        return head + t.num_virtual_tokens * config.num_hidden_layers * 2 * kv_dim
    if method == "ln_tuning":
        norms = [m for m in base.modules() if "Norm" in type(m).__name__]
        return head + sum(p.numel() for m in norms for p in m.parameters(recurse=False))
    if method == "bitfit":
        return head + sum(
            p.numel()
            for n, p in base.named_parameters()
            if n.endswith(".bias") and n.split(".")[0] not in ("classifier", "score")
        )
    if method == "freeze":
        layers = [
            m for m in base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == config.num_hidden_layers
        ][0]
        return head + sum(p.numel() for p in layers[-1].parameters())
    if method == "head_only":
        return head if classification else base.get_output_embeddings().weight.numel()
    return count_parameters(base).total


def fresh_base(model_path, problem, classification):
    torch.manual_seed(0)
    return load_backbone(str(model_path), problem.auto_class(), **problem.model_kwargs())


@pytest.mark.parametrize(
    "problem_type,method", [("causal_lm", m) for m in CAUSAL] + [("classification", m) for m in CLASSIFY]
)
def test_adapter_matrix(tiny_llama, tiny_bert, qa_jsonl, sentiment_csv, tmp_path, problem_type, method):
    classification = problem_type == "classification"
    model_path, data = (tiny_bert, sentiment_csv) if classification else (tiny_llama, qa_jsonl)
    cfg, problem, splits, model = setup_for(model_path, data, tmp_path, method, problem_type)

    # 1. only the intended parameters train, and as many as the shapes say
    expected = analytic_trainable(method, fresh_base(model_path, problem, classification), cfg, classification)
    assert count_parameters(model).trainable == expected
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    markers = {
        "lora": "lora_",
        "dora": "lora_",
        "rslora": "lora_",
        "ia3": "ia3_",
        "prefix_tuning": "prompt_encoder",
        "prompt_tuning": "prompt_encoder",
        "ln_tuning": "norm",
        "bitfit": ".bias",
        "freeze": ".1.",
    }
    if method in markers:
        head_names = ("classifier", "score")
        for name in trainable:
            assert markers[method] in name.lower() or any(h in name for h in head_names), name

    # 2. one optimizer step lowers the loss on a fixed batch
    batch = problem.collate(splits.train, list(range(8)), train=False)
    lr = 1e-3  # Adam moves every parameter by about lr on its first step: small enough not to overshoot
    optimizer = build_optimizer(model, cfg.training.model_copy(update={"learning_rate": lr}))
    model.train()
    for module in model.modules():  # no dropout: compare the same function before and after
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    loss_sum, count = problem.loss(model, batch)
    (loss_sum / count).backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        after, _ = problem.loss(model, batch)
    assert float(after / count) < float(loss_sum.detach() / count)

    # 3. save -> load reproduces the outputs
    model.eval()
    folder = tmp_path / model_dir_name(cfg.training.adapter)
    save_trained(model, folder, cfg.training.adapter)
    source = folder if cfg.training.adapter == "none" else model_path
    reloaded = load_trained(fresh_base(source, problem, classification), folder, cfg.training.adapter).eval()
    with torch.no_grad():
        a, _ = problem.loss(model, batch)
        b, _ = problem.loss(reloaded, batch)
    assert torch.allclose(a, b, rtol=1e-5), (float(a), float(b))


def test_bitfit_is_refused_on_a_backbone_without_biases(tiny_llama, qa_jsonl, tmp_path):
    with pytest.raises(ConfigError, match="has none"):
        setup_for(tiny_llama, qa_jsonl, tmp_path, "bitfit", "causal_lm")


def test_freeze_patterns_and_bad_patterns(tiny_llama, qa_jsonl, tmp_path):
    cfg = load_config(
        base=causal_config(
            tiny_llama, qa_jsonl, tmp_path, training={"adapter": "freeze", "trainable_patterns": r"\.norm\.weight$"}
        )
    )
    tok = load_tokenizer(str(tiny_llama))
    model = build_model(cfg, build_problem(cfg, tok), str(tiny_llama))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.norm.weight"]
    bad = load_config(
        base=causal_config(
            tiny_llama, qa_jsonl, tmp_path, training={"adapter": "freeze", "trainable_patterns": "nothing_here"}
        )
    )
    with pytest.raises(ConfigError, match="matches no parameter"):
        build_model(bad, build_problem(bad, tok), str(tiny_llama))


def test_config_refuses_misfits():
    from tunelab.errors import ConfigError as Err

    with pytest.raises(Err, match="cannot be trained with 'none'"):
        load_config(base={"architecture": {"backbone_dtype": "int4"}, "training": {"adapter": "none"}})
    with pytest.raises(Err, match="packing"):
        load_config(base={"training": {"adapter": "prompt_tuning", "packing": True}})
    with pytest.raises(Err, match="trains nothing"):
        load_config(base={"training": {"adapter": "freeze"}})


@pytest.fixture(scope="module")
def llama64(tmp_path_factory, tiny_tokenizer_dir):
    """A 2-layer Llama 64 wide: bitsandbytes' CPU 4-bit kernels work on blocks of 64 input features."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    path = tmp_path_factory.mktemp("models") / "llama64"
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_qlora_on_cpu_trains_and_reloads(llama64, qa_jsonl, tmp_path):
    """LoRA on a 4-bit NF4 backbone (bitsandbytes runs NF4 on CPU): it trains across evaluations, reloads in 4-bit."""
    pytest.importorskip("bitsandbytes")
    from tunelab.infer.model import load_run
    from tunelab.training.loop import train

    cfg = load_config(
        base=causal_config(
            llama64,
            qa_jsonl,
            tmp_path,
            training={"max_steps": 6, "eval_steps": 2},
            architecture={"backbone_dtype": "int4", "quantization": "nf4"},
            prediction={"max_length_inference": 4},
        )
    )
    result = train(cfg)
    assert result.metrics["after"]["loss"] < result.metrics["before"]["loss"]
    loaded = load_run(result.run_dir)
    base = unwrap(loaded.model)
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW", "Lion", "Adafactor"])
def test_extra_optimizers_step(tiny_llama, qa_jsonl, tmp_path, name):
    if name != "Adafactor":
        pytest.importorskip("bitsandbytes")
    cfg, problem, splits, model = setup_for(tiny_llama, qa_jsonl, tmp_path, "lora", "causal_lm")
    optimizer = build_optimizer(model, cfg.training.model_copy(update={"optimizer": name, "learning_rate": 1e-2}))
    batch = problem.collate(splits.train, list(range(8)), train=False)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    loss_sum, count = problem.loss(model, batch)
    (loss_sum / count).backward()
    optimizer.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
