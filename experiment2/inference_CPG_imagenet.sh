#!/usr/bin/env bash
# Evaluate every task of experiment 2 from the FINAL checkpoint (the last task's gradual_prune/,
# after its pick), in one process, on each task's test split (imagenet: val): prints the per-task
# table and writes RESULTS_FILE (JSON).
# Usage: bash experiment2/inference_CPG_imagenet.sh     (env vars as in experiment2/common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment2/common.sh
ROOT=$CHECKPOINT_ROOT/CPG/experiment2/$ARCH
LAST=${TASK_LIST[${#TASK_LIST[@]}-1]}
mkdir -p logs
NPROC=1 cpg --mode inference --load_folder "$ROOT/$LAST/gradual_prune" --tasks "${TASK_LIST[@]}" \
  --results_file "$RESULTS_FILE" --log_path logs/imagenet_inference.log
