#!/usr/bin/env bash
# Where experiment 1's run stands (tools/run_status.py): every task of TASK_LIST done / running /
# stopped / pending, its width, ratio, accuracy against its goal and share of the network, the
# running stage and epoch, the elapsed time and an estimate of the rest. Reads only: safe while
# the run writes; it starts nothing.
# Usage: bash experiment1/status.sh [--json] [--watch SECONDS] [--png FILE] [--exact]
#   with the run's knobs (CHECKPOINT_ROOT, TASKS, ARCH; METHOD=PAE|PackNet|Piggyback for those runs,
#   SETTING for CPG/PAE); --root DIR overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment1/common.sh
METHOD=${METHOD:-CPG}
case "$METHOD" in   # the roots of experiment1/CPG_cifar100_scratch_mul_1.5.sh, PAE_cifar100.sh, the others
  CPG) ROOT=$CHECKPOINT_ROOT/CPG/experiment1/${SETTING:-scratch_mul_1.5}/$ARCH ;;
  PAE) ROOT=$CHECKPOINT_ROOT/PAE/experiment1/${SETTING:-finetune_max_mul_2.0}/$ARCH ;;
  *) ROOT=$CHECKPOINT_ROOT/$METHOD/experiment1/$ARCH ;;
esac
exec python tools/run_status.py --root "$ROOT" --tasks "${TASK_LIST[@]}" "$@"
