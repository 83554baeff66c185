# Bash functions shared by every experiment's scripts (sourced, not run). An experiment's
# common.sh sets its knobs and MAIN (its entry script), plus optional arrays DATA_FLAGS (extra
# flags of every stage) and PREFLIGHT_FLAGS, then sources this file. The experiment scripts hold
# only their settings and the order of the phases; how a phase runs, grows and resumes is here.

# ----- one run per checkpoint root, and signals that reach the running stage --------------------
# run_child CMD...: CMD as a child of this script whose INT/TERM reach it. Bash runs a trap only
# after a FOREGROUND child ends, so Ctrl-C (or `kill <script pid>`) would leave the stage running
# as an orphan; a background child + `wait` lets the trap forward the signal at once. The child
# (a background job: it ignores SIGINT) gets SIGTERM, which ends it where it stands: every file
# it wrote is whole (atomic writes), and its resume state is the last one written.
_child=""
_running="the run"
run_child() {
  "$@" &
  _child=$!
  local rc=0
  wait "$_child" || rc=$?
  _child=""
  return "$rc"
}
_on_signal() {
  trap - INT TERM
  if [ -n "$_child" ]; then
    local ranks=""
    if [ "${NPROC:-1}" -gt 1 ]; then ranks=$(cat /proc/"$_child"/task/*/children 2> /dev/null || true); fi
    if [ -n "$ranks" ]; then
      # torchrun answers a signal with a traceback of its own: end torchrun, then its ranks
      kill -KILL "$_child" 2> /dev/null || true
      kill -TERM $ranks 2> /dev/null || true
    else
      kill -TERM "$_child" 2> /dev/null || true
    fi
    wait "$_child" 2> /dev/null || true
  fi
  echo "interrupted ($1) during $_running: what finished is kept; rerun the same command (bash $0, same settings) to resume" >&2
  kill -s "$1" "$$"   # end as killed by the signal, so that a calling script stops too
}
trap '_on_signal INT' INT
trap '_on_signal TERM' TERM

# lock_holders FILE: " <pid>..." of the processes that have FILE open (the lock's holders), this
# script excepted. Helper processes of the search itself are gone when the pids are checked.
lock_holders() {
  local pid found
  found=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "$(readlink -f "$1")" 2> /dev/null | cut -d/ -f3 | sort -un)
  for pid in $found; do
    if [ "$pid" != $$ ] && kill -0 "$pid" 2> /dev/null; then printf ' %s' "$pid"; fi
  done
}

# lock_run DIR [shared]: this run holds DIR (its method's checkpoint root) until it ends; a second
# run on DIR stops with one line naming the holder. flock(1) locks an open file: the kernel
# releases it when the last holder ends, even by kill -9, so a lock is never stale. The stages
# inherit the descriptor: an orphaned stage keeps the folder locked while it still writes.
# `shared`: runs that write only below DIR in folders of their own (experiment 3's age folds)
# may hold DIR together; an exclusive holder excludes them all.
lock_run() {
  local dir=$1 mode=${2:-exclusive} fd holders pid
  mkdir -p "$dir"
  exec {fd}>> "$dir/.lock"
  if ! flock -n "$([ "$mode" = shared ] && echo -s || echo -x)" "$fd"; then
    holders=""
    while read -r pid; do   # the scripts that took the lock, if they still run
      if [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null; then holders="$holders $pid"; fi
    done < "$dir/.lock"
    if [ -z "$holders" ]; then holders=$(lock_holders "$dir/.lock"); fi   # e.g. an orphaned stage
    echo "error: another run is using $dir (process${holders:- unknown}); wait for it to end, stop it, or give this run its own CHECKPOINT_ROOT" >&2
    exit 1
  fi
  if [ "$mode" = shared ]; then echo "$$" >> "$dir/.lock"; else echo "$$" > "$dir/.lock"; fi
}

# cpg ARGS...: the entry script with the common flags; NPROC > 1 launches torchrun (DDP).
cpg() {
  local launcher=(python)
  if [ "$NPROC" -gt 1 ]; then
    # torchrun answers Ctrl-C with warnings and a traceback of its own: it runs in a session of its
    # own, which the terminal's SIGINT does not reach (the trap below stops it), and it ends with
    # this script (--pdeathsig), even when the script is killed with -9. Its start-up warnings
    # (the OMP_NUM_THREADS notice) show at VERBOSE=1.
    launcher=(env LOGLEVEL="${LOGLEVEL:-$([ "${VERBOSE:-0}" = 1 ] && echo WARNING || echo ERROR)}"
              torchrun --standalone --nproc_per_node="$NPROC")
    if command -v setsid > /dev/null && command -v setpriv > /dev/null; then
      launcher=(setsid setpriv --pdeathsig TERM "${launcher[@]}")
    fi
  fi
  local optional=()   # empty knobs keep the entry script's default (experiment 3: batch per task)
  if [ -n "${WORKERS:-}" ]; then optional+=(--workers "$WORKERS"); fi
  if [ -n "${BATCH_SIZE:-}" ]; then optional+=(--batch_size "$BATCH_SIZE"); fi
  run_child "${launcher[@]}" "$MAIN" --arch "$ARCH" --data_root "$DATA_ROOT" --device "$DEVICE" \
    --val_batch_size "$VAL_BATCH_SIZE" --base_width "$BASE_WIDTH" \
    --seed "$SEED" --val_fraction "$VAL_FRACTION" --resume_every_minutes "$RESUME_EVERY_MINUTES" \
    ${optional[@]+"${optional[@]}"} ${DATA_FLAGS[@]+"${DATA_FLAGS[@]}"} "$@"
}

# run_stage SAVE_FOLDER ARGS...: one stage of $MAIN; sets $stage_status.
# The status is read from SAVE_FOLDER/exit_status, which the stage writes (rank 0) before it
# exits: torchrun turns every non-zero child status into 1, so its exit code cannot tell "widen"
# (2) or "stop pruning" (6) from an error. No file means a crash: the launcher's code stands.
# A file saying 0 under a failing launcher means another rank failed: the launcher's code stands.
run_stage() {
  local save=$1; shift
  rm -f "$save/exit_status"
  local rc=0
  _running=$save
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

# preflight [ARGS...]: every task's folders and classes (and goals) before hours of training:
# those of TASK_LIST, or of PREFLIGHT_TASKS when set (experiment 3: every age fold too).
# With VAL_FRACTION > 0 the test split is not needed until inference.
preflight() {
  local splits=() tasks=("${TASK_LIST[@]}")
  if [ -n "${PREFLIGHT_TASKS+x}" ]; then tasks=("${PREFLIGHT_TASKS[@]}"); fi
  if awk -v f="$VAL_FRACTION" 'BEGIN { exit !(f > 0) }'; then splits=(--splits train); fi
  run_child python tools/preflight.py --data_root "$DATA_ROOT" --tasks "${tasks[@]}" "${splits[@]}" \
    ${PREFLIGHT_FLAGS[@]+"${PREFLIGHT_FLAGS[@]}"} "$@"
}

# Atomically write a small text file (a kill -9 leaves the old content or the new one).
write_file() { local tmp="$1.$$-$RANDOM.tmp"; printf '%s\n' "$2" > "$tmp" && mv -f "$tmp" "$1"; }
fail() { echo "stopping: $1 exited with status $2 (see $3)" >&2; exit "$2"; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b) ? a : b }'; }

# milestones EPOCHS SHARE...: LR milestones at these shares of an epoch budget (a percentage, or
# N/D), never at epoch 0 (a milestone at 0 would decay the LR before the first step):
# max(1, EPOCHS * SHARE). A budget of 1 epoch puts them at 1, past its end: it trains at full LR.
milestones() {
  local epochs=$1 share num den at out=()
  shift
  for share in "$@"; do
    num=${share%%/*}; den=100
    if [ "$share" != "$num" ]; then den=${share#*/}; fi
    at=$(( epochs * num / den ))
    out+=("$(( at > 0 ? at : 1 ))")
  done
  echo "${out[*]}"
}

