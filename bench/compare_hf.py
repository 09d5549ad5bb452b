"""One LoRA fine-tuning job through HF Trainer + PEFT, TRL SFTTrainer (packing) and tunelab, side by side.

Run from the repository root (needs ../shared/data/lamini_docs.jsonl and, for the TRL arm, ``pip install trl``):

    .venv/bin/python bench/compare_hf.py                 # all arms, the issue's job: 320 training rows, 100 validation
    .venv/bin/python bench/compare_hf.py --arms hf,tunelab --rows 64

The job: SmolLM2-135M-Instruct (tunelab's built-in copy, fp32), LoRA r=16 alpha=32 dropout=0.05 on q/k/v/o, one
epoch over the first ``--rows`` rows of lamini_docs.jsonl at batch 8 (max length 256, answer tokens trained, prompt
masked), AdamW lr 2e-4 with a linear schedule and no warm-up, seed 0; validation on the last 100 rows.

Each arm runs in its own child process (so its peak RSS is its own) and reports: the wall time of the training epoch
(the loop alone: model loading, tokenisation and evaluation are outside it, and so are tunelab's own before/after
evaluations), trained tokens/s, the share of computed positions that were padding, peak RSS (CPU) or peak allocated
memory (GPU), and the validation loss after the epoch. The validation loss is computed by one function, shared by every
arm, on the same 100 rows tokenised the same way (mean cross-entropy per answer token). The last line printed is one
JSON object with tunelab's ratios against the Trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "lamini_docs.jsonl"
MAX_LENGTH = 256
BATCH = 8
LR = 2e-4
SEED = 0
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
ARMS = {
    "hf": "HF Trainer + PEFT (dynamic padding)",
    "trl": "TRL SFTTrainer + PEFT (packing)",
    "tunelab": "tunelab (best settings)",
    "tunelab_fp32": "tunelab (float32 like the Trainer)",
}
DEFAULT_ARMS = "hf,trl,tunelab"


# --------------------------------------------------------------------------------------------- shared by every arm


def read_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def model_dir() -> str:
    """tunelab's built-in SmolLM2 (converted from the packaged GGUF once, then cached as safetensors)."""
    from tunelab.models.load import resolve_backbone

    return resolve_backbone("smollm2-135m-instruct")


