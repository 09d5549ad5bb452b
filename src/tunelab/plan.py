"""The memory and compute planner (``tunelab plan``, and a line before every run).

Weights, gradients and optimizer states are counted from the real parameters (the backbone is built on the meta
device, the adapter applied, nothing loaded). Activation memory is measured, not guessed: one transformer layer of
the backbone at its real width runs a forward pass on CPU while ``saved_tensors_hooks`` adds up every tensor autograd
keeps for the backward pass (parameters excluded); two sequence lengths give the per-token and per-token² terms, which
scale to all layers and the batch. The logits of the trained positions, a reference model (preference tuning) and a
fixed runtime overhead complete the peak.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.io import user_cache_dir, write_json_atomic

GB = 1024**3
# Calibrated on this project's CPU probes (bench/planner.py): what a training process holds beyond tensors
# (allocator slack, tokenizer, data, autograd bookkeeping), and the share of activations alive at once.
CPU_OVERHEAD_BYTES = 32 * 1024**2
CUDA_OVERHEAD_BYTES = 400 * 1024**2


@dataclass
class Plan:
    """Predicted memory (bytes) and compute of one training configuration."""

    parameters: int
    trainable: int
    batch_size: int
    seq_len: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    reference: int
    overhead: int
    flops_per_token: float
    device: str
    budget: int
    step_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    generation: int = 0  # online RL: the KV cache and logits of sampling completions

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.reference
            + self.generation
            + self.overhead
        )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "tokens_per_step": self.tokens_per_step}

    def summary(self) -> str:
        time_part = f", about {self.step_seconds:.2f} s per micro-batch" if self.step_seconds else ""
        fits = "fits" if self.total <= self.budget else "DOES NOT FIT"
        return (
            f"plan: peak {self.total / GB:.2f} GB ({fits} in {self.budget / GB:.1f} GB): weights "
            f"{self.weights / GB:.2f}, gradients {self.gradients / GB:.2f}, optimizer {self.optimizer / GB:.2f}, "
            f"activations {self.activations / GB:.2f}, logits {self.logits / GB:.2f}"
            + (f", reference {self.reference / GB:.2f}" if self.reference else "")
            + (f", generation {self.generation / GB:.2f}" if self.generation else "")
            + f" GB; batch {self.batch_size} x "
            f"{self.seq_len} tokens{time_part}"
        )


# ---------------------------------------------------------------------------------------------------------- pieces
def dtype_bytes(name: str) -> float:
    return {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "int4": 0.5}[name]


def meta_model(cfg: RunConfig, problem: Any, source: str, layers: int | None = None) -> Any:
    """The backbone with the config's adapter, built on the meta device (no weights read, no memory used)."""
    from tunelab.models.adapters import apply_adapter
    from tunelab.models.load import load_model_config

    config = load_model_config(source, **problem.model_kwargs())
    if layers is not None:
        config.num_hidden_layers = layers
    with torch.device("meta"):
        model = problem.auto_class().from_config(config)
    return apply_adapter(model, cfg)


def weight_bytes(model: Any, cfg: RunConfig) -> tuple[int, int, int]:
    """(bytes of all weights, parameter count, trainable count). Quantised backbones keep embeddings, norms and
    the head in the compute dtype; their linear layers take 4 or 8 bits plus block scales."""
    arch = cfg.architecture
    quantised = arch.backbone_dtype in ("int8", "int4")
    frozen_dtype = dtype_bytes("float32" if quantised else arch.backbone_dtype)
    total = params = trainable = 0
    seen: set[int] = set()
    linear_weights = {
        id(m.weight)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith(("lm_head", "score", "classifier"))
    }
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel()
        params += n
        if param.requires_grad:
            trainable += n
            total += n * 4  # trained parameters are kept in float32
        elif quantised and id(param) in linear_weights:
            bits = 4 if arch.backbone_dtype == "int4" else 8
            scales = (1 / 64 + 4 / (64 * 256)) if arch.double_quantization and bits == 4 else 4 / 64
            total += int(n * (bits / 8 + (scales if bits == 4 else 4 / 4096)))
        else:
            total += int(n * frozen_dtype)
    return total, params, trainable


