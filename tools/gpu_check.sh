#!/usr/bin/env bash
# Every GPU figure in one call (under 8 minutes on one GPU): the CUDA test subset, the VGG16-BN and
# ResNet-50 step benchmarks with and without AMP / channels_last / compile, the pruner's mask
# update at width 1.5, and one task of the experiment-1 demo (one process) on CUDA.
# Writes logs/gpu_check.json and logs/gpu_check.md; on a machine without CUDA it says so in one
# line and exits 0.
# Usage: bash tools/gpu_check.sh          (GPU_CHECK_TESTS=0 skips the test subset)
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to measure"
  exit 0
fi
OUT=logs/gpu_check
mkdir -p "$OUT"
rm -f "$OUT"/*.json
start=$SECONDS
note() { echo "=== gpu_check: $* ($((SECONDS - start)) s)"; }

# 1. the fast tests on CUDA (the slow ones start processes and take minutes)
tests_rc=skipped
if [ "${GPU_CHECK_TESTS:-1}" = 1 ]; then
  note "CUDA test subset"
  CPG_TEST_DEVICE=cuda timeout 300 python -m pytest -q -m "not slow" tests -p no:cacheprovider -x \
    > "$OUT/tests.txt" 2>&1
  tests_rc=$?
  tail -3 "$OUT/tests.txt"
fi

# 2. step benchmarks: ratios to the dense network, and its images/s
for arch in custom_vgg_cifar100 resnet50; do
  for variant in plain amp channels_last compile; do
    flags=()
    case $variant in amp) flags=(--amp) ;; channels_last) flags=(--channels_last) ;; compile) flags=(--compile) ;; esac
    note "benchmark $arch $variant"
    timeout 150 python tools/benchmark.py --arch "$arch" --device cuda --quick --no-loader "${flags[@]}" \
      --json "$OUT/bench_${arch}_${variant}.json" > "$OUT/bench_${arch}_${variant}.txt" 2>&1 \
      || echo "benchmark $arch $variant failed (see $OUT/bench_${arch}_${variant}.txt)"
  done
done

# 3. the pruner's mask update at the paper's largest width
note "pruner mask update"
timeout 120 python tools/bench_pruner.py --device cuda --json "$OUT/pruner.json" | tee "$OUT/pruner.txt"

# 4. one task of the experiment-1 demo on CUDA, in one process (data made once, reused)
note "one demo task on CUDA"
demo_start=$SECONDS
python tools/make_toy_data.py --out data/toy_gpu_check --tasks 1 --classes 5 --train 200 --test 40 --if_missing > /dev/null
printf '{"toy_task_1": "0.0"}\n' > "$OUT/goals.json"
rm -rf checkpoints/gpu_check
DATA_ROOT=data/toy_gpu_check TASKS=toy_task_1 BASE_WIDTH=0.125 FINETUNE_EPOCHS=6 PRUNE_EPOCHS=2 PRUNING_INTERVAL=1 \
  RETRAIN_EPOCHS=3 CHECKPOINT_ROOT=checkpoints/gpu_check GOALS_FILE="$OUT/goals.json" DEVICE=cuda \
  timeout 300 bash experiment1/CPG_cifar100_scratch_mul_1.5.sh > "$OUT/demo_task.txt" 2>&1
demo_rc=$?
demo_s=$((SECONDS - demo_start))

python - "$OUT" "$tests_rc" "$demo_rc" "$demo_s" <<'PY'
import glob, json, os, sys
import torch
out, tests_rc, demo_rc, demo_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
figures = {'device': torch.cuda.get_device_name(0), 'torch': torch.__version__,
           'tests_exit_status': tests_rc, 'demo_task': {'exit_status': demo_rc, 'seconds': demo_s},
           'benchmarks': {}, 'pruner': None}
for path in sorted(glob.glob(os.path.join(out, 'bench_*.json'))):
    with open(path) as f:
        figures['benchmarks'][os.path.basename(path)[6:-5]] = json.load(f)
if os.path.exists(os.path.join(out, 'pruner.json')):
    with open(os.path.join(out, 'pruner.json')) as f:
        figures['pruner'] = json.load(f)
with open('logs/gpu_check.json', 'w') as f:
    json.dump(figures, f, indent=2)
lines = [f'# GPU check: {figures["device"]} (torch {figures["torch"]})', '',
         f'- CUDA test subset: exit status {tests_rc}',
         f'- one experiment-1 demo task on CUDA (one process): {demo_s} s, exit status {demo_rc}']
if figures['pruner']:
    p = figures['pruner']
    lines.append(f'- pruner mask update, width {p["multiplier"]} ({p["shared_weights"] / 1e6:.1f} M weights): '
                 f'sort {1e3 * p["sort_s"]:.1f} ms, select {1e3 * p["select_s"]:.1f} ms')
lines += ['', '| benchmark | ratios to dense (CPG / dense) | dense images/s |', '|---|---|---:|']
for name, b in figures['benchmarks'].items():
    ratios = ', '.join(f'{k} {v:.2f}' for k, v in sorted((b.get('ratios') or {}).items()) if v is not None)
    dense = b['per_batch'][str(b['headline_batch'])]['images_per_s']['dense_train']
    lines.append(f'| {name} | {ratios} | {dense:.0f} |')
with open('logs/gpu_check.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
print('\n'.join(lines))
PY
note "done: logs/gpu_check.json, logs/gpu_check.md"
