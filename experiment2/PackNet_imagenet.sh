#!/usr/bin/env bash
# PackNet (Mallya & Lazebnik, CVPR 2018) on experiment 2, as a configuration of the CPG engine,
# with PackNet's own fine-grained settings (its src/scripts/run_sequence.sh): imagenet (the
# pretrained ResNet-50, evaluated) pruned to 0.5, each later task trained 20 epochs at LR 1e-3
# (x0.1 after 10) on the free weights and pruned to 0.75, the last task not pruned; every
# pruning is one-shot and followed by 10 epochs at LR 1e-4. No picking, no growth, no gate.
# Ends with the inference of every task -> RESULTS_FILE (logs/PackNet_imagenet_results.json).
# Usage: bash experiment2/PackNet_imagenet.sh   (PRUNE_RATIO_<task> sets one task's ratio, "none": no pruning)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS_FILE=${RESULTS_FILE:-logs/PackNet_imagenet_results.json}
source experiment2/common.sh
METHOD=PackNet
PACKNET_EPOCHS=${PACKNET_EPOCHS:-20}
PACKNET_LR=${PACKNET_LR:-1e-3}
PACKNET_DECAY=${PACKNET_DECAY:-$(milestones "$PACKNET_EPOCHS" 50)}
PRUNE_RATIO=${PRUNE_RATIO:-0.75}
PRUNE_RATIO_imagenet=${PRUNE_RATIO_imagenet:-0.5}
last=${TASK_LIST[${#TASK_LIST[@]}-1]}
set_last="PRUNE_RATIO_${last//[^A-Za-z0-9_]/_}"
printf -v "$set_last" '%s' "${!set_last:-none}"   # the last task keeps all its weights
PACKNET_RETRAIN_EPOCHS=${PACKNET_RETRAIN_EPOCHS:-10}
PACKNET_RETRAIN_LR=${PACKNET_RETRAIN_LR:-1e-4}
PACKNET_RETRAIN_DECAY=${PACKNET_RETRAIN_DECAY-}
PACKNET_GATE=${PACKNET_GATE:-0}
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment2/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight

chain_flags() {   # task 1 from PRETRAINED_PATH (a 1000-class task is only evaluated)
  task_extra=()
  if [ "$1" -eq 1 ]; then pretrained_flags 1 "$2" "$PACKNET_EPOCHS"; task_extra=("${first_flags[@]}"); fi
}
packnet_chain --epochs "$PACKNET_EPOCHS" --lr "$PACKNET_LR" --lr_schedule milestones \
  --lr_decay_epochs "$PACKNET_DECAY" --selection last --train_acc_gate 0 --weight_decay 4e-5
