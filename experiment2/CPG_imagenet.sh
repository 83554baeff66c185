#!/usr/bin/env bash
# CPG, experiment 2: ImageNet + five fine-grained tasks learned one after another in ONE ResNet-50.
# The paper's workflow, one task per run:
#   TARGET_TASK_ID=N bash experiment2/CPG_imagenet.sh
#     Phase A of task N (plateau schedule, best epoch; grown by WIDTH_STEP up to MAX_WIDTH while the
#     goal is missed), then the pruning stages, which write <task>/gradual_prune/record.txt; it
#     then stops and prints the record as a table with the goal and the rule's suggestion.
#   python tools/pick_pruning_ratio.py --task_folder <task folder> --ratio 0.4
#     promotes the chosen stage; then TARGET_TASK_ID=N+1 continues from it.
#   TARGET_TASK_ID=all bash experiment2/CPG_imagenet.sh
#     every task of TASKS in turn, each picked automatically (experiment 1's rule) unless it was
#     already picked by hand. Reruns (even after kill -9) resume, as in experiment 1.
# Needs GOALS_FILE (experiment2/baseline_imagenet.sh, or experiment2/goals_piggyback_resnet50.txt).
# Env vars (see experiment2/common.sh) override every knob; LR_<task> / PRUNE_LR_<task> override
# the per-task learning rates below.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment2/common.sh

TARGET_TASK_ID=${TARGET_TASK_ID:-1}           # 1..number of tasks, or all
# Per-task learning rates (spec §8.1). Phase A (weights; the pick masks use LR_MASK):
LR_imagenet=${LR_imagenet:-1e-3}              # not trained when pretrained
LR_cubs_cropped=${LR_cubs_cropped:-1e-3}
LR_stanford_cars_cropped=${LR_stanford_cars_cropped:-1e-2}
LR_flowers=${LR_flowers:-1e-3}
LR_wikiart=${LR_wikiart:-1e-3}
LR_sketches=${LR_sketches:-1e-3}
LR=${LR:-1e-3}                                # any other task
PRUNE_LR_imagenet=${PRUNE_LR_imagenet:-3e-4}
PRUNE_LR=${PRUNE_LR:-1e-3}                    # any other task
LR_MASK=${LR_MASK:-1e-4}                      # x0.2 at the first plateau decay
WEIGHT_DECAY=${WEIGHT_DECAY:-4e-5}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-300}       # at most; the plateau schedule stops after 3 decays
PATIENCE=${PATIENCE:-5}
GOAL_MARGIN=${GOAL_MARGIN:-0.005}             # goal reached when accuracy >= goal - margin
PRUNE_EPOCHS=${PRUNE_EPOCHS:-20}
FIRST_TASK_PRUNE_EPOCHS=${FIRST_TASK_PRUNE_EPOCHS:-10}
read -r -a PRUNING_RATIOS <<< "${PRUNING_RATIOS:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 0.95}"
PRUNING_INTERVAL=${PRUNING_INTERVAL:-4}       # epochs over which a stage ramps; only later epochs count
PRUNING_FREQUENCY=${PRUNING_FREQUENCY:-50}    # batches between mask updates
FIRST_TASK_PRUNING_FREQUENCY=${FIRST_TASK_PRUNING_FREQUENCY:-1000}
WIDTH_STEP=${WIDTH_STEP:-0.5}
MAX_WIDTH=${MAX_WIDTH:-1.5}
ALLOW_ACC_LOSS=${ALLOW_ACC_LOSS:-}            # automatic picks: tolerated accuracy below the goal (empty: GOAL_MARGIN)
TRAIN_ACC_GATE=${TRAIN_ACC_GATE:-}            # empty: the paper (no gate); relative:D gates the pruning stages
ORIGINAL_RULES=${ORIGINAL_RULES:-0}           # 1: the original's rules (docs/differences.md)
ROOT=$CHECKPOINT_ROOT/CPG/experiment2/$ARCH
SCRIPT=experiment2/CPG_imagenet.sh
mkdir -p logs "$ROOT"
lock_run "$ROOT"

check_target "$TARGET_TASK_ID"
if [ ! -f "$GOALS_FILE" ]; then
  echo "accuracy goal file $GOALS_FILE not found: run experiment2/baseline_imagenet.sh first, or set GOALS_FILE=experiment2/goals_piggyback_resnet50.txt" >&2
  exit 3
fi
fractions=(GOAL_MARGIN="$GOAL_MARGIN")
if [ -n "$ALLOW_ACC_LOSS" ]; then fractions+=(ALLOW_ACC_LOSS="$ALLOW_ACC_LOSS"); fi
preflight --goals_file "$GOALS_FILE" --fractions "${fractions[@]}"   # before days of training
common=(--baseline_acc_file "$GOALS_FILE" --weight_decay "$WEIGHT_DECAY" --goal_margin "$GOAL_MARGIN"
        --max_allowed_network_width_multiplier "$MAX_WIDTH" --total_num_tasks "${#TASK_LIST[@]}"
        --patience "$PATIENCE")
if [ -n "$ALLOW_ACC_LOSS" ]; then common+=(--allow_acc_loss "$ALLOW_ACC_LOSS"); fi
if [ -n "$TRAIN_ACC_GATE" ]; then common+=(--train_acc_gate "$TRAIN_ACC_GATE"); fi
if [ "$ORIGINAL_RULES" = 1 ]; then common+=(--original_rules); fi

# task_flags N TASK: task N's flags (the hook of run_sequence, tools/stages.sh): Phase A and the
# pruning stages in one process (utils/sequence.py).
task_flags() {
  local epochs=$PRUNE_EPOCHS frequency=$PRUNING_FREQUENCY
  if [ "$1" -eq 1 ]; then epochs=$FIRST_TASK_PRUNE_EPOCHS; frequency=$FIRST_TASK_PRUNING_FREQUENCY; fi
  pretrained_flags "$1" "$2" "$FINETUNE_EPOCHS"
  task_args=("${first_flags[@]}" --lr "$(per_task LR "$2" "$LR")" --lr_mask "$LR_MASK" "${common[@]}"
             --network_width_multiplier "$START_WIDTH" --width_step "$WIDTH_STEP"
             --pruning_ratios "${PRUNING_RATIOS[@]}" --prune_epochs "$epochs"
             --prune_lr "$(per_task PRUNE_LR "$2" "$PRUNE_LR")" --pruning_interval "$PRUNING_INTERVAL"
             --pruning_frequency "$frequency")
}

next_step() {
  if [ "$1" -lt "${#TASK_LIST[@]}" ]; then echo "then: TARGET_TASK_ID=$(($1 + 1)) bash $SCRIPT"
  else echo "then: bash experiment2/inference_CPG_imagenet.sh"; fi
}

run_sequence "$TARGET_TASK_ID"
