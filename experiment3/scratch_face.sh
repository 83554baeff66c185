#!/usr/bin/env bash
# Experiment 3's "Train from scratch" row: every task trained on its own SphereNet20 from random
# init (experiment3/baseline_face.sh without PRETRAINED_PATH; face verification with AngleLoss).
# Writes its accuracies to logs/scratch_face_acc.txt (not CPG's goal file) and RESULTS_FILE
# (logs/scratch_face_results.json). Usage: bash experiment3/scratch_face.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export METHOD=scratch PRETRAINED_PATH=
export GOALS_FILE=${SCRATCH_GOALS_FILE:-logs/scratch_face_acc.txt}
exec bash experiment3/baseline_face.sh
