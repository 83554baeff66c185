#!/usr/bin/env bash
# Demo of experiment 1 on built-in toy data, CPU-friendly (a few minutes on 2 cores):
# generates 3 toy tasks in the CIFAR-100 layout, computes their accuracy goals with the baseline
# script, learns them with the full CPG script (growing, 10 pruning stages, ratio choice,
# picking, retrain) and evaluates every task from the final checkpoint.
# Usage: bash experiment1/demo.sh            (rerun: finished work is skipped)
#        METHODS=all bash experiment1/demo.sh   (also every compared method, then the table and PNG)
# It is experiment 1's real scripts with smaller values; any knob can still be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_DIR=${DEMO_DIR:-demo_run}
export DATA_ROOT=${DATA_ROOT:-data/toy}
export TASKS=${TASKS:-"toy_task_1 toy_task_2 toy_task_3"}
export BASE_WIDTH=${BASE_WIDTH:-0.125}          # VGG16-BN at 1/8 of the paper's width
export BASELINE_EPOCHS=${BASELINE_EPOCHS:-6}
export FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-6}
export PRUNE_EPOCHS=${PRUNE_EPOCHS:-2}
export PRUNING_INTERVAL=${PRUNING_INTERVAL:-1}
export RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-3}
export CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints/$DEMO_DIR}
export GOALS_FILE=${GOALS_FILE:-logs/$DEMO_DIR/baseline_acc.txt}
RESULTS_DIR=logs/$DEMO_DIR
CPG_RESULTS=${RESULTS_FILE:-$RESULTS_DIR/results.json}
unset RESULTS_FILE   # each script below is given its own
read -r -a task_array <<< "$TASKS"

start=$SECONDS
python tools/make_toy_data.py --if_missing --out "$DATA_ROOT" --task_names "${task_array[@]}" --classes 5 \
  --train "${TOY_TRAIN:-200}" --test "${TOY_TEST:-40}"
RESULTS_FILE=$RESULTS_DIR/scratch_results.json bash experiment1/baseline_cifar100.sh
bash experiment1/CPG_cifar100_scratch_mul_1.5.sh
RESULTS_FILE=$CPG_RESULTS bash experiment1/inference_CPG_cifar100.sh
if [ "${METHODS:-}" = all ]; then   # the compared methods on the same toy tasks, then table + picture
  export RUNS=${RUNS:-2} FINETUNE_DIR=$RESULTS_DIR PIGGYBACK_EPOCHS=${PIGGYBACK_EPOCHS:-4}
  export PACKNET_RETRAIN_EPOCHS=${PACKNET_RETRAIN_EPOCHS:-6}
  export PACKNET_GATE=${PACKNET_GATE:-0.8}   # 0.97 in the paper: out of reach in a few toy epochs
  bash experiment1/finetune_cifar100.sh                      # fine-Avg, fine-Max (PAE's goals)
  RESULTS_FILE=$RESULTS_DIR/PackNet_results.json bash experiment1/PackNet_cifar100.sh
  RESULTS_FILE=$RESULTS_DIR/Piggyback_results.json bash experiment1/Piggyback_cifar100.sh
  RESULTS_FILE=$RESULTS_DIR/PAE_results.json GOALS_FILE=$RESULTS_DIR/finetune_max_cifar100_acc.txt \
    bash experiment1/PAE_cifar100.sh
  python tools/benchmark_table.py "$RESULTS_DIR"/{scratch_results,fine-Avg_cifar100_results,fine-Max_cifar100_results,PackNet_results,PAE_results,Piggyback_results}.json \
    "$CPG_RESULTS" --paper --png "$RESULTS_DIR/benchmark.png" | tee "$RESULTS_DIR/benchmark.md"
fi
echo "demo finished in $((SECONDS - start)) s; results: $CPG_RESULTS, checkpoints: $CHECKPOINT_ROOT"
