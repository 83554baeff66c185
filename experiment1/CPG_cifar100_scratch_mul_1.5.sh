#!/usr/bin/env bash
# CPG, experiment 1: the 20 CIFAR-100 super-class tasks learned one after another in ONE VGG16-BN.
# Per task, in one process (utils/sequence.py): Phase A (pick + train; grow by +0.5 and retry
# while the goal is missed, up to 1.5), gradual pruning 0.1 ... 0.9, 0.95 (compact), automatic
# ratio choice, then for tasks >= 2 the retrain of pick mask and weights, kept only if it
# improves. Needs GOALS_FILE (baseline_cifar100.sh).
# Usage: bash experiment1/CPG_cifar100_scratch_mul_1.5.sh
#   Rerun after an interruption (even kill -9): finished tasks are skipped, finished stages replay
#   their status, the running stage resumes from its last resume state (written every
#   RESUME_EVERY_MINUTES). Env vars (see experiment1/common.sh) override every knob.
# A task's process exits 0 (learned), 1 (error, one line) or 3 (goal file missing); each stage's
# own status is in its result.json (docs/files.md "Exit codes").
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
ALLOW_ACC_LOSS=${ALLOW_ACC_LOSS:-0.0}        # automatic picks: tolerated accuracy below the goal (GOAL_MARGIN is 0 here)
TRAIN_ACC_GATE=${TRAIN_ACC_GATE:-0.95}       # a stage counts if train acc > it; relative:D (docs/own-tasks.md)
ORIGINAL_RULES=${ORIGINAL_RULES:-0}          # 1: the original's rules (docs/differences.md)
TOTAL_NUM_TASKS=${TOTAL_NUM_TASKS:-${#TASK_LIST[@]}}
SETTING=${SETTING:-scratch_mul_1.5}
METHOD=${METHOD:-CPG}                # PAE (experiment1/PAE_cifar100.sh): LEARN_PICK=0 RETRAIN=0
LEARN_PICK=${LEARN_PICK:-1}          # 0: every earlier weight is used, no pick mask is learned
RETRAIN=${RETRAIN:-1}                # 0: no retrain phase
ROOT=$CHECKPOINT_ROOT/$METHOD/experiment1/$SETTING/$ARCH
SCRIPT=experiment1/CPG_cifar100_scratch_mul_1.5.sh
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
if [ "$ORIGINAL_RULES" = 1 ]; then common+=(--original_rules); fi

# task_flags N TASK: task N's flags (the hook of run_sequence, tools/stages.sh). One process runs
# Phase A (grown by WIDTH_STEP and retried while the goal is missed), the pruning stages, the
# automatic ratio choice and, for tasks >= 2 that pick, the retrain (utils/sequence.py).
task_flags() {
  task_args=("${common[@]}" --epochs "$FINETUNE_EPOCHS" --lr "$LR" --lr_mask "$LR_MASK"
             --network_width_multiplier "$START_WIDTH" --width_step "$WIDTH_STEP"
             --pruning_ratios "${PRUNING_RATIOS[@]}" --prune_epochs "$PRUNE_EPOCHS" --prune_lr "$PRUNE_LR"
             --pruning_interval "$PRUNING_INTERVAL" --pruning_frequency "$PRUNING_FREQUENCY"
             --allow_acc_loss "$ALLOW_ACC_LOSS")
  if [ "$RETRAIN" != 0 ]; then
    task_args+=(--retrain_epochs "$RETRAIN_EPOCHS" --retrain_lr "$RETRAIN_LR" --retrain_lr_mask "$RETRAIN_LR_MASK")
  fi
}
run_sequence all
