#!/usr/bin/env bash
# Demo of experiment 1 on built-in toy data, CPU-friendly (a few minutes on 2 cores):
# generates 3 toy tasks in the CIFAR-100 layout, computes their accuracy goals with the baseline
# script, learns them with the full CPG script (growing, 10 pruning stages, ratio choice,
# picking, retrain) and evaluates every task from the final checkpoint.
# Usage: bash experiment1/demo.sh            (rerun: finished work is skipped)
# It is experiment 1's real scripts with smaller values; any knob can still be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_DIR=${DEMO_DIR:-demo_run}
export DATA_ROOT=${DATA_ROOT:-data/toy}
export TASKS=${TASKS:-"toy_task_1 toy_task_2 toy_task_3"}
export BASE_WIDTH=${BASE_WIDTH:-0.125}          # VGG16-BN at 1/8 of the paper's width
export BASELINE_EPOCHS=${BASELINE_EPOCHS:-6}
export FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-6}
export PRUNE_EPOCHS=${PRUNE_EPOCHS:-2}
export PRUNING_INTERVAL=${PRUNING_INTERVAL:-1}
export RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-3}
export CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints/$DEMO_DIR}
export GOALS_FILE=${GOALS_FILE:-logs/$DEMO_DIR/baseline_acc.txt}
export RESULTS_FILE=${RESULTS_FILE:-logs/$DEMO_DIR/results.json}
read -r -a task_array <<< "$TASKS"

start=$SECONDS
python tools/make_toy_data.py --out "$DATA_ROOT" --task_names "${task_array[@]}" --classes 5 \
  --train "${TOY_TRAIN:-200}" --test "${TOY_TEST:-40}"
bash experiment1/baseline_cifar100.sh
bash experiment1/CPG_cifar100_scratch_mul_1.5.sh
bash experiment1/inference_CPG_cifar100.sh
echo "demo finished in $((SECONDS - start)) s; results: $RESULTS_FILE, checkpoints: $CHECKPOINT_ROOT"
