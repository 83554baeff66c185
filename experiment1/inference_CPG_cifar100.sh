#!/usr/bin/env bash
# Evaluate every task of experiment 1 from the FINAL checkpoint (the last task's gradual_prune/),
# in one process: prints the per-task table and writes RESULTS_FILE (JSON).
# Usage: bash experiment1/inference_CPG_cifar100.sh     (env vars as in experiment1/common.sh)
#        SETTING=all_max_mul_1.5 bash experiment1/inference_CPG_cifar100.sh   (the original's released checkpoints)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment1/common.sh
SETTING=${SETTING:-scratch_mul_1.5}
METHOD=${METHOD:-CPG}   # PAE: its run's folder (experiment1/PAE_cifar100.sh sets both)
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment1/$SETTING/$ARCH
RESULTS_FILE=${RESULTS_FILE:-logs/cifar100_inference_results.json}
LAST=${TASK_LIST[${#TASK_LIST[@]}-1]}
# The original's released checkpoints (docs/original-checkpoints.md): with
# SETTING=all_max_mul_1.5 the folder holds its checkpoint-<E>.pth.tar, converted once (and again
# when it changes) into checkpoint.pth.tar beside it; a no-op for a folder trained here.
if compgen -G "$ROOT/$LAST/gradual_prune/checkpoint-*.pth.tar" > /dev/null; then
  python tools/import_original_checkpoint.py --source "$ROOT/$LAST/gradual_prune" --if_needed
fi
mkdir -p logs
NPROC=1 cpg --mode inference --load_folder "$ROOT/$LAST/gradual_prune" --tasks "${TASK_LIST[@]}" \
  --results_file "$RESULTS_FILE" --method "$METHOD" --log_path "logs/${METHOD}_cifar100_inference.log"
