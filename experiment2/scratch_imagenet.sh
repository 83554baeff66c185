#!/usr/bin/env bash
# Experiment 2's "Train from scratch" row: every task trained on its own ResNet-50 from random
# init (experiment2/baseline_imagenet.sh without PRETRAINED_PATH). Writes its accuracies to
# logs/scratch_imagenet_acc_resnet50.txt (not CPG's goal file) and RESULTS_FILE
# (logs/scratch_imagenet_results.json). Usage: bash experiment2/scratch_imagenet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export METHOD=scratch PRETRAINED_PATH=
export GOALS_FILE=${SCRATCH_GOALS_FILE:-logs/scratch_imagenet_acc_resnet50.txt}
exec bash experiment2/baseline_imagenet.sh
