#!/usr/bin/env bash
# Where experiment 2's run stands (tools/run_status.py): every task of TASK_LIST done / running /
# stopped / waiting for a pick by hand / pending, its width, ratio, accuracy against its goal and
# share of the network, the running stage and epoch, the elapsed time and an estimate of the rest.
# Reads only: safe while the run writes; it starts nothing.
# Usage: bash experiment2/status.sh [--json] [--watch SECONDS] [--png FILE] [--exact]
#   with the run's knobs (CHECKPOINT_ROOT, TASKS, ARCH; METHOD=PackNet|Piggyback|ProgressiveNet for
#   those runs); --root DIR overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment2/common.sh
ROOT=$CHECKPOINT_ROOT/${METHOD:-CPG}/experiment2/$ARCH
exec python tools/run_status.py --root "$ROOT" --tasks "${TASK_LIST[@]}" "$@"
