#!/usr/bin/env bash
# The main job end to end on the embedded default model (SmolLM2-135M-Instruct, GGUF):
# build a bundle, generate a skill data set, measure held-out exact match, fine-tune on
# the CPU with the torch-free runtime, and measure again with the trained adapter.
# DEMO_MODEL=gemma3 runs the same on Gemma 3 270M (base model, Q4_K_M GGUF) into artifacts/demo-gemma3.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

E=.venv/bin/edgetune
MODEL=${DEMO_MODEL:-smollm2}
case "$MODEL" in
    smollm2) OUT=artifacts/demo ;;
    gemma3) OUT=artifacts/demo-gemma3 ;;
    *) echo "demo: DEMO_MODEL must be smollm2 or gemma3, not '$MODEL'" >&2; exit 2 ;;
esac
STEPS=${DEMO_STEPS:-150}
GGUF=$(.venv/bin/python -c "from edgetune.common.embedded import ${MODEL}_gguf; print(${MODEL}_gguf())")
start=$(date +%s)
step() { printf '\n== %s (%ss elapsed)\n' "$1" "$(( $(date +%s) - start ))"; }

step "1. build the bundle from $(basename "$GGUF")"
$E build "$GGUF" -o "$OUT/bundle" --targets q_proj,v_proj --rank 8 --alpha 16 --force

step "2. generate the skill data set: written dates -> ISO 8601"
$E data dates -o "$OUT/data" --train 2000 --heldout 100 --seed 0

step "3. held-out exact match before training"
$E eval "$OUT/bundle" --data "$OUT/data/heldout.jsonl" --show 5 | tee "$OUT/before.txt"

step "4. train the LoRA adapter on CPU ($STEPS steps, batch 8, lr 2e-3)"
rm -rf "$OUT/run"
$E train "$OUT/bundle" --data "$OUT/data/train.jsonl" --eval-data "$OUT/data/heldout.jsonl" -o "$OUT/run" \
    --steps "$STEPS" --lr 2e-3 --warmup 10 --batch-size 8 --seq-len 64 --eval-every 50 --save-every 50

step "5. the same prompts after training"
$E eval "$OUT/bundle" --adapter "$OUT/run/adapter" --data "$OUT/data/heldout.jsonl" --show 5 | tee "$OUT/after.txt"

step "6. summary"
echo "before: $(tail -n 1 "$OUT/before.txt")"
echo "after:  $(tail -n 1 "$OUT/after.txt")"
echo "adapter (PEFT format): $OUT/run/adapter   metrics: $OUT/run/metrics.jsonl   plot: $OUT/run/loss.png"
echo "total: $(( $(date +%s) - start )) s"