# per_task VAR TASK DEFAULT: the value of ${VAR}_<task> (non-alphanumerics as _) if set, else DEFAULT.
per_task() {
  local name="${1}_${2//[^A-Za-z0-9_]/_}"
  printf '%s\n' "${!name:-$3}"
}

# stored_width TASK_DIR: the width a task trained at (<task>/width), or START_WIDTH.
stored_width() {
  if [ -f "$1/width" ]; then max "$START_WIDTH" "$(cat "$1/width")"; else echo "$START_WIDTH"; fi
}

# phase_a_with_growth TASK_DIR TASK ARGS...: Phase A, widened by WIDTH_STEP and retried while it
# exits 2 (goal missed below MAX_WIDTH). Uses and updates $width (the raw multiplier, only grows);
# <task>/width holds the width of the current attempt, so that a rerun continues there instead
# of retraining the smaller widths that already missed. Sets $phase_a (0, or 5: owns nothing).
phase_a_with_growth() {
  local dir=$1 task=$2; shift 2
  width=$(max "$width" "$(stored_width "$dir")")
  while true; do
    write_file "$dir/width" "$width"
    run_stage "$dir/scratch" --mode finetune --dataset "$task" --network_width_multiplier "$width" \
      --pruning_ratio_to_acc_record_file "$dir/gradual_prune/record.txt" --log_path "$dir/train.log" "$@"
    case $stage_status in
      0|5) break ;;
      2) width=$(awk -v w="$width" -v s="$WIDTH_STEP" 'BEGIN { print w + s }')
         echo "=== $task: goal missed, growing the network to width multiplier $width" ;;
      *) fail "Phase A of $task" "$stage_status" "$dir/train.log" ;;
    esac
  done
  phase_a=$stage_status
}

