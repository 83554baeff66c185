#!/usr/bin/env bash
# CPG, experiment 3: face verification, gender, expression (emotion) and age learned one after
# another in ONE SphereNet20 (spec §9). The paper's workflow, one task per run:
#   TARGET_TASK_ID=N bash experiment3/FvGeEm_CPG_face.sh          (N = 1, 2, 3)
#     Phase A of task N (plateau schedule with patience 10, best epoch; grown by WIDTH_STEP up to
#     MAX_WIDTH while the goal is missed), then the pruning stages (each keeps only epochs above
#     goal - margin, and the first stage without one ends the task); it then prints the record
#     table with the goal and the rule's suggestion, and stops for your pick:
#   python tools/pick_pruning_ratio.py --task_folder <task folder> --ratio 0.5
#   bash experiment3/FvGeEmAg<f>_CPG_face.sh                      (f = 0..4)
#     task 4, the age task of fold f, branching from the emotion model you picked.
#   TARGET_TASK_ID=all bash experiment3/FvGeEm_CPG_face.sh
#     tasks 1..3, then every age fold, each picked automatically (experiment 1's rule) unless
#     it was already picked by hand. Reruns (even after kill -9) resume.
# Task 1 with PRETRAINED_PATH (face_data/face_weight.pth) is loaded and evaluated on LFW, not
# trained, as in the paper; its pruning stages train it with AngleLoss. Without the file it is
# trained from scratch (not the paper's setting; the log says so).
# Needs GOALS_FILE (experiment3/baseline_face.sh, or experiment3/goals_paper_face.txt).
# Env vars (see experiment3/common.sh) override every knob; <VAR>_<task> overrides one cell of
# the table below, <VAR> alone a whole column (e.g. PRUNE_EPOCHS=2).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment3/common.sh

TARGET_TASK_ID=${TARGET_TASK_ID:-1}   # 1..3 or all; the age scripts run task 4 of their fold
AGE_FOLD=${AGE_FOLD:-}                # set by experiment3/FvGeEmAg<f>_CPG_face.sh

# The paper's per-task settings (spec §9.1). LR: Phase A's weights (task 1 is not trained when
# pretrained); GOAL_MARGIN: goal reached when accuracy >= goal - margin, and the floor of the
# pruning stages; PRUNE_EPOCHS / PRUNING_FREQUENCY: epochs per stage / batches between mask updates.
table face_verification BATCH_SIZE=256 LR=1e-3 GOAL_MARGIN=0.005 PRUNE_LR=5e-4 PRUNE_EPOCHS=10 PRUNING_FREQUENCY=1000
table gender            BATCH_SIZE=128 LR=5e-4 GOAL_MARGIN=0.015 PRUNE_LR=5e-4 PRUNE_EPOCHS=20 PRUNING_FREQUENCY=100
table emotion           BATCH_SIZE=128 LR=5e-4 GOAL_MARGIN=0.005 PRUNE_LR=5e-4 PRUNE_EPOCHS=20 PRUNING_FREQUENCY=100
table age0              BATCH_SIZE=128 LR=5e-4 GOAL_MARGIN=0.010 PRUNE_LR=5e-4 PRUNE_EPOCHS=20 PRUNING_FREQUENCY=100
table age1              BATCH_SIZE=32  LR=1e-3 GOAL_MARGIN=0.005 PRUNE_LR=1e-4 PRUNE_EPOCHS=20 PRUNING_FREQUENCY=100
table age2              BATCH_SIZE=32  LR=1e-3 GOAL_MARGIN=0.010 PRUNE_LR=3e-5 PRUNE_EPOCHS=20 PRUNING_FREQUENCY=100
table age3              BATCH_SIZE=32  LR=5e-4 GOAL_MARGIN=0.005 PRUNE_LR=1e-5 PRUNE_EPOCHS=20 PRUNING_FREQUENCY=100
table age4              BATCH_SIZE=32  LR=5e-4 GOAL_MARGIN=0.005 PRUNE_LR=1e-4 PRUNE_EPOCHS=20 PRUNING_FREQUENCY=100
table default           BATCH_SIZE=128 LR=5e-4 GOAL_MARGIN=0.005 PRUNE_LR=5e-4 PRUNE_EPOCHS=20 PRUNING_FREQUENCY=100
LR_MASK=${LR_MASK:-5e-4}                      # x0.2 at the first plateau decay
WEIGHT_DECAY=${WEIGHT_DECAY:-4e-5}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-100}       # at most; the plateau schedule stops after 3 decays
PATIENCE=${PATIENCE:-10}
read -r -a PRUNING_RATIOS <<< "${PRUNING_RATIOS:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 0.95}"
PRUNING_INTERVAL=${PRUNING_INTERVAL:-4}       # epochs over which a stage ramps; only later epochs count
WIDTH_STEP=${WIDTH_STEP:-0.5}
MAX_WIDTH=${MAX_WIDTH:-1.5}
ALLOW_ACC_LOSS=${ALLOW_ACC_LOSS:-}            # automatic picks: tolerated accuracy below the goal (empty: the task's GOAL_MARGIN)
TRAIN_ACC_GATE=${TRAIN_ACC_GATE:-}            # empty: the paper (no gate); relative:D gates the pruning stages
ORIGINAL_RULES=${ORIGINAL_RULES:-0}           # 1: the original's rules, AngleLoss's lambda restarting each stage too
SCRIPT=experiment3/FvGeEm_CPG_face.sh
mkdir -p logs "$ROOT"

