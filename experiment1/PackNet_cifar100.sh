#!/usr/bin/env bash
# PackNet (Mallya & Lazebnik, CVPR 2018) on experiment 1 (spec §7.3), as a configuration of the
# CPG engine: each task trains on all free weights (earlier weights all used, frozen; no picking,
# no growth), then ONE pruning stage: its own weights pruned at once to PRUNE_RATIO (0.6) per
# layer, before a retrain of 30 epochs at LR 1e-3 (x0.1 after epoch 25), kept only if its final
# train accuracy exceeds 0.97 ("pruning too much" otherwise: the run stops and says so). One
# process per task (utils/sequence.py), as CPG.
# Ends with the inference of every task -> RESULTS_FILE (logs/PackNet_cifar100_results.json).
# Usage: bash experiment1/PackNet_cifar100.sh    (rerun to resume; env vars as in experiment1/common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment1/common.sh
METHOD=PackNet
LR=${LR:-1e-2}                                  # training on the free weights (x0.1 after 50% and 80%)
PRUNE_RATIO=${PRUNE_RATIO:-0.6}
PACKNET_RETRAIN_EPOCHS=${PACKNET_RETRAIN_EPOCHS:-30}
PACKNET_RETRAIN_LR=${PACKNET_RETRAIN_LR:-1e-3}
PACKNET_RETRAIN_DECAY=${PACKNET_RETRAIN_DECAY:-$(milestones "$PACKNET_RETRAIN_EPOCHS" 25/30)}
PACKNET_GATE=${PACKNET_GATE:-0.97}
RESULTS_FILE=${RESULTS_FILE:-logs/PackNet_cifar100_results.json}
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment1/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight

task_flags() {   # Phase A on the free weights (every earlier weight used, frozen), then the stage
  packnet_stage "$2"
  task_args=("${method_flags[@]}" --no-learn_pick --epochs "$FINETUNE_EPOCHS" --lr "$LR"
             --lr_decay_epochs $LR_DECAY_EPOCHS --weight_decay 4e-5 ${packnet_args[@]+"${packnet_args[@]}"})
}
run_sequence all
method_inference "$ROOT/${TASK_LIST[${#TASK_LIST[@]}-1]}/gradual_prune"
