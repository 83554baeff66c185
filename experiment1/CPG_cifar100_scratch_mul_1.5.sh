#!/usr/bin/env bash
# CPG, experiment 1: the 20 CIFAR-100 super-class tasks learned one after another in ONE VGG16-BN.
# Per task: Phase A (pick + train; grow by +0.5 and retry while the goal is missed, up to 1.5),
# gradual pruning 0.1 ... 0.9, 0.95 (compact), automatic ratio choice, then for tasks >= 2 the
# retrain of pick mask and weights, kept only if it improves. Needs GOALS_FILE (baseline_cifar100.sh).
# Usage: bash experiment1/CPG_cifar100_scratch_mul_1.5.sh
#   Rerun after an interruption (even kill -9): finished tasks are skipped, finished stages replay
#   their status, the running stage resumes from its last resume state (written every
#   RESUME_EVERY_MINUTES). Env vars (see experiment1/common.sh) override every knob.
# Exit statuses of CPG_cifar100_main.py (README "Exit codes"): 0 ok, 1 error, 2 widen and retry,
# 3 goal file missing, 5 task owns no weights (skip pruning/retrain), 6 stop the pruning loop.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment1/common.sh

LR=${LR:-1e-2}                       # Phase A, weights
LR_MASK=${LR_MASK:-5e-4}             # Phase A, pick masks (x0.2 after 50%, x0 after 70%)
PRUNE_LR=${PRUNE_LR:-1e-3}
RETRAIN_LR=${RETRAIN_LR:-1e-3}
RETRAIN_LR_MASK=${RETRAIN_LR_MASK:-1e-4}
WEIGHT_DECAY=${WEIGHT_DECAY:-4e-5}
START_WIDTH=${START_WIDTH:-1.0}
WIDTH_STEP=${WIDTH_STEP:-0.5}
MAX_WIDTH=${MAX_WIDTH:-1.5}
read -r -a PRUNING_RATIOS <<< "${PRUNING_RATIOS:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 0.95}"
PRUNING_INTERVAL=${PRUNING_INTERVAL:-4}     # epochs over which a stage ramps its sparsity
PRUNING_FREQUENCY=${PRUNING_FREQUENCY:-10}  # batches between mask updates
ALLOW_ACC_LOSS=${ALLOW_ACC_LOSS:-0.0}
TRAIN_ACC_GATE=${TRAIN_ACC_GATE:-0.95}
TOTAL_NUM_TASKS=${TOTAL_NUM_TASKS:-${#TASK_LIST[@]}}
SETTING=${SETTING:-scratch_mul_1.5}
ROOT=$CHECKPOINT_ROOT/CPG/experiment1/$SETTING/$ARCH
mkdir -p logs "$ROOT"

if [ ! -f "$GOALS_FILE" ]; then
  echo "accuracy goal file $GOALS_FILE not found: run experiment1/baseline_cifar100.sh first" >&2
  exit 3
fi
preflight --goals_file "$GOALS_FILE"   # every task's data and goal, before hours of training
common=(--baseline_acc_file "$GOALS_FILE" --weight_decay "$WEIGHT_DECAY"
        --max_allowed_network_width_multiplier "$MAX_WIDTH" --total_num_tasks "$TOTAL_NUM_TASKS"
        --train_acc_gate "$TRAIN_ACC_GATE" --lr_decay_epochs $LR_DECAY_EPOCHS
        --mask_lr_decay_epochs $MASK_LR_DECAY_EPOCHS)

fail() { echo "stopping: $1 exited with status $2 (see $3)" >&2; exit "$2"; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b) ? a : b }'; }
# Once a task is DONE its stage copies go (gradual_prune/checkpoint.pth.tar holds the chosen model);
# their result.json files stay. Never earlier: every step of an unfinished task must stay replayable.
drop_stage_copies() {
  rm -f "$1"/gradual_prune/*/checkpoint.pth.tar "$1"/gradual_prune/*/checkpoint.pth.tar.json \
    "$1/retrain/checkpoint.pth.tar" "$1/retrain/checkpoint.pth.tar.json"
}

width=$START_WIDTH   # raw multiplier; only grows. The checkpoint's width wins if it is larger.
prev=""
for task in "${TASK_LIST[@]}"; do
  dir=$ROOT/$task
  log=$dir/train.log
  # <task>/width: the width this task trains at, written before each attempt, so that a rerun
  # continues there instead of retraining the smaller widths that already missed the goal.
  if [ -f "$dir/width" ]; then width=$(max "$width" "$(cat "$dir/width")"); fi
  if [ -f "$dir/DONE" ]; then
    echo "=== $task: already learned, skipping"; drop_stage_copies "$dir"; prev=$task; continue
  fi
  echo "=== $task (width multiplier $width)"
  mkdir -p "$dir"
  load=()
  if [ -n "$prev" ]; then load=(--load_folder "$ROOT/$prev/gradual_prune"); fi

  # Phase A with growing: exit 2 means "goal missed below the maximum width".
  while true; do
    write_file "$dir/width" "$width"
    run_stage "$dir/scratch" --mode finetune --dataset "$task" "${load[@]}" \
      --epochs "$FINETUNE_EPOCHS" --lr "$LR" --lr_mask "$LR_MASK" \
      --network_width_multiplier "$width" --pruning_ratio_to_acc_record_file "$dir/gradual_prune/record.txt" \
      --log_path "$log" "${common[@]}"
    case $stage_status in
      0|5) break ;;
      2) width=$(awk -v w="$width" -v s="$WIDTH_STEP" 'BEGIN { print w + s }')
         echo "=== $task: goal missed, growing the network to width multiplier $width" ;;
      *) fail "Phase A of $task" "$stage_status" "$log" ;;
    esac
  done
  phase_a=$stage_status

  # Compacting: gradual pruning stages; exit 6 stops the loop (train-accuracy gate or must-prune).
  if [ "$phase_a" -ne 5 ]; then
    from=0.0
    stage_load=$dir/scratch
    for ratio in "${PRUNING_RATIOS[@]}"; do
      run_stage "$dir/gradual_prune/$ratio" --mode prune --dataset "$task" --load_folder "$stage_load" \
        --initial_sparsity "$from" --target_sparsity "$ratio" --epochs "$PRUNE_EPOCHS" --lr "$PRUNE_LR" \
        --lr_mask 0 --pruning_interval "$PRUNING_INTERVAL" --pruning_frequency "$PRUNING_FREQUENCY" \
        --pruning_ratio_to_acc_record_file "$dir/gradual_prune/record.txt" --log_path "$log" \
        "${common[@]}"
      case $stage_status in
        0) ;;
        6) break ;;
        *) fail "pruning stage $ratio of $task" "$stage_status" "$log" ;;
      esac
      from=$ratio
      stage_load=$dir/gradual_prune/$ratio
    done
  fi

  # The choice copies the chosen stage's checkpoint to gradual_prune/ (what the next task loads);
  # stage checkpoints stay until the task is DONE, so that every step above can be replayed.
  python tools/choose_appropriate_pruning_ratio_for_next_task.py --task_folder "$dir" --dataset "$task" \
    --baseline_acc_file "$GOALS_FILE" --allow_acc_loss "$ALLOW_ACC_LOSS" \
    --max_allowed_network_width_multiplier "$MAX_WIDTH" --log_path "$log" || fail "ratio choice of $task" "$?" "$log"

  # Picking again: re-learn the pick mask with the surviving weights; keep it only if it helps.
  # It starts from the chosen stage's own checkpoint, which never changes (gradual_prune/ may
  # already hold the retrained model when a rerun gets here).
  if [ -n "$prev" ] && [ "$phase_a" -ne 5 ]; then
    chosen=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["source"])' "$dir/gradual_prune/chosen.json")
    run_stage "$dir/retrain" --mode finetune --finetune_again --dataset "$task" --load_folder "$chosen" \
      --epochs "$RETRAIN_EPOCHS" --lr "$RETRAIN_LR" --lr_mask "$RETRAIN_LR_MASK" \
      --log_path "$log" "${common[@]}"
    [ "$stage_status" -eq 0 ] || fail "retrain of $task" "$stage_status" "$log"
    python tools/choose_retrain_or_not.py --task_folder "$dir" --log_path "$log" || fail "retrain choice of $task" "$?" "$log"
  fi
  touch "$dir/DONE"
  drop_stage_copies "$dir"
  prev=$task
done
echo "all ${#TASK_LIST[@]} tasks learned; final model: $ROOT/$prev/gradual_prune/checkpoint.pth.tar"
