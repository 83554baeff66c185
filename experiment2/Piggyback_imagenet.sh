#!/usr/bin/env bash
# Piggyback (Mallya, Davis & Lazebnik, ECCV 2018) on experiment 2, as a configuration of the CPG
# engine: task 1 (imagenet: torchvision's pretrained ResNet-50, evaluated) is frozen whole; each
# later task learns only its binary pick mask over it (init 1e-2, threshold 5e-3, Adam LR 1e-4,
# x0.1 after 15 of 30 epochs: piggyback's run_piggyback_training.sh), its BatchNorm and its head
# (SGD at PIGGYBACK_LR; piggyback used Adam for the classifier). No pruning, no growth.
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
PIGGYBACK_LR=${PIGGYBACK_LR:-1e-3}
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment2/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight

chain_flags() {   # task 1: pretrained (or trained); later tasks only pick (they own no weight)
  if [ "$1" -eq 1 ]; then
    pretrained_flags 1 "$2" "$FINETUNE_EPOCHS"
    task_extra=("${first_flags[@]}" --lr "$LR")
  else
    task_extra=(--epochs "$PIGGYBACK_EPOCHS" --lr_schedule milestones --lr "$PIGGYBACK_LR"
                --lr_mask "$PIGGYBACK_LR_MASK" --lr_decay_epochs "$PIGGYBACK_DECAY"
                --mask_lr_decay_epochs "$PIGGYBACK_DECAY" --mask_lr_decay_factors 0.1 --selection last
                --train_acc_gate 0)
  fi
}
chain_tasks --weight_decay 4e-5
