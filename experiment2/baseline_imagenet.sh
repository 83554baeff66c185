#!/usr/bin/env bash
# Experiment 2 baseline (spec §8.2): every task fine-tuned on its own from the pretrained
# ResNet-50 (fresh head), plateau schedule (patience 10, x0.1, stop after 3 decays, at most 100
# epochs), best epoch; writes its accuracy into GOALS_FILE (logs/baseline_imagenet_acc_resnet50.txt),
# CPG's accuracy goals. A 1000-class first task (imagenet) is the pretrained model, evaluated.
# Without PRETRAINED_PATH every task is trained from scratch (the demo does this).
# Ready-made alternative: GOALS_FILE=experiment2/goals_piggyback_resnet50.txt (piggyback's
# individual-network numbers, as the original README offers).
# Usage: bash experiment2/baseline_imagenet.sh        (rerun to resume; env vars override knobs)
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${METHOD:-finetune}          # the paper's "Finetune" row; experiment2/scratch_imagenet.sh: scratch
RESULTS_FILE=${RESULTS_FILE:-logs/${METHOD}_imagenet_results.json}
source experiment2/common.sh
BASELINE_EPOCHS=${BASELINE_EPOCHS:-100}
BASELINE_PATIENCE=${BASELINE_PATIENCE:-10}
LR_cubs_cropped=${LR_cubs_cropped:-1e-3}
LR_stanford_cars_cropped=${LR_stanford_cars_cropped:-1e-2}
LR_flowers=${LR_flowers:-1e-3}
LR_wikiart=${LR_wikiart:-1e-3}
LR_sketches=${LR_sketches:-1e-3}
LR=${LR:-1e-3}
ROOT=$CHECKPOINT_ROOT/baseline/experiment2/$ARCH
if [ "$METHOD" != finetune ]; then ROOT=$CHECKPOINT_ROOT/$METHOD/experiment2/$ARCH; fi
mkdir -p logs "$ROOT"
lock_run "$ROOT"
preflight   # every task's folders and classes, before any training

for task in "${TASK_LIST[@]}"; do
  echo "=== baseline: $task"
  pretrained_flags 1 "$task" "$BASELINE_EPOCHS"   # every baseline starts from the pretrained model
  baseline_stage "$ROOT/$task" "$task" "$GOALS_FILE" "${first_flags[@]}" \
    --lr "$(per_task LR "$task" "$LR")" --patience "$BASELINE_PATIENCE"
done
echo "accuracy goals written to $GOALS_FILE"
python tools/baseline_results.py --method "$METHOD" --experiment 2 --tasks "${TASK_LIST[@]}" --roots "$ROOT" \
  --out "$RESULTS_FILE"
