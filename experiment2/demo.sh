#!/usr/bin/env bash
# Demo of experiment 2 on built-in toy data, CPU-friendly (a few minutes on 2 cores): generates
# 3 toy fine-grained tasks in the experiment-2 layout (JPEGs of varying sizes; one "cropped"
# task), computes their goals with the baseline script, learns task 1 and picks its pruning
# ratio by hand, learns the rest with TARGET_TASK_ID=all, then evaluates every task.
# Usage: bash experiment2/demo.sh            (rerun: finished work is skipped)
#        METHODS=all bash experiment2/demo.sh   (also every compared method, then the table and PNG)
# It is experiment 2's real scripts with smaller values; any knob can still be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_DIR=${DEMO_DIR:-demo_run_exp2}
export DATA_ROOT=${DATA_ROOT:-data/toy_finegrained}
export TASKS=${TASKS:-"toy_birds_cropped toy_flowers toy_sketches"}
export PRETRAINED_PATH=${PRETRAINED_PATH-}      # none: task 1 trains from scratch (case 3)
export BASE_WIDTH=${BASE_WIDTH:-0.125}          # ResNet-50 at 1/8 of the paper's width
export IMAGE_SIZE=${IMAGE_SIZE:-32}
export BASELINE_EPOCHS=${BASELINE_EPOCHS:-6}
export FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-6}
export PATIENCE=${PATIENCE:-2}
export BASELINE_PATIENCE=${BASELINE_PATIENCE:-2}
export PRUNE_EPOCHS=${PRUNE_EPOCHS:-2}
export FIRST_TASK_PRUNE_EPOCHS=${FIRST_TASK_PRUNE_EPOCHS:-2}
export PRUNING_INTERVAL=${PRUNING_INTERVAL:-1}
export PRUNING_FREQUENCY=${PRUNING_FREQUENCY:-5}
export FIRST_TASK_PRUNING_FREQUENCY=${FIRST_TASK_PRUNING_FREQUENCY:-5}
export LR=${LR:-1e-2} LR_stanford_cars_cropped=${LR_stanford_cars_cropped:-1e-2}
export PRUNE_LR=${PRUNE_LR:-1e-3}
export CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints/$DEMO_DIR}
export GOALS_FILE=${GOALS_FILE:-logs/$DEMO_DIR/baseline_acc.txt}
RESULTS_DIR=logs/$DEMO_DIR
CPG_RESULTS=${RESULTS_FILE:-$RESULTS_DIR/results.json}
unset RESULTS_FILE   # each script below is given its own
HAND_RATIO=${HAND_RATIO:-0.5}                   # the pruning ratio picked by hand for task 1
read -r -a task_array <<< "$TASKS"

start=$SECONDS
python tools/make_toy_data.py --if_missing --layout finegrained --out "$DATA_ROOT" --task_names "${task_array[@]}" \
  --classes 5 --train "${TOY_TRAIN:-100}" --test "${TOY_TEST:-20}" --size "${TOY_SIZE:-40}"
RESULTS_FILE=$RESULTS_DIR/finetune_results.json bash experiment2/baseline_imagenet.sh
TARGET_TASK_ID=1 bash experiment2/CPG_imagenet.sh
python tools/pick_pruning_ratio.py --task_folder "$CHECKPOINT_ROOT/CPG/experiment2/resnet50/${task_array[0]}" \
  --baseline_acc_file "$GOALS_FILE" --ratio "$HAND_RATIO"
TARGET_TASK_ID=all bash experiment2/CPG_imagenet.sh
RESULTS_FILE=$CPG_RESULTS bash experiment2/inference_CPG_imagenet.sh
if [ "${METHODS:-}" = all ]; then   # the compared methods on the same toy tasks, then table + picture
  export PACKNET_EPOCHS=${PACKNET_EPOCHS:-4} PACKNET_RETRAIN_EPOCHS=${PACKNET_RETRAIN_EPOCHS:-2}
  export PIGGYBACK_EPOCHS=${PIGGYBACK_EPOCHS:-4} PROGRESSIVE_EPOCHS=${PROGRESSIVE_EPOCHS:-6}
  export SCRATCH_GOALS_FILE=$RESULTS_DIR/scratch_acc.txt PROGRESSIVE_PATIENCE=${PROGRESSIVE_PATIENCE:-2}
  for method in scratch PackNet Piggyback ProgressiveNet; do
    script=experiment2/${method}_imagenet.sh
    RESULTS_FILE=$RESULTS_DIR/${method}_results.json bash "$script"
  done
  python tools/benchmark_table.py "$RESULTS_DIR"/{scratch,finetune,ProgressiveNet,PackNet,Piggyback}_results.json \
    "$CPG_RESULTS" --paper --png "$RESULTS_DIR/benchmark.png" | tee "$RESULTS_DIR/benchmark.md"
fi
echo "demo finished in $((SECONDS - start)) s; results: $CPG_RESULTS, checkpoints: $CHECKPOINT_ROOT"
