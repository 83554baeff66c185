# Shared settings of the experiment-1 scripts (sourced, not run). Every knob is an environment
# variable whose default is the paper's value (spec §7); the demo just sets smaller ones.
DATA_ROOT=${DATA_ROOT:-data/cifar100_org}
# The 20 CIFAR-100 super-classes in the paper's (alphabetical) order; TASKS overrides, space-separated.
DEFAULT_TASKS="aquatic_mammals fish flowers food_containers fruit_and_vegetables
 household_electrical_devices household_furniture insects large_carnivores
 large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores
 medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2"
read -r -a TASK_LIST <<< "$(echo ${TASKS:-$DEFAULT_TASKS})"
NUM_CLASSES=${NUM_CLASSES:-5}
DEVICE=${DEVICE:-auto}
BATCH_SIZE=${BATCH_SIZE:-32}
VAL_BATCH_SIZE=${VAL_BATCH_SIZE:-100}
BASELINE_EPOCHS=${BASELINE_EPOCHS:-100}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-100}
PRUNE_EPOCHS=${PRUNE_EPOCHS:-20}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-30}
BASE_WIDTH=${BASE_WIDTH:-1.0}
CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints}
GOALS_FILE=${GOALS_FILE:-logs/baseline_cifar100_acc.txt}
ARCH=${ARCH:-custom_vgg_cifar100}
SEED=${SEED:-1}
WORKERS=${WORKERS:-}
NPROC=${NPROC:-1}
RESUME_EVERY_MINUTES=${RESUME_EVERY_MINUTES:-10}   # resume-state writes: at most this often, and after a stage
# Learning-rate milestones scale with the epoch budget: 50%/80% (weights), 50%/70% (pick masks).
LR_DECAY_EPOCHS="$((FINETUNE_EPOCHS * 50 / 100)) $((FINETUNE_EPOCHS * 80 / 100))"
MASK_LR_DECAY_EPOCHS="$((FINETUNE_EPOCHS * 50 / 100)) $((FINETUNE_EPOCHS * 70 / 100))"

# python with the common flags; NPROC > 1 launches torchrun (DistributedDataParallel).
cpg() {
  local launcher=(python)
  if [ "$NPROC" -gt 1 ]; then launcher=(torchrun --standalone --nproc_per_node="$NPROC"); fi
  local workers=()
  if [ -n "$WORKERS" ]; then workers=(--workers "$WORKERS"); fi
  "${launcher[@]}" CPG_cifar100_main.py --arch "$ARCH" --data_root "$DATA_ROOT" \
    --num_classes "$NUM_CLASSES" --device "$DEVICE" --batch_size "$BATCH_SIZE" \
    --val_batch_size "$VAL_BATCH_SIZE" --base_width "$BASE_WIDTH" --seed "$SEED" \
    --resume_every_minutes "$RESUME_EVERY_MINUTES" "${workers[@]}" "$@"
}

# run_stage SAVE_FOLDER ARGS...: one stage of CPG_cifar100_main.py; sets $stage_status.
# The status is read from SAVE_FOLDER/exit_status, which the stage writes (rank 0) before it
# exits: torchrun turns every non-zero child status into 1, so its exit code cannot tell "widen"
# (2) or "stop pruning" (6) from an error. No file means a crash: the launcher's code stands.
# A file saying 0 under a failing launcher means another rank failed: the launcher's code stands.
run_stage() {
  local save=$1; shift
  rm -f "$save/exit_status"
  local rc=0
  cpg --save_folder "$save" "$@" || rc=$?
  stage_status=$rc
  if [ -f "$save/exit_status" ]; then
    local written
    written=$(cat "$save/exit_status")
    if [ "$written" != 0 ] || [ "$rc" = 0 ]; then stage_status=$written; fi
  elif [ "$rc" = 0 ]; then
    stage_status=1   # exited 0 without saying so: treat as a crash
  fi
}

# preflight [--goals_file FILE]: check every task's folders, class count (and goal) before training.
preflight() {
  python tools/preflight.py --data_root "$DATA_ROOT" --num_classes "$NUM_CLASSES" --tasks "${TASK_LIST[@]}" "$@"
}

# Atomically write a small text file (a kill -9 leaves the old content or the new one).
write_file() { printf '%s\n' "$2" > "$1.tmp" && mv -f "$1.tmp" "$1"; }
