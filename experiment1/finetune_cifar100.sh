#!/usr/bin/env bash
# Experiment 1 "finetune" baseline (spec §7.3): RUNS independent runs; in each, task 1 is trained
# from scratch (LR 1e-2) and every task k >= 2 starts from the run's model of a random earlier
# task (every tensor copied, head included) and is trained for the full schedule at LR 5e-3.
# Writes FINETUNE_DIR (logs)/finetune_cifar100_acc_<run>.txt; then tools/combine_goal_files.py
# builds the paper's fine-Avg / fine-Max goal files from them (PAE's goals: fine-Max), and
# tools/baseline_results.py their rows of the results table (fine-{Avg,Max}_cifar100_results.json).
# Usage: bash experiment1/finetune_cifar100.sh      (rerun to resume; env vars override knobs)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment1/common.sh
RUNS=${RUNS:-5}
FIRST_LR=${FIRST_LR:-1e-2}
FINETUNE_LR=${FINETUNE_LR:-5e-3}
FINETUNE_DIR=${FINETUNE_DIR:-logs}     # goal files per run, fine-Avg / fine-Max goals and results files
mkdir -p logs "$FINETUNE_DIR"
lock_run "$CHECKPOINT_ROOT/finetune"   # every run's folder
preflight   # every task's train/test folders and class count, before any training

for run in $(seq 1 "$RUNS"); do
  ROOT=$CHECKPOINT_ROOT/finetune/experiment1_$run/$ARCH
  for k in "${!TASK_LIST[@]}"; do
    task=${TASK_LIST[$k]}
    init=()
    lr=$FIRST_LR
    if [ "$k" -gt 0 ]; then
      # the earlier task to start from: seeded by (SEED, run, k), so reruns pick the same one
      j=$(python3 -c "import random; random.seed($SEED * 1000003 + $run * 1009 + $k); print(random.randrange($k))")
      init=(--initial_from "$ROOT/${TASK_LIST[$j]}")
      lr=$FINETUNE_LR
      echo "=== finetune run $run: $task from ${TASK_LIST[$j]}"
    else
      echo "=== finetune run $run: $task from scratch"
    fi
    baseline_stage "$ROOT/$task" "$task" "$FINETUNE_DIR/finetune_cifar100_acc_$run.txt" "${init[@]}" \
      --epochs "$BASELINE_EPOCHS" --lr "$lr" --lr_decay_epochs $BASELINE_LR_DECAY_EPOCHS
  done
done
python tools/combine_goal_files.py --mode mean --out "$FINETUNE_DIR/finetune_avg_cifar100_acc.txt" "$FINETUNE_DIR"/finetune_cifar100_acc_*.txt
python tools/combine_goal_files.py --mode max --out "$FINETUNE_DIR/finetune_max_cifar100_acc.txt" "$FINETUNE_DIR"/finetune_cifar100_acc_*.txt
roots=()
for run in $(seq 1 "$RUNS"); do roots+=("$CHECKPOINT_ROOT/finetune/experiment1_$run/$ARCH"); done
for mode in mean max; do   # the paper's fine-Avg and fine-Max rows
  name=fine-Avg; if [ "$mode" = max ]; then name=fine-Max; fi
  python tools/baseline_results.py --method "$name" --experiment 1 --combine "$mode" --tasks "${TASK_LIST[@]}" \
    --roots "${roots[@]}" --out "$FINETUNE_DIR/${name}_cifar100_results.json"
done
