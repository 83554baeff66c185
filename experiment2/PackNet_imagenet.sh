#!/usr/bin/env bash
# PackNet (Mallya & Lazebnik, CVPR 2018) on experiment 2, as a configuration of the CPG engine,
# with PackNet's own fine-grained settings (src/scripts/run_all_sequence.sh "nobias-nobn",
# run_sequence.sh, run_imagenet_pruning.sh, src/main.py): imagenet (the pretrained ResNet-50,
# evaluated) pruned at once to 0.5, then 10 epochs at LR 1e-4 (x0.1 after 5) with its BatchNorm
# and biases trained; each later task trained 20 epochs at LR 1e-3 (x0.1 after 10) on the free
# weights with BatchNorm frozen in eval mode at the ImageNet statistics and biases fixed, pruned
# at once to 0.75, then 10 epochs at LR 1e-4; the last task not pruned. Plain momentum SGD 0.9,
# weight decay 0; every training keeps its best epoch, and a retrain only where it beats the model
# right after pruning. No picking, no growth, no gate.
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
PACKNET_RETRAIN_DECAY=${PACKNET_RETRAIN_DECAY-}   # x0.1 every 10 epochs: never within 10
PACKNET_RETRAIN_DECAY_imagenet=${PACKNET_RETRAIN_DECAY_imagenet:-5}   # run_imagenet_pruning.sh
PACKNET_WEIGHT_DECAY=${PACKNET_WEIGHT_DECAY:-0}
PACKNET_GATE=${PACKNET_GATE:-0}
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment2/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight

task_flags() {   # task 1 from PRETRAINED_PATH (a 1000-class task is only evaluated)
  pretrained_flags "$1" "$2" "$PACKNET_EPOCHS"
  packnet_stage "$2"
  task_args=("${method_flags[@]}" --no-learn_pick "${first_flags[@]}" --lr "$PACKNET_LR"
             --lr_schedule milestones --lr_decay_epochs "$PACKNET_DECAY" --selection best --no-nesterov
             --weight_decay "$PACKNET_WEIGHT_DECAY" ${packnet_args[@]+"${packnet_args[@]}"})
  if [ "$1" -gt 1 ]; then task_args+=(--no-train_bn --no-train_biases); fi   # "nobias-nobn"
}
run_sequence all
method_inference "$ROOT/${TASK_LIST[${#TASK_LIST[@]}-1]}/gradual_prune"
