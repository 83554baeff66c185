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
WIDTH_STEP=${WIDTH_STEP:-0.5}
MAX_WIDTH=${MAX_WIDTH:-1.5}
read -r -a PRUNING_RATIOS <<< "${PRUNING_RATIOS:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 0.95}"
PRUNING_INTERVAL=${PRUNING_INTERVAL:-4}     # epochs over which a stage ramps its sparsity
PRUNING_FREQUENCY=${PRUNING_FREQUENCY:-10}  # batches between mask updates
ALLOW_ACC_LOSS=${ALLOW_ACC_LOSS:-0.0}
TRAIN_ACC_GATE=${TRAIN_ACC_GATE:-0.95}
TOTAL_NUM_TASKS=${TOTAL_NUM_TASKS:-${#TASK_LIST[@]}}
SETTING=${SETTING:-scratch_mul_1.5}
METHOD=${METHOD:-CPG}                # PAE (experiment1/PAE_cifar100.sh): LEARN_PICK=0 RETRAIN=0
LEARN_PICK=${LEARN_PICK:-1}          # 0: every earlier weight is used, no pick mask is learned
RETRAIN=${RETRAIN:-1}                # 0: no retrain phase
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment1/$SETTING/$ARCH
mkdir -p logs "$ROOT"
lock_run "$ROOT"   # one run per checkpoint root

if [ ! -f "$GOALS_FILE" ]; then
  echo "accuracy goal file $GOALS_FILE not found: run experiment1/baseline_cifar100.sh first" >&2
  exit 3
fi
preflight --goals_file "$GOALS_FILE" --fractions ALLOW_ACC_LOSS="$ALLOW_ACC_LOSS"   # data, goals, knobs: before hours of training
common=(--baseline_acc_file "$GOALS_FILE" --weight_decay "$WEIGHT_DECAY"
        --max_allowed_network_width_multiplier "$MAX_WIDTH" --total_num_tasks "$TOTAL_NUM_TASKS"
        --train_acc_gate "$TRAIN_ACC_GATE" --lr_decay_epochs $LR_DECAY_EPOCHS
        --mask_lr_decay_epochs $MASK_LR_DECAY_EPOCHS)
if [ "$LEARN_PICK" = 0 ]; then common+=(--no-learn_pick); fi

width=$START_WIDTH   # raw multiplier; only grows. The checkpoint's width wins if it is larger.
prev=""
for task in "${TASK_LIST[@]}"; do
  dir=$ROOT/$task
  log=$dir/train.log
  width=$(max "$width" "$(stored_width "$dir")")
  if [ -f "$dir/DONE" ]; then
    echo "=== $task: already learned, skipping"; drop_stage_copies "$dir"; prev=$task; continue
  fi
  echo "=== $task (width multiplier $width)"
  mkdir -p "$dir"
  load=()
  if [ -n "$prev" ]; then load=(--load_folder "$ROOT/$prev/gradual_prune"); fi

  # Phase A with growing (exit 2: goal missed below MAX_WIDTH), then the pruning stages (compact).
  phase_a_with_growth "$dir" "$task" "${load[@]}" --epochs "$FINETUNE_EPOCHS" --lr "$LR" \
    --lr_mask "$LR_MASK" "${common[@]}"
  if [ "$phase_a" -ne 5 ]; then
    pruning_stages "$dir" "$task" --epochs "$PRUNE_EPOCHS" --lr "$PRUNE_LR" \
      --pruning_frequency "$PRUNING_FREQUENCY" "${common[@]}"
  fi

  # The choice copies the chosen stage's checkpoint to gradual_prune/ (what the next task loads);
  # stage checkpoints stay until the task is DONE, so that every step above can be replayed.
  run_child python tools/choose_appropriate_pruning_ratio_for_next_task.py --task_folder "$dir" --dataset "$task" \
    --baseline_acc_file "$GOALS_FILE" --allow_acc_loss "$ALLOW_ACC_LOSS" \
    --max_allowed_network_width_multiplier "$MAX_WIDTH" --log_path "$log" || fail "ratio choice of $task" "$?" "$log"

  # Picking again: re-learn the pick mask with the surviving weights; keep it only if it helps.
  if [ -n "$prev" ] && [ "$phase_a" -ne 5 ] && [ "$RETRAIN" != 0 ] && [ "$LEARN_PICK" != 0 ]; then
    retrain_stage "$dir" "$task" --epochs "$RETRAIN_EPOCHS" --lr "$RETRAIN_LR" \
      --lr_mask "$RETRAIN_LR_MASK" "${common[@]}"
  fi
  touch "$dir/DONE"
  drop_stage_copies "$dir"
  prev=$task
done
echo "all ${#TASK_LIST[@]} tasks learned; final model: $ROOT/$prev/gradual_prune/checkpoint.pth.tar"