# pruning_stages TASK_DIR TASK ARGS...: the gradual-pruning stages 0 -> PRUNING_RATIOS[0] -> ...,
# each loading the previous one; exit 6 stops the loop (train-accuracy gate or must-prune).
pruning_stages() {
  local dir=$1 task=$2; shift 2
  local from=0.0 load=$dir/scratch ratio
  for ratio in "${PRUNING_RATIOS[@]}"; do
    run_stage "$dir/gradual_prune/$ratio" --mode prune --dataset "$task" --load_folder "$load" \
      --initial_sparsity "$from" --target_sparsity "$ratio" --lr_mask 0 \
      --pruning_interval "$PRUNING_INTERVAL" \
      --pruning_ratio_to_acc_record_file "$dir/gradual_prune/record.txt" --log_path "$dir/train.log" "$@"
    case $stage_status in
      0) ;;
      6) break ;;
      *) fail "pruning stage $ratio of $task" "$stage_status" "$dir/train.log" ;;
    esac
    from=$ratio
    load=$dir/gradual_prune/$ratio
  done
}

# retrain_stage TASK_DIR TASK ARGS...: re-learn the pick mask of the chosen model; kept only if
# it improves. It starts from the chosen stage's own checkpoint, which never changes
# (gradual_prune/ may already hold the retrained model when a rerun gets here).
retrain_stage() {
  local dir=$1 task=$2; shift 2
  local chosen
  chosen=$dir/$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["source"])' "$dir/gradual_prune/chosen.json")
  run_stage "$dir/retrain" --mode finetune --finetune_again --dataset "$task" --load_folder "$chosen" \
    --log_path "$dir/train.log" "$@"
  [ "$stage_status" -eq 0 ] || fail "retrain of $task" "$stage_status" "$dir/train.log"
  run_child python tools/choose_retrain_or_not.py --task_folder "$dir" --log_path "$dir/train.log" \
    || fail "retrain choice of $task" "$?" "$dir/train.log"
}

