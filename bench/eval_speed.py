"""Generative evaluation speed: batched generation vs one prompt at a time, on the lamini_docs validation prompts.

    .venv/bin/python bench/eval_speed.py [--rows 140] [--max-new-tokens 128] [--batch-size 0]

Both sides use the base SmolLM2-135M-Instruct, the KV cache and greedy decoding with the example config's settings
(examples/lamini_docs_smollm2_lora.yaml: its 10% validation split is 140 prompts). The batched side is what tunelab's
evaluation does: prompts sorted by length, left padding, ``batch_size_inference: 0`` (auto). Prints seconds, new
tokens per second, the speed-up, and how many answers are identical between the two (left padding changes float
rounding, so a few greedy answers may differ after many tokens). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "lamini_docs_smollm2_lora.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=0, help="Use only the first N validation prompts (0 = all).")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="Override max_length_inference (0 = config).")
    parser.add_argument("--batch-size", type=int, default=0, help="Batched side's batch size (0 = auto).")
    args = parser.parse_args()

    from tunelab.config import load_config
    from tunelab.data.pipeline import build_splits
    from tunelab.generation.generate import auto_batch_size, generate_batched
    from tunelab.infer.model import load_base

    data = REPO.parent / "shared" / "data" / "lamini_docs.jsonl"
    if not data.is_file():
        sys.exit(f"bench/eval_speed.py: {data} is missing (the shared data folder is needed)")
    overrides = [f"dataset.train_dataframe={data}"]
    if args.max_new_tokens:
        overrides.append(f"prediction.max_length_inference={args.max_new_tokens}")
    cfg = load_config(CONFIG, overrides=overrides)
    loaded = load_base(cfg)
    splits = build_splits(cfg, loaded.problem)
    examples = splits.validation_examples[: args.rows or None]
    prompts = loaded.problem.prompt_ids(examples)
    settings = cfg.prediction
    longest = max(len(p) for p in prompts)
    batch = auto_batch_size(loaded.model, longest, settings.max_length_inference, args.batch_size)
    torch.manual_seed(0)
    print(
        f"{len(prompts)} prompts ({sum(map(len, prompts))} prompt tokens, longest {longest}), "
        f"max {settings.max_length_inference} new tokens, greedy, {torch.get_num_threads()} threads"
    )

    def timed(batch_size: int) -> tuple[float, list[str]]:
        started = time.perf_counter()
        answers = generate_batched(loaded.model, loaded.tokenizer, prompts, settings, batch_size)
        return time.perf_counter() - started, answers

    # Warm up once (first calls allocate and pick kernels), then time both sides.
    generate_batched(loaded.model, loaded.tokenizer, prompts[:2], settings, 2)
    batched_s, batched = timed(batch)
    single_s, single = timed(1)
    new_tokens = sum(len(loaded.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in single)
    same = sum(a == b for a, b in zip(batched, single))
    rows = [
        ("one prompt at a time", 1, single_s),
        (f"batched (auto = {batch})" if not args.batch_size else f"batched ({batch})", batch, batched_s),
    ]
    print(f"{'mode':<28} {'batch':>5} {'seconds':>9} {'new tok/s':>10}")
    for name, size, seconds in rows:
        print(f"{name:<28} {size:>5} {seconds:>9.1f} {new_tokens / seconds:>10.1f}")
    speedup = single_s / batched_s
    print(f"speed-up {speedup:.2f}x; identical answers {same}/{len(prompts)}")
    print(
        json.dumps(
            {
                "prompts": len(prompts),
                "batch_size": batch,
                "single_seconds": round(single_s, 2),
                "batched_seconds": round(batched_s, 2),
                "speedup": round(speedup, 2),
                "identical_answers": same,
            }
        )
    )


if __name__ == "__main__":
    main()
