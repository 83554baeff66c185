#!/usr/bin/env bash
# Piggyback (Mallya, Davis & Lazebnik, ECCV 2018) on experiment 2, as a configuration of the CPG
# engine: task 1 (imagenet: torchvision's pretrained ResNet-50, evaluated) is frozen whole; each
# later task learns only its binary pick mask over it and its head, with piggyback's own settings
# (src/scripts/run_piggyback_training.sh, src/main.py): masks init 1e-2, threshold 5e-3, Adam at
# 1e-4; the classifier with its own Adam at 1e-4 (--lr_classifier); both x0.1 after 15 of 30
# epochs; BatchNorm frozen in eval mode at the ImageNet statistics (no --train_bn); the best
# epoch is kept. No pruning, no growth.
# Ends with the inference of every task -> RESULTS_FILE (logs/Piggyback_imagenet_results.json).
# Usage: bash experiment2/Piggyback_imagenet.sh   (rerun to resume; env vars as in experiment2/common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS_FILE=${RESULTS_FILE:-logs/Piggyback_imagenet_results.json}
source experiment2/common.sh
METHOD=Piggyback
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-300}            # task 1 when it is trained (no PRETRAINED_PATH)
LR=${LR:-1e-3}                                     # task 1 when trained (plateau schedule)
PIGGYBACK_EPOCHS=${PIGGYBACK_EPOCHS:-30}
PIGGYBACK_DECAY=${PIGGYBACK_DECAY:-$(milestones "$PIGGYBACK_EPOCHS" 50)}
PIGGYBACK_LR_MASK=${PIGGYBACK_LR_MASK:-1e-4}
PIGGYBACK_LR_CLASSIFIER=${PIGGYBACK_LR_CLASSIFIER:-1e-4}   # later tasks' head (Adam)
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment2/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight

task_flags() {   # task 1: pretrained (or trained); later tasks only pick (they own no weight)
  task_args=("${method_flags[@]}")
  if [ "$1" -eq 1 ]; then
    pretrained_flags 1 "$2" "$FINETUNE_EPOCHS"
    task_args+=("${first_flags[@]}" --lr "$LR" --weight_decay 4e-5)
  else   # --lr: the weights' SGD, which has nothing left to train; the head's LR decays with it
    task_args+=(--epochs "$PIGGYBACK_EPOCHS" --lr_schedule milestones --lr "$PIGGYBACK_LR_CLASSIFIER"
                --lr_classifier "$PIGGYBACK_LR_CLASSIFIER" --lr_mask "$PIGGYBACK_LR_MASK"
                --lr_decay_epochs "$PIGGYBACK_DECAY" --mask_lr_decay_epochs "$PIGGYBACK_DECAY"
                --mask_lr_decay_factors 0.1 --no-train_bn --no-train_biases --weight_decay 0 --selection best)
  fi
}
run_sequence all
method_inference "$ROOT/${TASK_LIST[${#TASK_LIST[@]}-1]}/gradual_prune"
