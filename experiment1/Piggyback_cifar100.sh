#!/usr/bin/env bash
# Piggyback (Mallya, Davis & Lazebnik, ECCV 2018) on experiment 1, as a configuration of the CPG
# engine: task 1 is trained as usual and then frozen whole (it owns every weight; no pruning);
# each later task learns only its binary pick mask over task 1's weights (init 1e-2, threshold
# 5e-3, Adam LR 1e-4, x0.1 after 15 of 30 epochs: piggyback's src/scripts/run_piggyback_training.sh),
# its BatchNorm and its head (SGD here at PIGGYBACK_LR; piggyback trained the classifier with Adam).
# No growth. Ends with the inference of every task -> RESULTS_FILE (logs/Piggyback_cifar100_results.json).
# Usage: bash experiment1/Piggyback_cifar100.sh   (rerun to resume; env vars as in experiment1/common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment1/common.sh
METHOD=Piggyback
LR=${LR:-1e-2}                                     # task 1, as CPG's Phase A (x0.1 after 50% and 80%)
PIGGYBACK_EPOCHS=${PIGGYBACK_EPOCHS:-30}
PIGGYBACK_DECAY=${PIGGYBACK_DECAY:-$(milestones "$PIGGYBACK_EPOCHS" 50)}
PIGGYBACK_LR_MASK=${PIGGYBACK_LR_MASK:-1e-4}
PIGGYBACK_LR=${PIGGYBACK_LR:-1e-3}                 # later tasks' BatchNorm and head
RESULTS_FILE=${RESULTS_FILE:-logs/Piggyback_cifar100_results.json}
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment1/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight

chain_flags() {   # task 1 trains its weights; later tasks only pick (they own no weight: exit 5)
  if [ "$1" -eq 1 ]; then
    task_extra=(--epochs "$FINETUNE_EPOCHS" --lr "$LR" --lr_decay_epochs $LR_DECAY_EPOCHS)
  else
    task_extra=(--epochs "$PIGGYBACK_EPOCHS" --lr "$PIGGYBACK_LR" --lr_mask "$PIGGYBACK_LR_MASK"
                --lr_decay_epochs "$PIGGYBACK_DECAY" --mask_lr_decay_epochs "$PIGGYBACK_DECAY"
                --mask_lr_decay_factors 0.1)
  fi
}
chain_tasks --selection last --train_acc_gate 0 --weight_decay 4e-5