def encode(tokenizer: Any, row: dict[str, str]) -> dict[str, list[int]]:
    """Prompt tokens (no loss) + answer tokens + EOS (trained), cut at MAX_LENGTH: the usual HF recipe."""
    prompt = tokenizer(row["question"])["input_ids"]
    answer = tokenizer(row["answer"])["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + answer)[:MAX_LENGTH]
    labels = ([-100] * len(prompt) + answer)[:MAX_LENGTH]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def validation_loss(model: Any, tokenizer: Any, rows: list[dict[str, str]]) -> float:
    """Mean cross-entropy per trained answer token over ``rows`` (same code and tokens for every arm)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    encoded = [encode(tokenizer, r) for r in rows]
    with torch.no_grad():
        for start in range(0, len(encoded), BATCH):
            chunk = encoded[start : start + BATCH]
            width = max(len(e["input_ids"]) for e in chunk)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in chunk], device=device)
            mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in chunk])
            labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in chunk], device=device)
            logits = model(input_ids=ids, attention_mask=mask.to(device)).logits[:, :-1].float()  # [b, seq-1, vocab]
            targets = labels[:, 1:]
            total += float(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    return total / max(count, 1)


def peak_memory() -> tuple[float, str]:
    """Peak memory of this process so far: allocated GPU memory on a GPU, else peak RSS (GB)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9, "peak allocated (GPU)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "peak RSS (CPU)"  # ru_maxrss is in KiB


def hf_training_args(out: str, **extra: Any) -> dict[str, Any]:
    """TrainingArguments shared by the HF and TRL arms: the job's settings, nothing else changed from the defaults."""
    import torch

    return dict(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        seed=SEED,
        data_seed=SEED,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10,
        report_to=[],
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        **extra,
    )


class EpochClock:
    """A TrainerCallback-compatible timer around the training loop, also counting computed and trained positions."""

    def __init__(self) -> None:
        self.started = self.seconds = 0.0

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        self.seconds = time.perf_counter() - self.started


def count_positions(loader: Any) -> tuple[int, int, int]:
    """(computed positions, real tokens, trained tokens) over one pass of a data loader (a packed batch with
    position ids has no padding)."""
    computed = real = trained = 0
    for batch in loader:
        computed += batch["input_ids"].numel()
        packed = "position_ids" in batch or "attention_mask" not in batch
        real += batch["input_ids"].numel() if packed else int(batch["attention_mask"].sum())
        trained += int((batch["labels"][:, 1:] != -100).sum())
    return computed, real, trained


def arm_result(seconds: float, loader: Any, val_loss: float, settings: str) -> dict[str, Any]:
    """What every Trainer-based arm reports."""
    memory, kind = peak_memory()
    computed, real, trained = count_positions(loader)
    return {
        "seconds": seconds,
        "computed": computed,
        "real": real,
        "trained": trained,
        "memory_gb": memory,
        "memory_kind": kind,
        "val_loss": val_loss,
        "settings": settings,
    }


# --------------------------------------------------------------------------------------------------------- arms


def run_hf(train_rows: list[dict[str, str]], val_rows: list[dict[str, str]], out: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    set_seed(SEED)
    source = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    train = Dataset.from_list(train_rows).map(lambda r: encode(tokenizer, r), remove_columns=["question", "answer"])
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    clock = EpochClock()
    callback = type(
        "Clock", (TrainerCallback,), {"on_train_begin": clock.on_train_begin, "on_train_end": clock.on_train_end}
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**hf_training_args(out)),
        train_dataset=train,
        data_collator=collator,
        callbacks=[callback()],
    )
    trainer.train()
    settings = (
        f"Trainer(optim={trainer.args.optim}, batch {BATCH}, DataCollatorForSeq2Seq dynamic padding, "
        f"fp32{', bf16 autocast' if trainer.args.bf16 else ''}), peft LoRA r=16 q/k/v/o"
    )
    result = arm_result(clock.seconds, trainer.get_train_dataloader(), 0.0, settings)  # peak RSS before validating
    result["val_loss"] = validation_loss(model, tokenizer, val_rows)
    return result


def run_trl(train_rows: list[dict[str, str]], val_rows: list[dict[str, str]], out: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(SEED)
    source = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    # Prompt-completion rows: TRL trains only the completion (completion_only_loss) and appends EOS itself.
    train = Dataset.from_list([{"prompt": r["question"], "completion": r["answer"]} for r in train_rows])
    clock = EpochClock()
    callback = type(
        "Clock", (TrainerCallback,), {"on_train_begin": clock.on_train_begin, "on_train_end": clock.on_train_end}
    )
    args = SFTConfig(**hf_training_args(out, max_length=MAX_LENGTH, packing=True, completion_only_loss=True))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        callbacks=[callback()],
    )
    trainer.train()
    settings = (
        f"SFTTrainer(packing=True, packing_strategy={args.packing_strategy}, padding_free={args.padding_free}, "
        f"completion_only_loss=True, max_length {MAX_LENGTH}, batch {BATCH})"
    )
    result = arm_result(clock.seconds, trainer.get_train_dataloader(), 0.0, settings)  # peak RSS before validating
    result["val_loss"] = validation_loss(trainer.model, tokenizer, val_rows)
    return result


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX): then bf16 is ~4x float32 here."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def best_precision() -> str:
    """tunelab's best backbone precision on this machine: bfloat16 on a GPU or a bf16-capable CPU, else float32."""
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def adapter_validation_loss(run_dir: Path, val_rows: list[dict[str, str]]) -> float:
    """The shared validation loss of a tunelab run's adapter on the float32 base model (exactly what the other
    arms are measured on, whatever precision the adapter was trained in)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=torch.float32)
    if torch.cuda.is_available():
        base = base.cuda()
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).float()
    return validation_loss(model, AutoTokenizer.from_pretrained(model_dir()), val_rows)


def run_tunelab(train_path: str, val_path: str, out: str, overrides: list[str], precision: str) -> dict[str, Any]:
    from tunelab.api import train
    from tunelab.config import apply_overrides, validate_config

    data = {
        "problem_type": "causal_lm",
        "experiment_name": "compare-hf",
        "output_directory": out,
        "llm_backbone": "smollm2-135m-instruct",
        "architecture": {"backbone_dtype": precision},
        "dataset": {
            "train_dataframe": train_path,
            "validation_strategy": "custom",
            "validation_dataframe": val_path,
            "prompt_column": ["question"],
            "answer_column": "answer",
            "use_chat_template": False,
            "add_eos_token_to_prompt": False,  # the Trainer's rows: question tokens, answer tokens, EOS
            "mask_prompt_labels": True,
        },
        "tokenizer": {"max_length": MAX_LENGTH, "max_length_prompt": MAX_LENGTH, "max_length_answer": MAX_LENGTH},
        "training": {
            "adapter": "lora",
            "lora_r": LORA["r"],
            "lora_alpha": LORA["lora_alpha"],
            "lora_dropout": LORA["lora_dropout"],
            "lora_target_modules": ",".join(LORA["target_modules"]),
            "learning_rate": LR,
            "batch_size": BATCH,
            "epochs": 1,
            "schedule": "Linear",
            "warmup_epochs": 0,
            "drop_last_batch": False,  # the Trainer keeps the last short batch too
            "evaluate_before_training": False,
            "save_epochs": 0,
            "logging_steps": 5,
        },
        # tunelab's own evaluation after the epoch is not part of the comparison (the shared validation loss
        # below is): keep its generated answers short so the whole comparison stays quick.
        "prediction": {"metric": "Perplexity", "max_length_inference": 8},
        "environment": {"seed": SEED},
    }
    cfg = validate_config(apply_overrides(data, overrides), source="bench/compare_hf.py")
    result = train(cfg)
    memory, kind = peak_memory()
    info = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8"))
    t = cfg.training
    settings = {
        "backbone_dtype": cfg.architecture.backbone_dtype,
        "padding_free": t.padding_free and not t.packing,
        "packing": t.packing,
        "chunked_loss": t.chunked_loss,
        "optimizer": t.optimizer,
        "release_cpu_memory": cfg.environment.release_cpu_memory,
        **dict(o.split("=", 1) for o in overrides),
    }
    return {
        "seconds": info["train_seconds"],
        "computed": info["train_positions"],
        "real": info["train_tokens"],
        "trained": info["trained_tokens"],
        "memory_gb": memory,
        "memory_kind": kind,
        "val_loss": adapter_validation_loss(result.run_dir, read_rows(Path(val_path))),
        "settings": "tunelab train: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
    }


# ------------------------------------------------------------------------------------------------------- driver


def child(args: argparse.Namespace) -> None:
    train_rows, val_rows = read_rows(Path(args.train)), read_rows(Path(args.val))
    if args.child == "hf":
        result = run_hf(train_rows, val_rows, args.out)
    elif args.child == "trl":
        result = run_trl(train_rows, val_rows, args.out)
    else:
        precision = "float32" if args.child == "tunelab_fp32" else best_precision()
        result = run_tunelab(args.train, args.val, args.out, args.set, precision)
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")


def table(results: dict[str, dict[str, Any]], rows: int) -> None:
    base = results.get("hf")
    print(
        f"\nSmolLM2-135M-Instruct, LoRA r=16 q/k/v/o, lamini_docs first {rows} rows, batch {BATCH}, max length "
        f"{MAX_LENGTH}, lr {LR}, one epoch; validation: last 100 rows"
    )
    print(
        "| arm | epoch wall time | trained tokens/s | padding share | peak memory | validation loss | time ratio | "
        "memory ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arm, r in results.items():
        if "error" in r:
            print(f"| {ARMS[arm]} | failed: {r['error']} |")
            continue
        ratios = ("", "")
        if base and "error" not in base:
            ratios = (f"{r['seconds'] / base['seconds']:.2f}x", f"{r['memory_gb'] / base['memory_gb']:.2f}x")
        padding = 1 - r["real"] / max(r["computed"], 1)
        print(
            f"| {ARMS[arm]} | {r['seconds']:.1f} s | {r['trained'] / r['seconds']:.1f} | {100 * padding:.1f}% | "
            f"{r['memory_gb']:.2f} GB | {r['val_loss']:.4f} | {ratios[0]} | {ratios[1]} |"
        )
    print()
    for arm, r in results.items():
        if "error" not in r:
            print(f"{ARMS[arm]}: {r['settings']}; {r['trained']} trained tokens, {r['memory_kind']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arms", default=DEFAULT_ARMS, help=f"comma-separated, from: {', '.join(ARMS)} (default {DEFAULT_ARMS})"
    )
    parser.add_argument("--rows", type=int, default=320, help="training rows (the first ones of the file)")
    parser.add_argument("--val-rows", type=int, default=100, help="validation rows (the last ones of the file)")
    parser.add_argument(
        "--set", action="append", default=[], help="tunelab config override, e.g. training.packing=false"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every arm; 0 = torch's default")
    parser.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--val", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    if not DATA.is_file():
        sys.exit(f"{DATA} is absent: this benchmark needs the shared lamini_docs data")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"unknown arm(s) {unknown}: choose from {', '.join(ARMS)}")
    if "trl" in arms:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL is not installed (pip install trl): skipping the TRL arm", flush=True)
            arms.remove("trl")
    rows = read_rows(DATA)
    work = Path(tempfile.mkdtemp(prefix="tunelab-compare-hf-"))
    train_path, val_path = work / "train.jsonl", work / "validation.jsonl"
    for path, part in ((train_path, rows[: args.rows]), (val_path, rows[-args.val_rows :])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    model_dir()  # convert the GGUF once, outside every arm's clock and memory
    results: dict[str, dict[str, Any]] = {}
    for arm in arms:
        result_path = work / f"{arm}.json"
        command = [
            sys.executable,
            __file__,
            "--child",
            arm,
            "--train",
            str(train_path),
            "--val",
            str(val_path),
            "--out",
            str(work / arm),
            "--result",
            str(result_path),
            "--threads",
            str(args.threads),
        ]
        for item in args.set:
            command += ["--set", item]
        started = time.perf_counter()
        proc = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results[arm] = {"error": tail}
            print(f"{ARMS[arm]}: failed: {tail}", flush=True)
            (work / f"{arm}.stderr.txt").write_text(proc.stderr, encoding="utf-8")
            continue
        results[arm] = json.loads(result_path.read_text(encoding="utf-8"))
        print(
            f"{ARMS[arm]}: done in {time.perf_counter() - started:.0f} s (epoch {results[arm]['seconds']:.1f} s)",
            flush=True,
        )
    table(results, args.rows)
    hf, ours = results.get("hf", {}), results.get("tunelab", {})
    summary: dict[str, Any] = {}
    if "seconds" in hf and "seconds" in ours:
        summary = {
            "time_ratio": round(ours["seconds"] / hf["seconds"], 3),
            "rss_ratio": round(ours["memory_gb"] / hf["memory_gb"], 3),
            "loss_delta": round(ours["val_loss"] - hf["val_loss"], 4),
        }
        if "seconds" in results.get("trl", {}):
            summary["time_ratio_vs_trl"] = round(ours["seconds"] / results["trl"]["seconds"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
