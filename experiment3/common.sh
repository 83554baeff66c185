# Shared settings of the experiment-3 scripts (sourced, not run). Every knob is an environment
# variable whose default is the paper's value (spec §9); the demo just sets smaller ones.
DATA_ROOT=${DATA_ROOT:-data}       # DATA_ROOT/<task>/{train,val}/<class>/*; face_verification/val: aligned LFW
# Tasks 1..3 in order; the first is always the verification task (AngleLinear head, LFW). TASKS
# may replace gender and emotion with your own classification tasks.
read -r -a TASK_LIST <<< "$(echo ${TASKS:-face_verification gender emotion})"
# Task 4 is learned once per age fold, each branching from the picked emotion model: age<f>.
# AGE_FOLDS="" learns no task 4; AGE_TASK names your own fold tasks (<AGE_TASK><f>).
read -r -a AGE_FOLD_LIST <<< "$(echo ${AGE_FOLDS-0 1 2 3 4})"
AGE_TASK=${AGE_TASK:-age}
PAIRS_FILE=${PAIRS_FILE:-face_data/lfw_pairs.txt}
WEIGHTED_LOSS_TASKS=${WEIGHTED_LOSS_TASKS-emotion}   # class-weighted cross-entropy (spec §6.3)
# The original's CNN20 trained for face verification on VGGFace2 (face_weight.pth); empty = train task 1 from scratch.
PRETRAINED_PATH=${PRETRAINED_PATH-face_data/face_weight.pth}
DEVICE=${DEVICE:-auto}
BATCH_SIZE=${BATCH_SIZE:-}         # empty: the per-task batch sizes of the table in FvGeEm_CPG_face.sh
VAL_BATCH_SIZE=${VAL_BATCH_SIZE:-100}   # the original evaluated one image (pair) at a time
IMAGE_SIZE=${IMAGE_SIZE:-112}
BASE_WIDTH=${BASE_WIDTH:-1.0}
GOALS_FILE=${GOALS_FILE:-logs/baseline_face_acc.txt}
CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints}
RESULTS_FILE=${RESULTS_FILE:-logs/face_inference_results.json}
ARCH=${ARCH:-spherenet20}
SEED=${SEED:-1}
WORKERS=${WORKERS:-}
NPROC=${NPROC:-1}
VAL_FRACTION=${VAL_FRACTION:-0}    # > 0: classification tasks select on held-out train images (LFW stays)
RESUME_EVERY_MINUTES=${RESUME_EVERY_MINUTES:-10}
START_WIDTH=${START_WIDTH:-1.0}
MAIN=CPG_face_main.py
ROOT=$CHECKPOINT_ROOT/CPG/experiment3/$ARCH
VERIFICATION_TASK=${TASK_LIST[0]}
AGE_TASKS=()
for fold in ${AGE_FOLD_LIST[@]+"${AGE_FOLD_LIST[@]}"}; do AGE_TASKS+=("$AGE_TASK$fold"); done
PREFLIGHT_TASKS=("${TASK_LIST[@]}" ${AGE_TASKS[@]+"${AGE_TASKS[@]}"})
read -r -a weighted <<< "$WEIGHTED_LOSS_TASKS"
DATA_FLAGS=(--image_size "$IMAGE_SIZE" --pairs_file "$PAIRS_FILE" --verification_task "$VERIFICATION_TASK"
            --weighted_loss_tasks ${weighted[@]+"${weighted[@]}"})
PREFLIGHT_FLAGS=(--layout face --pairs_file "$PAIRS_FILE" --verification_task "$VERIFICATION_TASK")
source tools/stages.sh

# set_default VAR VALUE: VAR=VALUE unless VAR is set (the environment wins).
set_default() { if [ -z "${!1+x}" ]; then printf -v "$1" '%s' "$2"; fi; }

# task_setting VAR TASK: VAR_<task> if set, else VAR if set (one value for every task, e.g. the
# demo's), else the table's value for TASK (TABLE_VAR_<task>), else the table's default row.
task_setting() {
  local t=${2//[^A-Za-z0-9_]/_}
  local own="${1}_$t" table="TABLE_${1}_$t" fallback="TABLE_${1}_default"
  printf '%s\n' "${!own:-${!1:-${!table:-${!fallback}}}}"
}

# table TASK VAR=VALUE...: one row of a per-task settings table (TABLE_VAR_<task>=VALUE).
table() {
  local t=${1//[^A-Za-z0-9_]/_} pair; shift
  for pair in "$@"; do printf -v "TABLE_${pair%%=*}_$t" '%s' "${pair#*=}"; done
}
