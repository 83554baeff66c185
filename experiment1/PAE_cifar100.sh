#!/usr/bin/env bash
# PAE ("pack and expand", Hung et al. 2019's predecessor) on experiment 1 (spec §7.3): the CPG loop
# without picking (every earlier weight is always used), gradual pruning and growth up to
# MAX_WIDTH=2.0, goals from the fine-Max file (experiment1/finetune_cifar100.sh), no retrain.
# Ends with the inference of every task -> RESULTS_FILE (logs/PAE_cifar100_results.json).
# ORIGINAL_RULES=1 and TRAIN_ACC_GATE work as for CPG (experiment1/CPG_cifar100_scratch_mul_1.5.sh).
# Usage: bash experiment1/PAE_cifar100.sh       (rerun to resume; env vars as in experiment1/common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export METHOD=PAE LEARN_PICK=0 RETRAIN=0
export MAX_WIDTH=${MAX_WIDTH:-2.0} SETTING=${SETTING:-finetune_max_mul_2.0}
export GOALS_FILE=${GOALS_FILE:-logs/finetune_max_cifar100_acc.txt}
export RESULTS_FILE=${RESULTS_FILE:-logs/PAE_cifar100_results.json}
bash experiment1/CPG_cifar100_scratch_mul_1.5.sh
bash experiment1/inference_CPG_cifar100.sh
