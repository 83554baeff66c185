#!/usr/bin/env bash
# Evaluate the four tasks of one age fold's final model in one process (spec §9.2): face
# verification on LFW (mean ± std over 10 folds), gender, emotion and age<AGEFOLD> on their val
# splits. The original's four-argument interface:
#   bash experiment3/inference_FvGeEmAg.sh GPU_ID TARGET_SPARSITY AGEFOLD LOG_PATH
#     GPU_ID           CUDA device index (0, 1, ...), cpu, or auto
#     TARGET_SPARSITY  the age task's pruning stage to evaluate (e.g. 0.2), or "picked": the ratio
#                      you picked (a DONE task keeps only its picked stage)
#     AGEFOLD          the fold (0..4 in the paper, or age0..age4), learned by experiment3/FvGeEmAg<f>_CPG_face.sh
#     LOG_PATH         log file (appended)
# FOLD_RESULTS (optional) writes the fold's results as JSON. Env vars as in experiment3/common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment3/common.sh
usage="usage: bash experiment3/inference_FvGeEmAg.sh GPU_ID TARGET_SPARSITY AGEFOLD LOG_PATH (e.g. 0 0.2 0 logs/FvGeEmAg0_s02.log)"
if [ $# -ne 4 ]; then echo "$usage; got $# argument(s)" >&2; exit 1; fi
gpu=$1 sparsity=$2 fold=${3#"$AGE_TASK"} log=$4   # AGEFOLD 0 or, as in the original, age0

case $gpu in
  cpu|auto) DEVICE=$gpu ;;
  *) if [[ $gpu =~ ^[0-9]+$ ]]; then DEVICE=cuda:$gpu
     else echo "GPU_ID=$gpu: use a CUDA device index (0, 1, ...), cpu or auto" >&2; exit 1; fi ;;
esac
if ! [[ $fold =~ ^[0-9]+$ ]]; then echo "AGEFOLD=$fold: use a fold number (0..4 in the paper)" >&2; exit 1; fi
age=$ROOT/$AGE_TASK$fold
if [ ! -d "$age" ]; then
  echo "AGEFOLD=$fold: $age does not exist; learn it first with bash experiment3/FvGeEmAg${fold}_CPG_face.sh" >&2
  exit 1
fi
picked=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["chosen_pruning_ratio"])' \
  "$age/gradual_prune/chosen.json" 2>/dev/null || echo none)
if [ "$sparsity" = picked ]; then
  if [ "$picked" = none ]; then
    echo "TARGET_SPARSITY=picked: no ratio of $AGE_TASK$fold is picked yet ($age/gradual_prune/chosen.json); pick one with tools/pick_pruning_ratio.py or give a ratio" >&2
    exit 1
  fi
  load=$age/gradual_prune
else
  norm=$(python -c 'import sys; v = float(sys.argv[1]); assert 0 < v < 1; print(repr(round(v, 4)))' "$sparsity" 2>/dev/null) || {
    echo "TARGET_SPARSITY=$sparsity: use a pruning ratio between 0 and 1 (e.g. 0.2) or picked" >&2; exit 1; }
  # the original's released folders hold only its checkpoint-<E>.pth.tar there: convert it once
  # (docs/original-checkpoints.md); a no-op for a stage trained here
  if compgen -G "$age/gradual_prune/$norm/checkpoint-*.pth.tar" > /dev/null; then
    python tools/import_original_checkpoint.py --source "$age/gradual_prune/$norm" --if_needed
  fi
  if [ -f "$age/gradual_prune/$norm/checkpoint.pth.tar" ]; then load=$age/gradual_prune/$norm
  elif [ "$picked" != none ] && python -c 'import sys; sys.exit(abs(float(sys.argv[1]) - float(sys.argv[2])) > 1e-9)' "$picked" "$norm"; then
    load=$age/gradual_prune   # the picked stage, promoted
  else
    kept=$(cd "$age/gradual_prune" 2>/dev/null && ls -d */ 2>/dev/null | tr -d / | while read -r d; do
      [ -f "$d/checkpoint.pth.tar" ] && printf '%s ' "$d"; done || true)
    echo "TARGET_SPARSITY=$sparsity: $age/gradual_prune/$norm holds no checkpoint (stages with one: ${kept:-none}; picked: $picked)" >&2
    exit 1
  fi
fi
mkdir -p "$(dirname "$log")" 2>/dev/null && touch "$log" 2>/dev/null || {
  echo "LOG_PATH=$log: cannot write there; give a writable file path" >&2; exit 1; }
results=()
if [ -n "${FOLD_RESULTS:-}" ]; then results=(--results_file "$FOLD_RESULTS"); fi
echo "=== inference of fold $fold from $load on $DEVICE"
NPROC=1 cpg --mode inference --load_folder "$load" --tasks "${TASK_LIST[@]}" "$AGE_TASK$fold" \
  --log_path "$log" ${results[@]+"${results[@]}"}