# Once a task is DONE its stage copies go (gradual_prune/checkpoint.pth.tar holds the chosen model);
# their result.json files stay. Never earlier: every step of an unfinished task must stay replayable.
drop_stage_copies() {
  rm -f "$1"/gradual_prune/*/checkpoint.pth.tar "$1"/gradual_prune/*/checkpoint.pth.tar.json \
    "$1/retrain/checkpoint.pth.tar" "$1/retrain/checkpoint.pth.tar.json"
}

# baseline_stage FOLDER TASK GOAL_FILE ARGS...: train TASK on its own network (or from another
# task's model, ARGS --initial_from) and write its accuracy into GOAL_FILE; stops on failure.
baseline_stage() {
  local folder=$1 task=$2 goals=$3; shift 3
  run_stage "$folder" --mode finetune --dataset "$task" --save_goal_file "$goals" \
    --log_path "$folder/train.log" "$@"
  [ "$stage_status" -eq 0 ] || fail "baseline of $task" "$stage_status" "$folder/train.log"
}

# ----- the one-task-per-run workflow of experiments 2 and 3 (spec §8.1, §9.1) -------------------
# The experiment script sets ROOT, TASK_LIST, GOALS_FILE, MAX_WIDTH, ALLOW_ACC_LOSS, START_WIDTH
# and SCRIPT (how a user runs it, for the messages), defines the hook
#   task_flags N TASK   sets the arrays phase_a_flags and prune_flags of task N (its settings)
# and may redefine next_step N (what to run once task N is learned and picked). Task N loads the
# ratio picked for task N-1 of TASK_LIST; experiment 3's age folds are lists that share a prefix.

