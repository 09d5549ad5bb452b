#!/usr/bin/env bash
# Full fine-tuning vs transfer learning (head only) vs PEFT (LoRA) on the same SST-2 data, then one table.
# Run from the repository root (the data is ../shared/data/sst2_train_5k.tsv):  bash examples/sst2_methods.sh
# Each run is examples/sst2_minilm_lora.yaml with only the method (and its usual learning rate) changed.
set -euo pipefail
TUNELAB=${TUNELAB:-tunelab}
command -v "$TUNELAB" >/dev/null || TUNELAB=.venv/bin/tunelab
OUT=${OUT:-output/sst2-methods}
CONFIG=examples/sst2_minilm_lora.yaml
run() {  # name adapter learning-rate
  "$TUNELAB" train "$CONFIG" --force --set output_directory="$OUT" --set experiment_name="$1" \
    --set training.adapter="$2" --set training.learning_rate="$3"
}
run sst2-full none 5e-5        # every weight
run sst2-head-only head_only 1e-3  # the classification head only (transfer learning)
run sst2-lora lora 1e-3        # LoRA on every linear layer + the head
"$TUNELAB" compare "$OUT/sst2-full" "$OUT/sst2-head-only" "$OUT/sst2-lora" --output "$OUT/compare.html" --force
