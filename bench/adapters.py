"""Every way to update a model on the SST-2 example: accuracy, trainable share and time per method, in one table.

Run from the repository root (needs ../shared/data/sst2_train_5k.tsv):

    .venv/bin/python bench/adapters.py [--epochs 3] [--rows 2000]

Each method trains all-MiniLM-L6-v2 with its usual learning rate on the same 2,000 rows and is validated on the same
500 other rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUNELAB = str(Path(sys.executable).parent / "tunelab")
# (method label, config overrides): learning rates usual for each method.
METHODS = [
    ("lora", ["training.adapter=lora", "training.learning_rate=1e-3"]),
    ("dora", ["training.adapter=lora", "training.use_dora=true", "training.learning_rate=1e-3"]),
    ("ia3", ["training.adapter=ia3", "training.learning_rate=5e-3"]),
    ("bitfit", ["training.adapter=bitfit", "training.learning_rate=5e-3"]),
    ("ln_tuning", ["training.adapter=ln_tuning", "training.learning_rate=5e-3"]),
    (
        "freeze (last 2 layers)",
        ["training.adapter=freeze", "training.trainable_layers=2", "training.learning_rate=1e-4"],
    ),
    ("head_only", ["training.adapter=head_only", "training.learning_rate=5e-3"]),
    ("none (full)", ["training.adapter=none", "training.learning_rate=5e-5"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    if not (REPO.parent / "shared" / "data" / "sst2_train_5k.tsv").is_file():
        sys.exit("../shared/data/sst2_train_5k.tsv is absent")
    out = Path(tempfile.mkdtemp(prefix="tunelab-bench-adapters-"))
    rows = []
    for label, overrides in METHODS:
        name = label.split()[0]
        sets = [
            f"output_directory={out}",
            f"experiment_name={name}",
            f"training.epochs={args.epochs}",
            f"dataset.data_sample={args.rows}",
            "training.save_epochs=0",
            *overrides,
        ]
        command = [TUNELAB, "train", str(REPO / "examples" / "sst2_minilm_lora.yaml")]
        for item in sets:
            command += ["--set", item]
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            rows.append({"method": label, "error": proc.stderr.strip().splitlines()[-1]})
            print(f"{label}: failed: {rows[-1]['error']}", flush=True)
            continue
        metrics = json.loads((out / name / "metrics.json").read_text())
        info = json.loads((out / name / "run.json").read_text())
        rows.append(
            {
                "method": label,
                "accuracy_before": metrics["before"]["accuracy"],
                "accuracy_after": metrics["after"]["accuracy"],
                "f1_after": metrics["after"]["f1"],
                "trainable": info["trainable_parameters"],
                "share": info["trainable_share"],
                "seconds": round(seconds, 1),
            }
        )
        print(f"{label}: done in {seconds:.0f} s", flush=True)
    print(f"\nSST-2, all-MiniLM-L6-v2, {args.rows} training rows, 500 validation rows, {args.epochs} epochs")
    print(f"| {'method':<24} | accuracy before | accuracy after | macro F1 | trainable parameters | share | time |")
    print(f"|{'-' * 26}|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']:<24} | failed: {r['error']} |")
            continue
        print(
            f"| {r['method']:<24} | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} | {r['f1_after']:.3f} | "
            f"{r['trainable']:,} | {100 * r['share']:.3f}% | {r['seconds']:.0f} s |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