# check_target TARGET: TARGET_TASK_ID is 1..len(TASK_LIST) or all; else one line and exit 1.
check_target() {
  local num_tasks=${#TASK_LIST[@]}
  if [ "$1" != all ] && ! { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$num_tasks" ]; }; then
    echo "TARGET_TASK_ID=$1: use 1..$num_tasks (tasks: ${TASK_LIST[*]}) or all" >&2
    exit 1
  fi
}

pick_command() { echo "python tools/pick_pruning_ratio.py --task_folder $1 --baseline_acc_file $GOALS_FILE --ratio <ratio>"; }

next_step() {
  if [ "$1" -lt "${#TASK_LIST[@]}" ]; then echo "then: TARGET_TASK_ID=$(($1 + 1)) bash $SCRIPT"; fi
}

# learn_task N: Phase A with growth and the pruning stages of task N (its pick is separate).
learn_task() {
  local n=$1 task=${TASK_LIST[$1-1]} num_tasks=${#TASK_LIST[@]} i
  local dir=$ROOT/$task load=()
  width=$START_WIDTH   # the widest earlier task's width (the checkpoint's wins if it is larger)
  for ((i = 1; i < n; i++)); do width=$(max "$width" "$(stored_width "$ROOT/${TASK_LIST[$i-1]}")"); done
  if [ "$n" -gt 1 ]; then
    local prev=$ROOT/${TASK_LIST[$n-2]}
    if [ ! -f "$prev/gradual_prune/chosen.json" ]; then
      echo "task $((n - 1)) (${TASK_LIST[$n-2]}) has no picked pruning ratio yet; pick one first:" >&2
      echo "  python tools/pick_pruning_ratio.py --task_folder $prev --baseline_acc_file $GOALS_FILE   (prints the table)" >&2
      echo "  $(pick_command "$prev")" >&2
      exit 1
    fi
    load=(--load_folder "$prev/gradual_prune")
  fi
  mkdir -p "$dir"
  task_flags "$n" "$task"
  echo "=== task $n/$num_tasks: $task (width multiplier $width)"
  phase_a_with_growth "$dir" "$task" ${load[@]+"${load[@]}"} "${phase_a_flags[@]}"
  if [ "$phase_a" -ne 5 ]; then
    pruning_stages "$dir" "$task" "${prune_flags[@]}"
  fi
}

# run_sequence TARGET: TARGET=N learns task N, prints its record table with the goal and the
# rule's suggestion, and stops for the user's pick; TARGET=all learns every task not DONE yet,
# each picked automatically unless it was picked by hand already. Reruns resume.
run_sequence() {
  local target=$1 num_tasks=${#TASK_LIST[@]} n task dir
  if [ "$target" = all ]; then
    for ((n = 1; n <= num_tasks; n++)); do
      task=${TASK_LIST[$n-1]}
      dir=$ROOT/$task
      if [ -f "$dir/DONE" ]; then echo "=== $task: already learned, skipping"; drop_stage_copies "$dir"; continue; fi
      learn_task "$n"
      if [ -f "$dir/gradual_prune/chosen.json" ]; then
        echo "=== $task: keeping the pruning ratio picked before"
      else
        run_child python tools/pick_pruning_ratio.py --task_folder "$dir" --dataset "$task" --baseline_acc_file "$GOALS_FILE" \
          --auto --allow_acc_loss "$ALLOW_ACC_LOSS" --max_allowed_network_width_multiplier "$MAX_WIDTH" \
          --log_path "$dir/train.log" || fail "ratio choice of $task" "$?" "$dir/train.log"
      fi
      touch "$dir/DONE"
      drop_stage_copies "$dir"
    done
    echo "all $num_tasks tasks learned; final model: $ROOT/${TASK_LIST[$num_tasks-1]}/gradual_prune/checkpoint.pth.tar"
    return 0
  fi
  task=${TASK_LIST[$target-1]}
  dir=$ROOT/$task
  if [ -f "$dir/DONE" ]; then
    # learned and picked by an `all` run, whose stage copies are gone: nothing to redo
    echo "=== task $target ($task) is already learned (DONE); its record:"
    run_child python tools/pick_pruning_ratio.py --task_folder "$dir" --dataset "$task" --baseline_acc_file "$GOALS_FILE"
    return 0
  fi
  learn_task "$target"
  run_child python tools/pick_pruning_ratio.py --task_folder "$dir" --dataset "$task" --baseline_acc_file "$GOALS_FILE" \
    --allow_acc_loss "$ALLOW_ACC_LOSS" --max_allowed_network_width_multiplier "$MAX_WIDTH"
  echo "=== task $target ($task) learned. Pick its pruning ratio from the table above:"
  echo "  $(pick_command "$dir")"
  next_step "$target"
}

# ----- the compared methods (README "Compared methods"): the same stages, other configurations --
# The method script sets ROOT, TASK_LIST, METHOD and RESULTS_FILE. No goal file (every result is
# accepted), no growth (the width stays START_WIDTH), no must-prune rule.
no_goal_no_growth=(--baseline_acc_file "" --network_width_multiplier "${START_WIDTH:-1.0}"
                   --max_allowed_network_width_multiplier "${START_WIDTH:-1.0}" --total_num_tasks 0)

# method_inference LOAD_FOLDER: every task of TASK_LIST from the final model -> RESULTS_FILE.
method_inference() {
  mkdir -p logs
  NPROC=1 cpg --mode inference --load_folder "$1" --tasks "${TASK_LIST[@]}" --method "$METHOD" \
    --results_file "$RESULTS_FILE" --log_path "$(dirname "$RESULTS_FILE")/${METHOD}_inference.log"
}

# chain_tasks FLAGS...: every task in turn from the previous task's model, Phase A only: no
# pruning, no growth (Piggyback, ProgressiveNet; PackNet adds its pruning stage through the hooks).
# Hooks: chain_flags N TASK sets the array task_extra (task N's own flags, e.g. the first task's
# pretrained weights; they win); chain_after TASK DIR runs after Phase A; chain_output TASK DIR
# prints the folder the next task loads (default DIR/scratch).
chain_after() { :; }
chain_output() { echo "$2/scratch"; }
chain_tasks() {
  local prev_out="" task dir load n=0
  for task in "${TASK_LIST[@]}"; do
    n=$((n + 1))
    dir=$ROOT/$task
    if [ -f "$dir/DONE" ]; then
      echo "=== $METHOD: $task already learned, skipping"; prev_out=$(chain_output "$task" "$dir"); continue
    fi
    mkdir -p "$dir"
    load=()
    if [ -n "$prev_out" ]; then load=(--load_folder "$prev_out"); fi
    task_extra=()
    if declare -F chain_flags > /dev/null; then chain_flags "$n" "$task"; fi
    echo "=== $METHOD: task $n/${#TASK_LIST[@]} $task"
    run_stage "$dir/scratch" --mode finetune --dataset "$task" ${load[@]+"${load[@]}"} "${no_goal_no_growth[@]}" \
      "$@" ${task_extra[@]+"${task_extra[@]}"} --log_path "$dir/train.log"
    case $stage_status in
      0|5) ;;   # 5: the task owns no weight (Piggyback's later tasks: they only pick)
      *) fail "$METHOD training of $task" "$stage_status" "$dir/train.log" ;;
    esac
    chain_after "$task" "$dir"
    touch "$dir/DONE"
    prev_out=$(chain_output "$task" "$dir")
  done
  method_inference "$prev_out"
}

# packnet_chain FLAGS...: PackNet (Mallya & Lazebnik 2018) as chain_tasks with a pruning stage:
# each task's Phase A trains on the free weights with every earlier weight used and frozen (no
# pick, no growth); then the task's PRUNE_RATIO (or PRUNE_RATIO_<task>; "none": not pruned) of
# its weights is released at once (--pruning_interval 0) before a retrain of
# PACKNET_RETRAIN_EPOCHS at PACKNET_RETRAIN_LR (x0.1 after the epochs in PACKNET_RETRAIN_DECAY),
# kept only above train accuracy PACKNET_GATE. The next task loads the pruned model.
packnet_ratio() { per_task PRUNE_RATIO "$1" "$PRUNE_RATIO"; }
packnet_chain() {
  chain_output() { if [ "$(packnet_ratio "$1")" = none ]; then echo "$2/scratch"; else echo "$2/one_shot_prune"; fi; }
  chain_after() {
    local task=$1 dir=$2 ratio
    ratio=$(packnet_ratio "$task")
    if [ "$ratio" = none ]; then return 0; fi
    run_stage "$dir/one_shot_prune" --mode prune --dataset "$task" --load_folder "$dir/scratch" --no-learn_pick \
      --initial_sparsity 0.0 --target_sparsity "$ratio" --pruning_interval 0 \
      --epochs "$PACKNET_RETRAIN_EPOCHS" --lr "$PACKNET_RETRAIN_LR" --prune_lr_decay_epochs $PACKNET_RETRAIN_DECAY \
      --selection last --train_acc_gate "$PACKNET_GATE" "${no_goal_no_growth[@]}" --log_path "$dir/train.log"
    case $stage_status in
      0) ;;
      6) echo "stopping: $METHOD's retrain of $task after pruning $ratio ended at train accuracy <= $PACKNET_GATE (pruning too much); lower PRUNE_RATIO or raise PACKNET_RETRAIN_EPOCHS (see $dir/train.log)" >&2
         exit 6 ;;
      *) fail "$METHOD pruning of $task" "$stage_status" "$dir/train.log" ;;
    esac
  }
  chain_tasks --no-learn_pick "$@"
}
