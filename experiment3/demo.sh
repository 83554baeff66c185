#!/usr/bin/env bash
# Demo of experiment 3 on built-in toy faces, CPU-friendly (a few minutes on 2 cores): generates
# toy identities (face_verification: train identities, an LFW-style val tree and a pairs file)
# and toy gender / emotion / age-fold tasks, computes their goals with the baseline script
# (face verification trained from scratch: no face_weight.pth), learns task 1 and picks its
# pruning ratio by hand, learns the rest and every age fold with TARGET_TASK_ID=all, then prints
# the paper's table (LFW mean ± std, gender, expression, mean over the age folds).
# Usage: bash experiment3/demo.sh            (rerun: finished work is skipped)
#        METHODS=all bash experiment3/demo.sh   (also the compared methods, then the table and PNG)
# It is experiment 3's real scripts with smaller values; any knob can still be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_DIR=${DEMO_DIR:-demo_run_exp3}
export DATA_ROOT=${DATA_ROOT:-data/toy_face}
export PAIRS_FILE=${PAIRS_FILE:-$DATA_ROOT/lfw_pairs.txt}
export AGE_FOLDS=${AGE_FOLDS-0 1 2 3 4}
export PRETRAINED_PATH=${PRETRAINED_PATH-}      # none: face verification trains from scratch
export BASE_WIDTH=${BASE_WIDTH:-0.125}          # SphereNet20 at 1/8 of the paper's width
export IMAGE_SIZE=${IMAGE_SIZE:-32}
export BATCH_SIZE=${BATCH_SIZE:-32}             # every task (the paper's table: 32..256)
export BASELINE_BATCH_SIZE=${BASELINE_BATCH_SIZE:-32}
export BASELINE_EPOCHS=${BASELINE_EPOCHS:-5}
export FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-5}
export PATIENCE=${PATIENCE:-2}
export BASELINE_PATIENCE=${BASELINE_PATIENCE:-2}
export PRUNE_EPOCHS=${PRUNE_EPOCHS:-2}
export PRUNING_INTERVAL=${PRUNING_INTERVAL:-1}
export PRUNING_FREQUENCY=${PRUNING_FREQUENCY:-5}
export PRUNING_RATIOS=${PRUNING_RATIOS:-0.4 0.8}
export BASELINE_LR=${BASELINE_LR:-5e-3} BASELINE_LR_gender=${BASELINE_LR_gender:-5e-3}
export GOAL_MARGIN=${GOAL_MARGIN:-0.05}         # toy accuracies move in steps of a few percent
export CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints/$DEMO_DIR}
export GOALS_FILE=${GOALS_FILE:-logs/$DEMO_DIR/baseline_acc.txt}
RESULTS_DIR=logs/$DEMO_DIR
CPG_RESULTS=${RESULTS_FILE:-$RESULTS_DIR/results.json}
unset RESULTS_FILE   # each script below is given its own
HAND_RATIO=${HAND_RATIO:-0.4}                   # the pruning ratio picked by hand for task 1
read -r -a folds <<< "$AGE_FOLDS"
ages=()
for fold in ${folds[@]+"${folds[@]}"}; do ages+=("age$fold"); done

start=$SECONDS
python tools/make_toy_data.py --if_missing --layout face --out "$DATA_ROOT" --pairs_out "$PAIRS_FILE" \
  --task_names face_verification gender emotion ${ages[@]+"${ages[@]}"} --size "${TOY_SIZE:-32}"
RESULTS_FILE=$RESULTS_DIR/finetune_results.json bash experiment3/baseline_face.sh
TARGET_TASK_ID=1 bash experiment3/FvGeEm_CPG_face.sh
python tools/pick_pruning_ratio.py --task_folder "$CHECKPOINT_ROOT/CPG/experiment3/spherenet20/face_verification" \
  --baseline_acc_file "$GOALS_FILE" --ratio "$HAND_RATIO"
TARGET_TASK_ID=all bash experiment3/FvGeEm_CPG_face.sh
RESULTS_FILE=$CPG_RESULTS bash experiment3/inference_checkpoints_FvGeEmAg.sh
if [ "${METHODS:-}" = all ]; then   # the compared method on the same toy tasks, then table + picture
  RESULTS_FILE=$RESULTS_DIR/scratch_results.json SCRATCH_GOALS_FILE=$RESULTS_DIR/scratch_acc.txt \
    bash experiment3/scratch_face.sh
  python tools/benchmark_table.py "$RESULTS_DIR"/{scratch,finetune}_results.json "$CPG_RESULTS" --paper \
    --png "$RESULTS_DIR/benchmark.png" | tee "$RESULTS_DIR/benchmark.md"
fi
echo "demo finished in $((SECONDS - start)) s; results: $CPG_RESULTS, checkpoints: $CHECKPOINT_ROOT"
