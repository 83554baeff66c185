# Bash functions shared by every experiment's scripts (sourced, not run). An experiment's
# common.sh sets its knobs and MAIN (its entry script), plus optional arrays DATA_FLAGS (extra
# flags of every process) and PREFLIGHT_FLAGS, then sources this file. A script holds its
# settings and a hook task_flags; the loop over the tasks is here, and each task runs in ONE
# process (--mode task, utils/sequence.py: Phase A with growth, pruning stages, pick, retrain).

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

# lock_run DIR [shared|exclusive [NAME]]: this run holds DIR (its method's checkpoint root) through
# DIR/NAME (default .lock) until it ends; a second
# run on DIR stops with one line naming the holder. flock(1) locks an open file: the kernel
# releases it when the last holder ends, even by kill -9, so a lock is never stale. The stages
# inherit the descriptor: an orphaned stage keeps the folder locked while it still writes.
# `shared`: runs that write only below DIR in folders of their own (experiment 3's age folds)
# may hold DIR together; an exclusive holder excludes them all.
lock_run() {
  local dir=$1 mode=${2:-exclusive} fd holders pid lock=$1/${3:-.lock}
  if [ "${NODE_RANK:-0}" != 0 ]; then return 0; fi   # a run across machines: node 0 holds the root
  mkdir -p "$dir"
  exec {fd}>> "$lock"
  local how; how=$([ "$mode" = shared ] && echo -s || echo -x)
  if ! flock -n "$how" "$fd"; then
    holders=""
    while read -r pid; do   # the scripts that took the lock, if they still run
      if [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null; then holders="$holders $pid"; fi
    done < "$lock"
    # No script holds it: what does is a stage of a killed run, ending (kill -9 of the whole
    # run: its processes take a moment to go), or an orphan that still trains. Give it a moment.
    if [ -n "$holders" ] || ! flock -w "${LOCK_WAIT_SECONDS:-10}" "$how" "$fd"; then
      if [ -z "$holders" ]; then holders=$(lock_holders "$lock"); fi
      echo "error: another run is using $dir (process${holders:- unknown}); wait for it to end, stop it, or give this run its own CHECKPOINT_ROOT" >&2
      exit 1
    fi
  fi
  if [ "$mode" = shared ]; then echo "$$" >> "$lock"; else echo "$$" > "$lock"; fi
}

# cpg ARGS...: the entry script with the common flags; NPROC > 1 launches torchrun (DDP), with
# TORCHRUN_ARGS for a run across machines (default --standalone). GPU knobs: AMP=bf16|fp16,
# CHANNELS_LAST=1, COMPILE=1, DETERMINISTIC=1 (cuDNN benchmark off), SYNC_BN=0 (per-rank BatchNorm).
cpg() {
  local launcher=(python)
  if [ "$NPROC" -gt 1 ]; then
    # torchrun answers Ctrl-C with warnings and a traceback of its own: it runs in a session of
    # its own, which the terminal's SIGINT does not reach (the trap above stops it), and ends with
    # this script (--pdeathsig), even a script killed with -9. Its own warnings at VERBOSE=1.
    read -r -a rdzv <<< "${TORCHRUN_ARGS:---standalone}"
    launcher=(env LOGLEVEL="${LOGLEVEL:-$([ "${VERBOSE:-0}" = 1 ] && echo WARNING || echo ERROR)}"
              torchrun "${rdzv[@]}" --nproc_per_node="$NPROC")
    if command -v setsid > /dev/null && command -v setpriv > /dev/null; then
      launcher=(setsid setpriv --pdeathsig TERM "${launcher[@]}")
    fi
  fi
  common_flags
  run_child "${launcher[@]}" "$MAIN" "${common_args[@]}" "$@"
}

# common_flags: sets the array common_args, the flags of every process, from the knobs (empty
# knobs keep the entry script's default; experiment 3: its per-task batch sizes).
common_flags() {
  common_args=(--arch "$ARCH" --data_root "$DATA_ROOT" --device "$DEVICE" --val_batch_size "$VAL_BATCH_SIZE"
               --base_width "$BASE_WIDTH" --seed "$SEED" --val_fraction "$VAL_FRACTION"
               --resume_every_minutes "$RESUME_EVERY_MINUTES")
  if [ -n "${WORKERS:-}" ]; then common_args+=(--workers "$WORKERS"); fi
  if [ -n "${BATCH_SIZE:-}" ]; then common_args+=(--batch_size "$BATCH_SIZE"); fi
  if [ -n "${AMP:-}" ]; then common_args+=(--amp "$AMP"); fi
  if [ "${CHANNELS_LAST:-0}" = 1 ]; then common_args+=(--channels_last); fi
  if [ "${COMPILE:-0}" = 1 ]; then common_args+=(--compile); fi
  if [ "${DETERMINISTIC:-0}" = 1 ]; then common_args+=(--deterministic); fi
  if [ "${SYNC_BN:-1}" = 0 ]; then common_args+=(--no-sync_bn); fi
  if [ "${VERBOSE:-0}" = 1 ]; then common_args+=(--verbose); fi
  common_args+=(${DATA_FLAGS[@]+"${DATA_FLAGS[@]}"})
}

# run_stage FOLDER ARGS...: one process of $MAIN whose status file is FOLDER/exit_status (a
# stage's save folder, or a task's folder); sets $stage_status. torchrun turns every non-zero
# child status into 1, so the status comes from the file, which rank 0 writes before it exits.
# No file means a crash (the launcher's code stands), as does a file saying 0 under a failing
# launcher (another rank failed).
run_stage() {
  local folder=$1 rc=0 written; shift
  mkdir -p "$folder"
  rm -f "$folder/exit_status"
  _running=$folder
  cpg "$@" || rc=$?
  stage_status=$rc
  if [ -f "$folder/exit_status" ]; then
    written=$(cat "$folder/exit_status")
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

fail() { echo "stopping: $1 exited with status $2 (see $3)" >&2; exit "$2"; }

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

# baseline_stage FOLDER TASK GOAL_FILE ARGS...: train TASK on its own network (or from another
# task's model, ARGS --initial_from) and write its accuracy into GOAL_FILE; stops on failure.
baseline_stage() {
  local folder=$1 task=$2 goals=$3; shift 3
  run_stage "$folder" --mode finetune --dataset "$task" --save_folder "$folder" --save_goal_file "$goals" \
    --log_path "$folder/train.log" "$@"
  [ "$stage_status" -eq 0 ] || fail "baseline of $task" "$stage_status" "$folder/train.log"
}

# ----- the loop over the tasks -----------------------------------------------------------------------
# The script sets ROOT, TASK_LIST, SCRIPT (how a user runs it, for the messages) and the hook
#   task_flags N TASK    sets the array task_args: task N's flags (its learning rates, its stages)
# and may redefine next_step N (what to run once task N is learned and picked by hand). Task N
# loads the model picked for task N-1 of TASK_LIST; experiment 3's age folds share a prefix.

# settings FLAGS...: one line per flag ("--lr 0.01"), without the ones that name where the run is
# or do not change what it computes; DONE holds them, so that a rerun can say what changed.
settings() {
  printf '%s\n' "$@" | awk '/^--/ { if (line != "" && !skip) print line; line = $0
                                      skip = ($0 ~ /^--(task_folder|log_path|load_folder|save_folder|workers|resume_every_minutes|device|verbose)$/); next }
                                  { line = line " " $0 } END { if (line != "" && !skip) print line }'
}

# changed_settings FILE FLAGS...: "--lr 0.01 -> 0.005, ..." for each flag whose value differs
# from the settings recorded in FILE (nothing when FILE recorded none).
changed_settings() {
  local file=$1; shift
  [ -s "$file" ] || return 0
  settings "$@" | awk 'NR == FNR { old[$1] = substr($0, length($1) + 2); next }
                       { new[$1] = substr($0, length($1) + 2) }
                       END { for (k in old) if (!(k in new)) out = out sep k " " old[k] " -> (none)"
                             for (k in new) if (!(k in old) || old[k] != new[k]) out = out sep k " " ((k in old) ? old[k] : "(none)") " -> " new[k]
                             print out }' sep=", " "$file" -
}

check_target() {
  local num_tasks=${#TASK_LIST[@]}
  if [ "$1" != all ] && ! { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$num_tasks" ]; }; then
    echo "TARGET_TASK_ID=$1: use 1..$num_tasks (tasks: ${TASK_LIST[*]}) or all" >&2
    exit 1
  fi
}

next_step() {
  if [ "$1" -lt "${#TASK_LIST[@]}" ]; then echo "then: TARGET_TASK_ID=$(($1 + 1)) bash $SCRIPT"; fi
}

# Once a task is DONE its stage copies go (gradual_prune/checkpoint.pth.tar holds the picked model);
# their result.json files stay. Never earlier: every step of an unfinished task must stay replayable.
drop_stage_copies() {
  rm -f "$1"/gradual_prune/*/checkpoint.pth.tar "$1"/gradual_prune/*/checkpoint.pth.tar.json \
    "$1/retrain/checkpoint.pth.tar" "$1/retrain/checkpoint.pth.tar.json"
}

# learn_task N PICK: task N in one process (utils/sequence.py) with task_flags' task_args and
# --pick PICK; task N-1 must have its model picked.
learn_task() {
  local n=$1 pick=$2 task=${TASK_LIST[$1-1]} load=() prev
  local dir=$ROOT/$task
  if [ "$n" -gt 1 ]; then
    prev=$ROOT/${TASK_LIST[$n-2]}
    if [ ! -f "$prev/gradual_prune/chosen.json" ]; then
      echo "task $((n - 1)) (${TASK_LIST[$n-2]}) has no picked pruning ratio yet; pick one first:" >&2
      echo "  python tools/pick_pruning_ratio.py --task_folder $prev --baseline_acc_file $GOALS_FILE   (prints the table)" >&2
      echo "  $(pick_command "$prev")" >&2
      exit 1
    fi
    load=(--load_folder "$prev/gradual_prune")
  fi
  echo "=== task $n/${#TASK_LIST[@]}: $task (log $dir/train.log)"
  run_stage "$dir" --mode task --dataset "$task" --task_folder "$dir" --log_path "$dir/train.log" \
    ${load[@]+"${load[@]}"} --pick "$pick" "${task_args[@]}"
  [ "$stage_status" -eq 0 ] || fail "task $task" "$stage_status" "$dir/train.log"
}

pick_command() { echo "python tools/pick_pruning_ratio.py --task_folder $1 --baseline_acc_file $GOALS_FILE --ratio <ratio>"; }

# run_sequence TARGET [PICK]: TARGET=all learns every task not DONE yet, each picked by PICK
# (auto: the rule, keeping a pick made by hand before; last: its last stage) and marked DONE;
# TARGET=N learns task N and stops for a pick by hand (its record table is printed). Reruns
# resume; a DONE task learned with other settings is named with what changed.
run_sequence() {
  local target=$1 pick=${2:-auto} num_tasks=${#TASK_LIST[@]} n task dir changed
  if [ "$target" = all ]; then
    for ((n = 1; n <= num_tasks; n++)); do
      task=${TASK_LIST[$n-1]}
      dir=$ROOT/$task
      task_flags "$n" "$task"
      if [ -f "$dir/DONE" ]; then
        echo "=== $task: already learned, skipping"
        common_flags
        changed=$(changed_settings "$dir/DONE" "${common_args[@]}" "${task_args[@]}")
        if [ -n "$changed" ]; then
          echo "warning: $task was learned with other settings ($changed); its model is kept. To learn it again with these, delete its folder $dir and those of the tasks after it, then rerun"
        fi
        drop_stage_copies "$dir"
        continue
      fi
      learn_task "$n" "$pick"
      if [ "${NODE_RANK:-0}" = 0 ]; then   # across machines, node 0 writes (as rank 0 does)
        common_flags
        settings "${common_args[@]}" "${task_args[@]}" > "$dir/DONE.$$.tmp" && mv -f "$dir/DONE.$$.tmp" "$dir/DONE"
        drop_stage_copies "$dir"
      fi
    done
    echo "all $num_tasks tasks learned; final model: $ROOT/${TASK_LIST[$num_tasks-1]}/gradual_prune/checkpoint.pth.tar"
    return 0
  fi
  task=${TASK_LIST[$target-1]}
  dir=$ROOT/$task
  if [ -f "$dir/DONE" ]; then   # learned and picked by an `all` run, whose stage copies are gone
    echo "=== task $target ($task) is already learned (DONE); its record:"
    run_child python tools/pick_pruning_ratio.py --task_folder "$dir" --dataset "$task" --baseline_acc_file "$GOALS_FILE"
    return 0
  fi
  task_flags "$target" "$task"
  learn_task "$target" hand
  if [ -f "$dir/gradual_prune/chosen.json" ]; then
    echo "=== task $target ($task) learned, with the pruning ratio picked before; to pick again: $(pick_command "$dir")"
  else
    echo "=== task $target ($task) learned. Pick its pruning ratio from the table above:"
    echo "  $(pick_command "$dir")"
  fi
  next_step "$target"
}

# method_inference LOAD_FOLDER: every task of TASK_LIST from the final model -> RESULTS_FILE.
method_inference() {
  mkdir -p logs
  NPROC=1 cpg --mode inference --load_folder "$1" --tasks "${TASK_LIST[@]}" --method "$METHOD" \
    --results_file "$RESULTS_FILE" --log_path "$(dirname "$RESULTS_FILE")/${METHOD}_inference.log"
}

# ----- the compared methods (docs/methods.md): configurations of the same task process --
# No goal file (every result is accepted), no growth (the width stays START_WIDTH), no must-prune
# rule, and the task's model is its last stage (--pick last).
method_flags=(--baseline_acc_file "" --network_width_multiplier "${START_WIDTH:-1.0}" --width_step 0
              --max_allowed_network_width_multiplier "${START_WIDTH:-1.0}" --total_num_tasks 0 --pick last)

# packnet_stage TASK: sets packnet_args, PackNet's pruning stage of TASK (Mallya & Lazebnik 2018):
# PRUNE_RATIO (or PRUNE_RATIO_<task>; "none": not pruned) of its weights released at once
# (--pruning_interval 0), then PACKNET_RETRAIN_EPOCHS at PACKNET_RETRAIN_LR (x0.1 after the epochs
# in PACKNET_RETRAIN_DECAY, or PACKNET_RETRAIN_DECAY_<task>), kept only above train accuracy
# PACKNET_GATE (selection last: else the run stops; selection best: the retrained epochs must beat
# the pruned model).
packnet_stage() {
  local ratio decay
  ratio=$(per_task PRUNE_RATIO "$1" "$PRUNE_RATIO")
  decay=$(per_task PACKNET_RETRAIN_DECAY "$1" "$PACKNET_RETRAIN_DECAY")
  packnet_args=()
  if [ "$ratio" != none ]; then
    packnet_args=(--pruning_ratios "$ratio" --pruning_interval 0 --prune_epochs "$PACKNET_RETRAIN_EPOCHS"
                  --prune_lr "$PACKNET_RETRAIN_LR" --prune_lr_decay_epochs $decay
                  --prune_train_acc_gate "$PACKNET_GATE")
  fi
}
