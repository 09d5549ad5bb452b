"""Build everything a run needs, in a stated order."""

from __future__ import annotations

import math
import secrets
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tunelab.config import RunConfig
from tunelab.data.collate import TrainBatches
from tunelab.data.inspect import DataReport, batching_mode, compute_report, enforce, print_report
from tunelab.data.pipeline import DataSplits, build_splits, source_name
from tunelab.data.tokenize import EncodedSplit
from tunelab.infer.model import build_run_problem
from tunelab.models.adapters import ParameterCount, apply_adapter, count_parameters
from tunelab.models.load import (
    check_dtype_for_device,
    load_backbone,
    load_tokenizer,
    quantization_config,
    resolve_backbone,
)
from tunelab.plan import build_plan, choose_batch, longest_batch, micro_batch_shape, trained_tokens_per_row
from tunelab.training.memory import install_memory_release
from tunelab.training.optim import build_optimizer
from tunelab.training.schedule import build_scheduler, compute_warmup_steps


class LossModule(torch.nn.Module):
    """The model plus its problem's loss, as one module, so distributed wrappers see a single forward."""

    def __init__(self, model: torch.nn.Module, problem: Any):
        super().__init__()
        self.model = model
        self.problem = problem

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.problem.loss(self.model, batch)


class Collator:
    """Picklable collate function: data-loader indices (or packed bins) -> a padded batch of one split.

    Random choices in a batch (prompt-token masking) use a generator seeded from the run seed, the epoch and the
    batch's rows, so a resumed run draws exactly what the uninterrupted one drew.
    """

    def __init__(self, problem: Any, split: EncodedSplit, train: bool, seed: int = 0):
        self.problem, self.split, self.train, self.seed = problem, split, train, seed
        self.epoch = 0

    def __call__(self, indices: list[Any]) -> dict[str, torch.Tensor]:
        flat = np.asarray([i for item in indices for i in (item if isinstance(item, (list, tuple)) else [item])])
        generator = torch.Generator().manual_seed(
            zlib.crc32(flat.tobytes(), (self.seed * 31 + self.epoch) & 0xFFFFFFFF)
        )
        batch = self.problem.collate(self.split, list(indices), self.train, generator)
        batch["rows"] = torch.from_numpy(self.split.rows[flat])  # source rows, for error messages
        return batch


class _Identity(torch.utils.data.Dataset):
    """A dataset whose items are their own indices: batches are built by the collator from the flat arrays."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:
        return index


@dataclass
class TrainSetup:
    cfg: RunConfig
    seed: int
    accelerator: Any
    tokenizer: Any
    problem: Any
    data: DataSplits
    report: DataReport
    model: Any  # the (possibly peft-wrapped) transformers model
    loss_module: Any  # the prepared LossModule
    optimizer: Any
    scheduler: Any
    loader: torch.utils.data.DataLoader
    batches: TrainBatches
    collator: Collator
    steps_per_epoch: int
    total_steps: int
    parameters: ParameterCount
    backbone_source: str


def resolve_seed(seed: int) -> int:
    """The seed to use: the configured one, or a fresh random one for -1."""
    return seed if seed >= 0 else secrets.randbelow(2**31 - 1)


def mixed_precision_mode(setting: Any) -> str:
    """accelerate's mixed-precision name for the ``environment.mixed_precision`` setting."""
    if setting is False or not torch.cuda.is_available():
        return "no"  # CPU autocast is slower than float32 on most CPUs and changes results
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def build_model(cfg: RunConfig, problem: Any, source: str) -> Any:
    """Load the backbone with the problem's head (quantised when asked), configure it, and apply the adapter."""
    arch = cfg.architecture
    quantization = quantization_config(arch)
    model = load_backbone(
        source,
        problem.auto_class(),
        dtype=arch.backbone_dtype,
        dropout=arch.intermediate_dropout if arch.intermediate_dropout > 0 else None,
        quantization=quantization,
        **problem.model_kwargs(),
    )
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = problem.tokenizer.pad_token_id
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # Norms and the head in float32, inputs that require grad: what training adapters on 4/8-bit weights needs.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=arch.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif arch.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if arch.gradient_checkpointing:
        model.config.use_cache = False
    model = apply_adapter(model, cfg)
    if arch.force_embedding_gradients:
        model.get_input_embeddings().weight.requires_grad_(True)
    if cfg.environment.release_cpu_memory:
        install_memory_release(model, "cuda" if torch.cuda.is_available() else "cpu")
    return model


def build_batches(
    cfg: RunConfig, split: EncodedSplit, seed: int, rank: int = 0, world: int = 1, repeat: int = 1
) -> TrainBatches:
    """The training batch plan: shuffled rows, rows grouped by length, or packed bins (sharded across processes);
    every batch ``repeat`` times in a row when the problem updates several times on one batch (online RL)."""
    return TrainBatches(
        split.lengths(),
        cfg.training.batch_size,
        seed,
        cfg.training.drop_last_batch,
        mode=batching_mode(cfg),
        capacity=cfg.tokenizer.max_length,
        rank=rank,
        world=world,
        repeat=repeat,
    )


