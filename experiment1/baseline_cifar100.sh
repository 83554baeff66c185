#!/usr/bin/env bash
# Experiment 1 baseline: train every task from scratch in its own VGG16-BN and write its final test
# accuracy into GOALS_FILE (logs/baseline_cifar100_acc.txt); these are CPG's accuracy goals.
# Usage: bash experiment1/baseline_cifar100.sh        (rerun to resume; env vars override knobs)
# Settings (spec §7.3): 100 epochs, SGD Nesterov 0.9, LR 1e-2 (x0.1 after 50 and 80), batch 32,
# manual weight decay 4e-5.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment1/common.sh
LR=${LR:-1e-2}
ROOT=$CHECKPOINT_ROOT/baseline/experiment1/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight   # every task's train/test folders and class count, before any training

for task in "${TASK_LIST[@]}"; do
  echo "=== baseline: $task"
  baseline_stage "$ROOT/$task" "$task" "$GOALS_FILE" --epochs "$BASELINE_EPOCHS" --lr "$LR" \
    --lr_decay_epochs $BASELINE_LR_DECAY_EPOCHS
done
echo "accuracy goals written to $GOALS_FILE"
python tools/baseline_results.py --method scratch --experiment 1 --tasks "${TASK_LIST[@]}" --roots "$ROOT" \
  --out "${RESULTS_FILE:-logs/scratch_cifar100_results.json}"
