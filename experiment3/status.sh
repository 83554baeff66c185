#!/usr/bin/env bash
# Where experiment 3's run stands (tools/run_status.py): tasks 1..3 and every age fold (each
# branches from the emotion model) done / running / stopped / waiting for a pick by hand /
# pending, with width, ratio, accuracy against the goal, share of the network, the running stage
# and epoch, the elapsed time and an estimate of the rest. Reads only: safe while runs write; it
# starts nothing.
# Usage: bash experiment3/status.sh [--json] [--watch SECONDS] [--png FILE] [--exact]
#   with the run's knobs (CHECKPOINT_ROOT, TASKS, AGE_FOLDS, AGE_TASK, ARCH); --root DIR overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiment3/common.sh
exec python tools/run_status.py --root "$ROOT" --tasks "${TASK_LIST[@]}" ${AGE_TASKS[@]+"${AGE_TASKS[@]}"} "$@"
