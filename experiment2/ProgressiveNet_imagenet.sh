#!/usr/bin/env bash
# ProgressiveNet (Rusu et al., "Progressive Neural Networks", 2016) on experiment 2: one ResNet-50
# column per task (models/progressive.py, width BASE_WIDTH), with lateral 1x1 adapters from every
# earlier column at each stage boundary; earlier columns frozen (their outputs never change).
# Every column starts from torchvision's pretrained ResNet-50 (imagenet's is only evaluated): the
# paper's ProgressiveNet row (CUBS 78.94, against 40.96 from scratch) needs pretrained columns.
# Each later column trains
# like the finetune baseline (plateau schedule, patience 10, at most 100 epochs, best epoch; the
# per-task LRs of CPG_imagenet.sh). No pick, no pruning, no growth.
# Ends with the inference of every task -> RESULTS_FILE (logs/ProgressiveNet_imagenet_results.json).
# Usage: bash experiment2/ProgressiveNet_imagenet.sh   (rerun to resume; env vars as in experiment2/common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS_FILE=${RESULTS_FILE:-logs/ProgressiveNet_imagenet_results.json}
ARCH=${ARCH:-progressive_resnet50}
source experiment2/common.sh
METHOD=ProgressiveNet
PROGRESSIVE_EPOCHS=${PROGRESSIVE_EPOCHS:-100}
PROGRESSIVE_PATIENCE=${PROGRESSIVE_PATIENCE:-10}
LR_cubs_cropped=${LR_cubs_cropped:-1e-3}
LR_stanford_cars_cropped=${LR_stanford_cars_cropped:-1e-2}
LR=${LR:-1e-3}
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment2/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight

task_flags() {   # every column from PRETRAINED_PATH (a 1000-class task is only evaluated)
  pretrained_flags 1 "$2" "$PROGRESSIVE_EPOCHS"
  task_args=("${method_flags[@]}" --no-learn_pick --patience "$PROGRESSIVE_PATIENCE" --weight_decay 4e-5
             "${first_flags[@]}" --lr "$(per_task LR "$2" "$LR")")
}
run_sequence all
method_inference "$ROOT/${TASK_LIST[${#TASK_LIST[@]}-1]}/gradual_prune"
