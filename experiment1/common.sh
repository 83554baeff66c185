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

START_WIDTH=${START_WIDTH:-1.0}
VAL_FRACTION=${VAL_FRACTION:-0}   # > 0: hold out this share of each class's train images for every selection
MAIN=CPG_cifar100_main.py
DATA_FLAGS=(--num_classes "$NUM_CLASSES")
PREFLIGHT_FLAGS=(--num_classes "$NUM_CLASSES" --image_size 32)   # VGG16-BN's CIFAR variant takes 32x32
source tools/stages.sh
# Learning-rate milestones scale with the epoch budget: 50%/80% (weights), 50%/70% (pick masks).
LR_DECAY_EPOCHS=$(milestones "$FINETUNE_EPOCHS" 50 80)
MASK_LR_DECAY_EPOCHS=$(milestones "$FINETUNE_EPOCHS" 50 70)
BASELINE_LR_DECAY_EPOCHS=$(milestones "$BASELINE_EPOCHS" 50 80)
