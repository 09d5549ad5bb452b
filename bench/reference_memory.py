"""What the reference model of DPO (and of RL's KL penalty) costs in memory, per adapter, measured.

    .venv/bin/python bench/reference_memory.py [--config examples/rlhf/dpo.yaml]

Each adapter runs in its own process: build the policy as a run does, run one forward pass through it, then one
through the reference model, and measure the resident memory the reference added and the bytes of reference weights
that are not the policy's own tensors. With LoRA the reference is the policy with its adapter switched off (expect
0 bytes); with full fine-tuning (adapter none) it is a frozen copy loaded from llm_backbone.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(config: str, adapter: str) -> dict[str, float]:
    import torch

    from tunelab.config import load_config
    from tunelab.models.load import load_tokenizer, resolve_backbone
    from tunelab.problems import build_problem
    from tunelab.training.measure import current_rss
    from tunelab.training.setup import build_model

    cfg = load_config(config, [f"training.adapter={adapter}"])
    source = resolve_backbone(cfg.llm_backbone)
    tokenizer = load_tokenizer(source)
    problem = build_problem(cfg, tokenizer)
    model = build_model(cfg, problem, source)
    batch = tokenizer(["How do I bake bread at home?"] * 2, return_tensors="pt")
    with torch.no_grad():
        model(**batch)
    gc.collect()
    before = current_rss()
    own = {p.data_ptr() for p in model.parameters()}
    with torch.no_grad(), problem.reference_model(model) as reference:
        reference(**batch)
        extra = sum(p.numel() * p.element_size() for p in reference.parameters() if p.data_ptr() not in own)
    gc.collect()
    policy = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"reference_rss_growth": current_rss() - before, "reference_own_weight_bytes": extra, "policy_bytes": policy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples" / "rlhf" / "dpo.yaml"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.config, args.one)))
        return
    rows = {}
    for adapter in ("lora", "none"):
        command = [sys.executable, __file__, "--config", args.config, "--one", adapter]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            sys.exit(f"{adapter}: failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        rows[adapter] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{args.config}")
    print("| adapter | policy weights (GB) | reference's own weights (GB) | RSS added by the reference (GB) |")
    print("|---|---:|---:|---:|")
    for adapter, r in rows.items():
        print(
            f"| {adapter} | {r['policy_bytes'] / 2**30:.3f} | {r['reference_own_weight_bytes'] / 2**30:.3f} | "
            f"{r['reference_rss_growth'] / 2**30:.3f} |"
        )
    print(json.dumps({a: r["reference_rss_growth"] for a, r in rows.items()}))


if __name__ == "__main__":
    main()