def unpaged_embedding_bytes(model: Any, cfg: RunConfig, source: str) -> int:
    """Bytes of a frozen input-embedding table that stay on disk on CPU.

    transformers memory-maps safetensors weights when no dtype conversion is needed; a lookup table that nothing
    multiplies in full (frozen, not tied to the output head) then only has the pages of the tokens used in memory.
    """
    if torch.cuda.is_available() or cfg.architecture.backbone_dtype in ("int8", "int4"):
        return 0
    embeddings = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embeddings is None or embeddings.weight.requires_grad or (head is not None and head.weight is embeddings.weight):
        return 0
    from tunelab.models.load import load_model_config

    stored = str(getattr(load_model_config(source), "dtype", None) or "float32").replace("torch.", "")
    if stored != cfg.architecture.backbone_dtype:
        return 0  # converted while loading: every page is written, so every page is resident
    return embeddings.weight.numel() * int(dtype_bytes(cfg.architecture.backbone_dtype))


def optimizer_bytes(trainable: int, name: str) -> int:
    """Optimizer state for ``trainable`` float32 parameters."""
    per_param = {
        "AdamW": 8,
        "Adam": 8,
        "SGD": 4,
        "RMSprop": 4,
        "Adadelta": 8,
        "AdamW8bit": 2,
        "PagedAdamW": 8,
        "PagedAdamW8bit": 2,
        "Lion": 4,
        "Adafactor": 0.1,
    }[name]
    return int(trainable * per_param)


@dataclass
class ActivationProbe:
    """Bytes autograd keeps for one sequence: per transformer layer, and outside the layers (embeddings, final norm),
    without and with gradient checkpointing."""

    per_layer: float
    fixed: float
    per_layer_checkpointed: float
    fixed_checkpointed: float


def probe_activations(cfg: RunConfig, problem: Any, source: str, seq_len: int) -> ActivationProbe:
    """Measure the activations autograd saves for one sequence of ``seq_len`` tokens.

    Replicas of the backbone with one and two layers, at its real width and dtype and with the configured adapter, run
    a forward pass while ``saved_tensors_hooks`` add up every saved tensor (parameters excluded); the difference of
    the two is the cost of a layer, the rest is what does not repeat per layer.
    """
    from tunelab.models.adapters import apply_adapter
    from tunelab.models.load import load_model_config

    length = min(seq_len, 2048)  # beyond this, scale: attention with a fused kernel is linear in the length
    dtype = {"int8": "float32", "int4": "float32"}.get(cfg.architecture.backbone_dtype, cfg.architecture.backbone_dtype)

    def saved_bytes(layers: int, checkpointing: bool) -> float:
        config = load_model_config(source, **problem.model_kwargs())
        config.num_hidden_layers = layers
        torch.manual_seed(0)
        model = problem.auto_class().from_config(config, dtype=getattr(torch, dtype))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = apply_adapter(model, cfg).train()
        parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in parameters:
                storages[storage.data_ptr()] = storage.nbytes()
            return t

        ids = torch.randint(0, max(config.vocab_size - 1, 2), (1, length))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _body(model)(input_ids=ids, attention_mask=torch.ones_like(ids))
        return sum(storages.values()) * seq_len / length

    one, two = saved_bytes(1, False), saved_bytes(2, False)
    per_layer = max(two - one, 0.0)
    if cfg.architecture.gradient_checkpointing:
        one_c, two_c = saved_bytes(1, True), saved_bytes(2, True)
        per_layer_c = max(two_c - one_c, 0.0)
        return ActivationProbe(per_layer, max(one - per_layer, 0.0), per_layer_c, max(one_c - per_layer_c, 0.0))
    return ActivationProbe(per_layer, max(one - per_layer, 0.0), per_layer, max(one - per_layer, 0.0))


def _body(model: Any) -> Any:
    """The part of the model whose activations scale with layers (the decoder/encoder without the head)."""
    from tunelab.models.adapters import unwrap

    base = unwrap(model)
    try:
        decoder = base.get_decoder()
        if decoder is not None and decoder is not base:
            return decoder
    except (AttributeError, NotImplementedError):
        pass
    return getattr(base, base.base_model_prefix)


def device_flops(dtype: str = "float32") -> tuple[str, float]:
    """The device name and its measured ``dtype`` matmul throughput (FLOP/s), cached per device and dtype.

    The fastest of several timed products counts: a measurement taken while something else runs is not the peak.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    key = f"{name}-{dtype}"
    cache = user_cache_dir() / "matmul_peak.json"  # (device_flops.json held single contended timings)
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in known:
        return name, known[key]
    n = 1024 if device == "cpu" else 8192
    kind = getattr(torch, dtype)
    a, b = (torch.randn(n, n, device=device).to(kind) for _ in range(2))
    a @ b
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < 0.5:
        tick = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - tick)
    flops = 2 * n**3 / best
    known[key] = flops
    write_json_atomic(cache, known)
    return name, flops


def memory_budget(share: float) -> int:
    """``share`` of the device's memory: the GPU's, else the machine's RAM."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory * share)
    import psutil

    return int(psutil.virtual_memory().total * share)


