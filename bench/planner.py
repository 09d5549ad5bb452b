"""Planner accuracy: predicted peak memory vs measured, for six configurations on this machine.

    .venv/bin/python bench/planner.py

On CPU the measurement is the peak RSS growth from just before the model loads over 3 real training steps; on a GPU
it is torch.cuda.max_memory_allocated. Each configuration runs in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUNELAB = str(Path(sys.executable).parent / "tunelab")
SST2 = REPO / "examples" / "sst2_minilm_lora.yaml"
LAMINI = REPO / "examples" / "lamini_docs_smollm2_lora.yaml"
CONFIGS = [
    ("SmolLM2 LoRA, batch 8", LAMINI, ["training.batch_size=8"]),
    (
        "SmolLM2 LoRA, batch 8, checkpointing",
        LAMINI,
        ["training.batch_size=8", "architecture.gradient_checkpointing=true"],
    ),
    ("SmolLM2 full, batch 1", LAMINI, ["training.batch_size=1", "training.adapter=none"]),
    ("SmolLM2 head-only, batch 8", LAMINI, ["training.batch_size=8", "training.adapter=head_only"]),
    ("MiniLM LoRA, batch 8", SST2, ["training.batch_size=8", "environment.release_cpu_memory=true"]),
    (
        "MiniLM full, batch 8, checkpointing",
        SST2,
        [
            "training.batch_size=8",
            "training.adapter=none",
            "architecture.gradient_checkpointing=true",
            "environment.release_cpu_memory=true",
        ],
    ),
]


def main() -> None:
    out = tempfile.mkdtemp(prefix="tunelab-bench-planner-")
    results = []
    for label, config, overrides in CONFIGS:
        command = [TUNELAB, "plan", str(config), "--probe", "--json", "--set", f"output_directory={out}"]
        for item in overrides:
            command += ["--set", item]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            print(f"{label}: failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append((label, data))
        print(
            f"{label}: predicted {data['plan']['total'] / 2**30:.3f} GB, measured "
            f"{data['measured']['peak_bytes'] / 2**30:.3f} GB ({100 * data['memory_error']:+.1f}%)",
            flush=True,
        )
    print("\n| configuration | predicted peak (GB) | measured (GB) | error | predicted s/step | measured s/step |")
    print("|---|---:|---:|---:|---:|---:|")
    worst = 0.0
    for label, d in results:
        worst = max(worst, abs(d["memory_error"]))
        print(
            f"| {label} | {d['plan']['total'] / 2**30:.3f} | {d['measured']['peak_bytes'] / 2**30:.3f} | "
            f"{100 * d['memory_error']:+.1f}% | {d['plan']['step_seconds']:.2f} | {d['measured']['step_seconds']:.2f} |"
        )
    print(f"\nworst memory error: {100 * worst:.1f}% (target: within ±20%)")
    print(json.dumps({"worst_memory_error": worst, "configs": len(results)}))


if __name__ == "__main__":
    main()