def count_steps(cfg: RunConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    per_epoch = math.ceil(max(batches_per_epoch, 1) / cfg.training.grad_accumulation)
    total = cfg.training.max_steps if cfg.training.max_steps > 0 else per_epoch * cfg.training.epochs
    return per_epoch, total


def prepare_data(
    cfg: RunConfig, check: bool = True, console: Any = None
) -> tuple[str, Any, Any, DataSplits, DataReport]:
    """Resolve the backbone, load its tokenizer, build the problem and its data, and run the data check.

    Returns:
        (backbone source, tokenizer, problem, data splits, data report).

    Raises:
        DataError: for bad data, or (when ``check``) data the contract check rejects.
        ConfigError: for float16 on a machine without a GPU.
    """
    check_dtype_for_device(cfg.architecture)  # before any data work: the run would crawl
    source = resolve_backbone(cfg.llm_backbone)
    tokenizer = load_tokenizer(source)
    problem = build_run_problem(cfg, tokenizer)  # a problem may read other runs (RL's reward run)
    data = build_splits(cfg, problem)
    report = compute_report(
        data.train, cfg, source_name(cfg.dataset.train_dataframe), data.info["format"], data.info.get("deduplicated", 0)
    )
    if console is not None:
        for note in data.info.get("notes", []) + data.info.get("data_notes", []):
            console.print(note)
        print_report(report, console, cfg)
    if check:
        enforce(report, cfg)
    return source, tokenizer, problem, data, report


def plan_and_size_batches(
    cfg: RunConfig, problem: Any, source: str, data: DataSplits, report: DataReport, console: Any
) -> Any:
    """Resolve ``batch_size: auto`` with the memory planner (in place) and print the plan of the run."""
    share = trained_tokens_per_row(data.train)
    if cfg.training.batch_size == "auto":
        seq_len = longest_batch(data.train.lengths(), cfg)
        batch, accumulation = choose_batch(cfg, problem, source, seq_len, share)
        cfg.training.batch_size, cfg.training.grad_accumulation = batch, accumulation
        if console is not None:
            console.print(f"batch_size auto: {batch} rows per micro-batch, {accumulation} micro-batches per step")
    rows, seq_len = micro_batch_shape(cfg, problem, data.train.lengths())
    plan = build_plan(cfg, problem, source, seq_len, share * cfg.training.batch_size / rows, rows)
    if console is not None:
        console.print(plan.summary())
    return plan


def setup(cfg: RunConfig, seed: int, check: bool = True, console: Any = None) -> TrainSetup:
    """Build tokenizer -> data (checked) -> model -> adapter -> optimizer -> scheduler, then hand them to accelerate."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if "judge" in cfg.all_metrics():
        from tunelab.evaluate.judge import load_judge_template

        load_judge_template(cfg.judge)  # a bad judge prompt fails now, not after training
    # Seed first: data order, dropout and new heads all draw from it.
    set_seed(seed)
    accelerator = Accelerator(
        mixed_precision=mixed_precision_mode(cfg.environment.mixed_precision), cpu=not torch.cuda.is_available()
    )
    # The tokenizer comes before the data (rendering depends on it); the data before the model: a classification
    # head's size is the number of classes found, and bad data should fail before a model is loaded.
    # Process 0 tokenises first; the others then read its cache.
    with accelerator.main_process_first():
        source, tokenizer, problem, data, report = prepare_data(
            cfg, check, console if accelerator.is_main_process else None
        )
    plan_and_size_batches(cfg, problem, source, data, report, console if accelerator.is_main_process else None)
    # Seed again: tokenising (skipped on a cache hit) and the planner's probe may draw random numbers, and the new
    # adapter weights must not depend on whether they ran.
    set_seed(seed)
    model = build_model(cfg, problem, source)
    # Problems that need the model before training (reference log-probabilities, a reward model) get it now.
    if hasattr(problem, "attach"):
        if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
            model.to(accelerator.device)  # quantised weights are already on their device
        problem.attach(model, data)
    parameters = count_parameters(model)
    # The optimizer comes after the adapter: it must see only the parameters that train.
    optimizer = build_optimizer(model, cfg.training)
    repeat = getattr(problem, "batch_repeats", 1)
    batches = build_batches(cfg, data.train, seed, accelerator.process_index, accelerator.num_processes, repeat)
    steps_per_epoch, total_steps = count_steps(cfg, len(batches))
    warmup = compute_warmup_steps(cfg.training, steps_per_epoch, total_steps)
    scheduler = build_scheduler(optimizer, cfg.training.schedule, total_steps, warmup)
    collator = Collator(problem, data.train, train=True, seed=seed)
    # The loader gets its own generator: creating an iterator must not draw from the global RNG (dropout's).
    loader = torch.utils.data.DataLoader(
        _Identity(len(data.train)),
        batch_sampler=batches,
        collate_fn=collator,
        num_workers=cfg.environment.number_of_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    loss_module, optimizer = accelerator.prepare(LossModule(model, problem), optimizer)
    return TrainSetup(
        cfg,
        seed,
        accelerator,
        tokenizer,
        problem,
        data,
        report,
        model,
        loss_module,
        optimizer,
        scheduler,
        loader,
        batches,
        collator,
        steps_per_epoch,
        total_steps,
        parameters,
        source,
    )