# ---------------------------------------------------------------------------------------------------------- plan
def build_plan(
    cfg: RunConfig,
    problem: Any,
    source: str,
    seq_len: int,
    trained_per_row: float | None = None,
    batch_size: int | None = None,
    probe: tuple[float, float, float] | None = None,
) -> Plan:
    """Predict the peak memory and the compute of training ``cfg`` on this device.

    Args:
        cfg: the run config.
        problem: its problem (for the head and model class).
        source: the resolved backbone (a folder or hub id).
        seq_len: tokens per row of the longest batch (tokenizer.max_length with packing).
        trained_per_row: tokens per row that carry loss, at the high end of the data (the LM head runs only
            there); default: half of ``seq_len``.
        batch_size: rows per micro-batch (default: the config's).
        probe: reuse an activation probe result.
    """
    batch = batch_size or (cfg.training.batch_size if isinstance(cfg.training.batch_size, int) else 1)
    model = meta_model(cfg, problem, source)
    weights, params, trainable = weight_bytes(model, cfg)
    weights -= unpaged_embedding_bytes(model, cfg, source)
    config = model.config
    layers = config.num_hidden_layers
    measured = probe or probe_activations(cfg, problem, source, seq_len)
    if cfg.architecture.gradient_checkpointing:
        # Each layer keeps its input; in the backward pass one layer at a time is recomputed in full.
        per_sequence = measured.fixed_checkpointed + layers * measured.per_layer_checkpointed + measured.per_layer
    else:
        per_sequence = measured.fixed + layers * measured.per_layer
    sequences = batch * sequences_per_row(cfg)
    activations = sequences * per_sequence
    vocab = getattr(config, "vocab_size", 0)
    per_row = trained_per_row if trained_per_row is not None else seq_len / 2
    lm = cfg.spec.generative
    head_rows = sequences * min(per_row, seq_len) if lm else sequences
    if lm and cfg.training.chunked_loss:
        head_rows = min(head_rows, CHUNK_ROWS)  # the LM head and loss run a chunk of positions at a time
    out_dim = vocab if lm else getattr(config, "num_labels", 2)
    logits = int(head_rows * out_dim * 4 * 2)  # float32 logits and their log-softmax (the gradient reuses one)
    reference, generation, notes = reference_and_generation(cfg, model, params, batch, seq_len)
    gradients = trainable * 4
    flops_per_token = _flops_per_token(params, trainable, config, seq_len, cfg)
    from tunelab.models.load import matmul_dtype

    name, flops = device_flops(matmul_dtype(cfg.architecture))
    step_seconds = flops_per_token * sequences * seq_len / (flops * 0.4)  # a real step reaches ~40% of the matmul peak
    overhead = CUDA_OVERHEAD_BYTES if torch.cuda.is_available() else CPU_OVERHEAD_BYTES
    return Plan(
        params,
        trainable,
        batch,
        seq_len,
        weights,
        gradients,
        optimizer_bytes(trainable, cfg.training.optimizer),
        int(activations),
        logits,
        reference,
        overhead,
        flops_per_token,
        name,
        memory_budget(cfg.environment.memory_budget),
        step_seconds,
        notes,
        generation,
    )


CHUNK_ROWS = 512  # models.fused_loss.DEFAULT_CHUNK


def sequences_per_row(cfg: RunConfig) -> int:
    """Sequences the model reads per data row: a chosen and a rejected one for pairs, the completions for RL."""
    return cfg.spec.sequences_per_row(cfg)


