#!/usr/bin/env bash
# Piggyback (Mallya, Davis & Lazebnik, ECCV 2018) on experiment 1, as a configuration of the CPG
# engine: task 1 is trained as CPG's Phase A and then frozen whole (it owns every weight; no
# pruning); each later task learns only its binary pick mask over task 1's weights and its head,
# with piggyback's own settings (src/scripts/run_piggyback_training.sh, src/main.py): masks init
# 1e-2, threshold 5e-3, Adam at 1e-4; the classifier with its own Adam at 1e-4 (--lr_classifier);
# both x0.1 after 15 of 30 epochs; BatchNorm frozen in eval mode and biases fixed (no --train_bn:
# they keep task 1's values); the best epoch is kept. No growth.
# Ends with the inference of every task -> RESULTS_FILE (logs/Piggyback_cifar100_results.json).
# Usage: bash experiment1/Piggyback_cifar100.sh   (rerun to resume; env vars as in experiment1/common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment1/common.sh
METHOD=Piggyback
LR=${LR:-1e-2}                                     # task 1, as CPG's Phase A (x0.1 after 50% and 80%)
PIGGYBACK_EPOCHS=${PIGGYBACK_EPOCHS:-30}
PIGGYBACK_DECAY=${PIGGYBACK_DECAY:-$(milestones "$PIGGYBACK_EPOCHS" 50)}
PIGGYBACK_LR_MASK=${PIGGYBACK_LR_MASK:-1e-4}
PIGGYBACK_LR_CLASSIFIER=${PIGGYBACK_LR_CLASSIFIER:-1e-4}   # later tasks' head (Adam)
RESULTS_FILE=${RESULTS_FILE:-logs/Piggyback_cifar100_results.json}
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment1/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight

task_flags() {   # task 1 trains its weights; later tasks only pick (they own no weight: exit 5)
  task_args=("${method_flags[@]}")
  if [ "$1" -eq 1 ]; then
    task_args+=(--epochs "$FINETUNE_EPOCHS" --lr "$LR" --lr_decay_epochs $LR_DECAY_EPOCHS --selection last
                --train_acc_gate 0 --weight_decay 4e-5)
  else   # --lr: the weights' SGD, which has nothing left to train; the head's LR decays with it
    task_args+=(--epochs "$PIGGYBACK_EPOCHS" --lr "$PIGGYBACK_LR_CLASSIFIER" --lr_classifier "$PIGGYBACK_LR_CLASSIFIER"
                --lr_mask "$PIGGYBACK_LR_MASK" --lr_decay_epochs "$PIGGYBACK_DECAY"
                --mask_lr_decay_epochs "$PIGGYBACK_DECAY" --mask_lr_decay_factors 0.1 --no-train_bn
                --no-train_biases --weight_decay 0 --selection best)
  fi
}
run_sequence all
method_inference "$ROOT/${TASK_LIST[${#TASK_LIST[@]}-1]}/gradual_prune"
