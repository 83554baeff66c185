# Shared settings of the experiment-2 scripts (sourced, not run). Every knob is an environment
# variable whose default is the paper's value (spec §8); the demo just sets smaller ones.
DATA_ROOT=${DATA_ROOT:-data}       # DATA_ROOT/<task>/{train,test}/<class>/*, imagenet: {train,val}
# The paper's six tasks in order; TASKS overrides (space-separated, any names and class counts).
read -r -a TASK_LIST <<< "$(echo ${TASKS:-imagenet cubs_cropped stanford_cars_cropped flowers wikiart sketches})"
DEVICE=${DEVICE:-auto}
BATCH_SIZE=${BATCH_SIZE:-32}       # global batch (spec §8.1); NPROC ranks split it
VAL_BATCH_SIZE=${VAL_BATCH_SIZE:-100}
IMAGE_SIZE=${IMAGE_SIZE:-224}
BASE_WIDTH=${BASE_WIDTH:-1.0}
# torchvision's ImageNet ResNet-50 (resnet50-19c8e357.pth); empty = train task 1 from scratch.
PRETRAINED_PATH=${PRETRAINED_PATH-data/pretrained/resnet50-19c8e357.pth}
GOALS_FILE=${GOALS_FILE:-logs/baseline_imagenet_acc_resnet50.txt}
CHECKPOINT_ROOT=${CHECKPOINT_ROOT:-checkpoints}
RESULTS_FILE=${RESULTS_FILE:-logs/imagenet_inference_results.json}
ARCH=${ARCH:-resnet50}
SEED=${SEED:-1}
WORKERS=${WORKERS:-}
NPROC=${NPROC:-1}
VAL_FRACTION=${VAL_FRACTION:-0}    # > 0: hold out this share of each class's train images for every selection
RESUME_EVERY_MINUTES=${RESUME_EVERY_MINUTES:-10}
START_WIDTH=${START_WIDTH:-1.0}
MAIN=CPG_imagenet_main.py
DATA_FLAGS=(--image_size "$IMAGE_SIZE")
PREFLIGHT_FLAGS=(--layout finegrained)
source tools/stages.sh

# num_train_classes TASK: class folders of the task's train split (the model's head size).
num_train_classes() {
  find "$DATA_ROOT/$1/train" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l | tr -d ' '
}

# pretrained_flags TASK_INDEX TASK EPOCHS: sets $first_flags for task 1 from PRETRAINED_PATH
# (spec §5.2): a 1000-class first task takes torchvision's fc as its head and is only evaluated
# (the paper's ImageNet task); any other first task gets the backbone and a fresh head, trained.
pretrained_flags() {
  first_flags=(--epochs "$3")
  if [ "$1" -eq 1 ] && [ -n "$PRETRAINED_PATH" ]; then
    first_flags=(--pretrained "$PRETRAINED_PATH" --epochs "$3")
    if [ "$(num_train_classes "$2")" = 1000 ]; then first_flags=(--pretrained "$PRETRAINED_PATH" --epochs 0); fi
  fi
}