def reference_and_generation(
    cfg: RunConfig, model: Any, params: int, batch: int, seq_len: int
) -> tuple[int, int, list[str]]:
    """Memory of the reference model (preference tuning, RL) and of sampling completions (RL), with notes.

    A peft-adapted policy is its own reference (adapter switched off): nothing extra. Full fine-tuning and the
    selective methods load a frozen copy of the backbone, unless dpo precomputes the reference log-probabilities
    (then the copy is freed before training starts). RL adds the KV cache of its sampled completions, the logits of
    one sampling step and, with ``rl.reward_model``, the reward run's weights.
    """
    from tunelab.models.adapters import is_peft_model

    notes: list[str] = []
    reference = generation = 0
    uses_reference = cfg.spec.reference(cfg)
    if uses_reference != "none":
        if is_peft_model(model):
            notes.append("reference model: the backbone with the adapter switched off (no second copy)")
        elif uses_reference == "precomputed":
            notes.append("reference log-probabilities precomputed before training (the frozen copy is freed)")
        else:
            reference = int(params * dtype_bytes(cfg.architecture.backbone_dtype))
            notes.append("reference model: a frozen copy of the backbone (full or selective fine-tuning)")
    sampling = cfg.spec.sampling(cfg)
    if sampling is not None:
        from tunelab.generation.generate import kv_bytes_per_token

        rows = batch * sampling.completions_per_row
        width = 4 if cfg.architecture.backbone_dtype == "float32" else 2
        per_token = kv_bytes_per_token(model) * width // 4 if _is_meta(model) else kv_bytes_per_token(model)
        generation = rows * (seq_len + sampling.max_new_tokens) * per_token
        generation += rows * getattr(model.config, "vocab_size", 0) * 4 * 2  # one step's logits and probabilities
        if sampling.reward_model:
            generation += _run_weight_bytes(sampling.reward_model)
    return int(reference), int(generation), notes


def _is_meta(model: Any) -> bool:
    return next(model.parameters()).device.type == "meta"


def _run_weight_bytes(run_dir: str) -> int:
    """Weights of a finished run's model (float32), from its recorded parameter count."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
        return int(info.get("total_parameters", 0)) * 4
    except (OSError, ValueError):
        return 0


def _flops_per_token(params: int, trainable: int, config: Any, seq_len: int, cfg: RunConfig) -> float:
    """Training FLOPs per token: 2N forward, 2N backward through activations, 2N more for weight gradients when
    the backbone trains; plus attention (QK^T and AV) in every layer."""
    embedding = getattr(config, "vocab_size", 0) * getattr(config, "hidden_size", 0)
    body = max(params - embedding, 0)
    full = trainable > 0.5 * params
    attention = 4 * config.num_hidden_layers * seq_len * config.hidden_size
    return (6 if full else 4) * body + 3 * attention


def choose_batch(
    cfg: RunConfig, problem: Any, source: str, seq_len: int, trained_per_row: float | None
) -> tuple[int, int]:
    """``batch_size: auto``: the largest batch up to 32 whose plan fits the budget, and the gradient accumulation
    that keeps at least 8 rows per optimizer step.

    Raises:
        ConfigError: when not even one row fits.
    """
    from tunelab.errors import ConfigError

    probe = probe_activations(cfg, problem, source, seq_len)
    for batch in (32, 16, 8, 4, 2, 1):
        plan = build_plan(cfg, problem, source, seq_len, trained_per_row, batch, probe)
        if plan.total <= plan.budget:
            return batch, max(cfg.training.grad_accumulation, math.ceil(8 / batch))
    raise ConfigError(
        f"even one row of {seq_len} tokens does not fit in the memory budget",
        field="training.batch_size",
        hint="use a smaller max_length, gradient_checkpointing, a 4-bit backbone or an adapter",
    )


def trained_tokens_per_row(split: Any) -> float:
    """The 95th percentile of trained tokens per row: the logits of a long batch are sized by its long answers."""
    import numpy as np

    counts = split.trained_counts()
    return float(np.percentile(counts, 95)) if len(counts) else 0.0


def longest_batch(lengths: Any, cfg: RunConfig) -> int:
    """Tokens per row of the longest batch an epoch would see."""
    if cfg.training.packing:
        return cfg.tokenizer.max_length
    return int(min(max(lengths) if len(lengths) else cfg.tokenizer.max_length, cfg.tokenizer.max_length))


def micro_batch_shape(cfg: RunConfig, problem: Any, lengths: Any) -> tuple[int, int]:
    """(rows, tokens per row) of the largest training micro-batch, as the model will see it.

    A padding-free batch is one row holding all its examples: its size is the largest sum of lengths over the
    epoch's batches, not the batch size times the longest example.
    """
    from tunelab.data.collate import TrainBatches

    batch = cfg.training.batch_size if isinstance(cfg.training.batch_size, int) else None
    padding_free = getattr(problem, "padding_free", lambda: False)() and not cfg.training.packing
    if batch is None or not padding_free or not len(lengths):
        return batch or 1, longest_batch(lengths, cfg)
    plan = TrainBatches(lengths, batch, 0, cfg.training.drop_last_batch)
    return 1, int(max(sum(int(lengths[i]) for i in b) for b in plan.epoch_batches(0)))


def save_plan(plan: Plan, path: Path) -> None:
    write_json_atomic(path, plan.to_dict())
