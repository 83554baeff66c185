#!/usr/bin/env bash
# Evaluate every task of experiment 2 from the FINAL checkpoint (the last task's gradual_prune/,
# after its pick), in one process, on each task's test split (imagenet: val): prints the per-task
# table and writes RESULTS_FILE (JSON).
# Usage: bash experiment2/inference_CPG_imagenet.sh     (env vars as in experiment2/common.sh)
#        (the original's released resnet50/ folder placed in checkpoints/CPG/experiment2/ works as it is)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment2/common.sh
ROOT=$CHECKPOINT_ROOT/CPG/experiment2/$ARCH
LAST=${TASK_LIST[${#TASK_LIST[@]}-1]}
# The original's released checkpoints (docs/original-checkpoints.md): the
# released resnet50/ folder holds its checkpoint-<E>.pth.tar, converted once (and again
# when it changes) into checkpoint.pth.tar beside it; a no-op for a folder trained here.
if compgen -G "$ROOT/$LAST/gradual_prune/checkpoint-*.pth.tar" > /dev/null; then
  python tools/import_original_checkpoint.py --source "$ROOT/$LAST/gradual_prune" --if_needed
fi
mkdir -p logs
NPROC=1 cpg --mode inference --load_folder "$ROOT/$LAST/gradual_prune" --tasks "${TASK_LIST[@]}" \
  --results_file "$RESULTS_FILE" --log_path logs/imagenet_inference.log
