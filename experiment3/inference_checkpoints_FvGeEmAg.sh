#!/usr/bin/env bash
# Evaluate every age fold's final model (its picked ratio; spec §9.2) and print the paper's
# table: face verification (LFW mean ± std), gender, expression, and age as the mean over the
# folds. Writes RESULTS_FILE (JSON: experiment 1's fields per task, accuracy_std for verification,
# the per-fold age accuracies) and one log per fold, logs/FvGeEmAg<f>.log.
# Usage: bash experiment3/inference_checkpoints_FvGeEmAg.sh     (GPU_ID=0|cpu|auto, default auto)
# The original's released checkpoints: place spherenet20/ in checkpoints/CPG/experiment3/ and run
# it as it is (each fold's released ratio, RELEASED_RATIOS, is converted and evaluated).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment3/common.sh
GPU_ID=${GPU_ID:-auto}
# The original's released spherenet20/ folder (docs/original-checkpoints.md)
# has no chosen.json: its folds' ratios, as the original's own script evaluates them (age0..age4).
read -r -a RELEASED_RATIO_LIST <<< "$(echo ${RELEASED_RATIOS:-0.2 0.3 0.1 0.1 0.2})"
LOG_DIR=${LOG_DIR:-$(dirname "$RESULTS_FILE")}
if [ ${#AGE_FOLD_LIST[@]} -eq 0 ]; then echo "AGE_FOLDS is empty: no age fold to evaluate" >&2; exit 1; fi
fold_files=()
for fold in "${AGE_FOLD_LIST[@]}"; do
  fold_file=$LOG_DIR/FvGeEmAg${fold}_results.json
  sparsity=picked released=${RELEASED_RATIO_LIST[$fold]:-}
  if [ ! -f "$ROOT/$AGE_TASK$fold/gradual_prune/chosen.json" ] && [ -n "$released" ] \
     && compgen -G "$ROOT/$AGE_TASK$fold/gradual_prune/$released/checkpoint-*.pth.tar" > /dev/null; then
    sparsity=$released   # the released layout
  fi
  FOLD_RESULTS=$fold_file bash experiment3/inference_FvGeEmAg.sh "$GPU_ID" "$sparsity" "$fold" "$LOG_DIR/FvGeEmAg$fold.log"
  fold_files+=("$fold_file")
done
python tools/face_results.py --folds "${fold_files[@]}" --age_task "$AGE_TASK" --out "$RESULTS_FILE"