if [ -n "$AGE_FOLD" ]; then   # task 4 of one fold: the prefix, then this fold's age task
  if ! [[ $AGE_FOLD =~ ^[0-9]+$ ]]; then echo "AGE_FOLD=$AGE_FOLD: use a fold number (0..4 in the paper)" >&2; exit 1; fi
  TASK_LIST+=("$AGE_TASK$AGE_FOLD")
  PREFLIGHT_TASKS=("${TASK_LIST[@]}")
  TARGET_TASK_ID=${#TASK_LIST[@]}
fi
check_target "$TARGET_TASK_ID"
if [ -n "$AGE_FOLD" ]; then   # folds write only their own task folder: they may run side by side
  lock_run "$ROOT" shared
  lock_run "$ROOT" exclusive ".lock_${TASK_LIST[$TARGET_TASK_ID-1]}"   # no task folder before it is learned
else
  lock_run "$ROOT"
fi
if [ ! -f "$GOALS_FILE" ]; then
  echo "accuracy goal file $GOALS_FILE not found: run experiment3/baseline_face.sh first, or set GOALS_FILE=experiment3/goals_paper_face.txt" >&2
  exit 3
fi
fractions=()
if [ -n "$ALLOW_ACC_LOSS" ]; then fractions+=(ALLOW_ACC_LOSS="$ALLOW_ACC_LOSS"); fi
for task in "${PREFLIGHT_TASKS[@]}"; do fractions+=("GOAL_MARGIN_$task=$(task_setting GOAL_MARGIN "$task")"); done
preflight --goals_file "$GOALS_FILE" --fractions "${fractions[@]}"   # data, pairs, goals, knobs: before days of training
num_tasks=${#TASK_LIST[@]}
if [ -z "$AGE_FOLD" ] && [ ${#AGE_TASKS[@]} -gt 0 ]; then num_tasks=$((num_tasks + 1)); fi
common=(--baseline_acc_file "$GOALS_FILE" --weight_decay "$WEIGHT_DECAY" --patience "$PATIENCE"
        --max_allowed_network_width_multiplier "$MAX_WIDTH" --total_num_tasks "$num_tasks")
if [ -n "$ALLOW_ACC_LOSS" ]; then common+=(--allow_acc_loss "$ALLOW_ACC_LOSS"); fi
if [ -n "$TRAIN_ACC_GATE" ]; then common+=(--train_acc_gate "$TRAIN_ACC_GATE"); fi
if [ "$ORIGINAL_RULES" = 1 ]; then common+=(--original_rules); fi

# task_flags N TASK: task N's flags (the hook of run_sequence, tools/stages.sh): Phase A and the
# pruning stages in one process (utils/sequence.py), with the task's row of the table above.
task_flags() {
  local task=$2 first=(--epochs "$FINETUNE_EPOCHS")
  if [ "$1" -eq 1 ] && [ -n "$PRETRAINED_PATH" ]; then
    first=(--pretrained "$PRETRAINED_PATH" --epochs 0)   # loaded and evaluated (spec §9.1)
  fi
  task_args=("${first[@]}" --batch_size "$(task_setting BATCH_SIZE "$task")" --lr "$(task_setting LR "$task")"
             --lr_mask "$LR_MASK" --goal_margin "$(task_setting GOAL_MARGIN "$task")" "${common[@]}"
             --network_width_multiplier "$START_WIDTH" --width_step "$WIDTH_STEP"
             --pruning_ratios "${PRUNING_RATIOS[@]}" --prune_epochs "$(task_setting PRUNE_EPOCHS "$task")"
             --prune_lr "$(task_setting PRUNE_LR "$task")" --pruning_interval "$PRUNING_INTERVAL"
             --pruning_frequency "$(task_setting PRUNING_FREQUENCY "$task")")
}

next_step() {
  if [ "$1" -lt "${#TASK_LIST[@]}" ]; then echo "then: TARGET_TASK_ID=$(($1 + 1)) bash $SCRIPT"
  elif [ -z "$AGE_FOLD" ] && [ ${#AGE_TASKS[@]} -gt 0 ]; then
    echo "then: bash experiment3/FvGeEmAg${AGE_FOLD_LIST[0]}_CPG_face.sh (and the other folds' scripts; each branches from this model)"
  elif [ -n "$AGE_FOLD" ]; then echo "then: bash experiment3/inference_checkpoints_FvGeEmAg.sh"
  else echo "that was the last task (AGE_FOLDS is empty: no age fold to learn, nor for experiment3/inference_checkpoints_FvGeEmAg.sh to evaluate)"; fi
}

if [ "$TARGET_TASK_ID" = all ] && [ ${#AGE_TASKS[@]} -gt 0 ]; then
  prefix=("${TASK_LIST[@]}")
  for fold in "${AGE_FOLD_LIST[@]}"; do   # tasks 1..3 are DONE after the first fold
    TASK_LIST=("${prefix[@]}" "$AGE_TASK$fold")
    echo "=== age fold $fold"
    run_sequence all
  done
  echo "every age fold learned; evaluate with: bash experiment3/inference_checkpoints_FvGeEmAg.sh"
else
  run_sequence "$TARGET_TASK_ID"
fi
