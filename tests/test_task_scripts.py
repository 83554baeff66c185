"""One process per task through the experiment-1 script, as users run it: the processes a run
starts, a rerun with other settings named per task, and the GPU switches (AMP, channels_last,
torch.compile) keeping every earlier task bit-exact."""
import json
import os
import stat

import pytest
import torch

from cpg_testlib import DEVICE, REPO, make_toy_data, run_script, subprocess_env, tail, task_logits
from utils.checkpoint import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.slow

TASKS = ('toy_task_1', 'toy_task_2', 'toy_task_3')
SCRIPT = os.path.join('experiment1', 'CPG_cifar100_scratch_mul_1.5.sh')
ARCH_DIR = os.path.join('CPG', 'experiment1', 'scratch_mul_1.5', 'custom_vgg_cifar100')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp('data'), tasks=3, classes=3, train=20, test=10)


def _env(data, out, tasks=TASKS, **extra):
    (out / 'goals.json').write_text(json.dumps({t: '0.0' for t in TASKS}))
    knobs = dict(DATA_ROOT=data, TASKS=' '.join(tasks), NUM_CLASSES='3', BASE_WIDTH='0.0625',
                 CHECKPOINT_ROOT=str(out / 'checkpoints'), GOALS_FILE=str(out / 'goals.json'), WORKERS='0',
                 NPROC='1', FINETUNE_EPOCHS='2', PRUNE_EPOCHS='1', RETRAIN_EPOCHS='1', PRUNING_INTERVAL='1',
                 PRUNING_RATIOS='0.3 0.6 0.8 0.9', TRAIN_ACC_GATE='0', RESUME_EVERY_MINUTES='0')
    knobs.update(extra)
    return subprocess_env(**knobs)


def test_the_script_starts_one_process_per_task(data, tmp_path):
    """Every `python` / `torchrun` the run starts goes through a logging shim on PATH: the preflight,
    then one process per task (before: a process per stage, ~8 per task at 4 pruning stages)."""
    shim = tmp_path / 'shim'
    shim.mkdir()
    log = tmp_path / 'started.txt'
    env = _env(data, tmp_path)
    real = {name: _which(name, env['PATH']) for name in ('python', 'torchrun')}
    for name, path in real.items():
        script = shim / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexec {path} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env['PATH'] = f'{shim}{os.pathsep}{env["PATH"]}'
    proc = run_script(SCRIPT, env, timeout=900)
    assert proc.returncode == 0, tail(proc)
    started = log.read_text().splitlines()
    assert len(started) == 1 + len(TASKS), started
    assert 'tools/preflight.py' in started[0]
    assert all('--mode task' in line for line in started[1:]), started


def _which(name, path):
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(f'{name} not on PATH')


def test_a_rerun_with_other_settings_names_what_changed_per_task(data, tmp_path):
    env = _env(data, tmp_path, tasks=TASKS[:2])
    proc = run_script(SCRIPT, env, timeout=900)
    assert proc.returncode == 0, tail(proc)
    same = run_script(SCRIPT, env, timeout=300)
    assert same.returncode == 0 and 'warning' not in same.stdout + same.stderr, tail(same)
    other_data = str(tmp_path / 'moved_data')
    os.symlink(data, other_data)
    changed = run_script(SCRIPT, dict(env, LR='5e-3', DATA_ROOT=other_data), timeout=300)
    assert changed.returncode == 0, tail(changed)
    root = tmp_path / 'checkpoints' / ARCH_DIR
    warnings = [line for line in changed.stdout.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 2, changed.stdout
    for task, line in zip(TASKS[:2], warnings):
        assert line.startswith(f'warning: {task} was learned with other settings (')
        assert '--lr 1e-2 -> 5e-3' in line and f'--data_root {data} -> {other_data}' in line
        assert f'To learn it again with these, delete its folder {root / task} and those of the tasks after it' in line
    assert 'Phase A' not in changed.stdout   # nothing was trained again


@pytest.mark.parametrize('switches', [
    dict(AMP='bf16', CHANNELS_LAST='1'),
    dict(COMPILE='1'),
])
def test_gpu_switches_keep_earlier_tasks_exact(data, tmp_path, switches):
    """Task 1 learned plainly, tasks 2 and 3 with the switches: task 1's logits from the final model
    equal those from its own model (bf16 autocast and compile run on the CPU too). Compile on the
    CPU costs minutes a task: there task 2 alone runs with it."""
    if DEVICE == 'cpu' and switches.get('AMP') == 'fp16':
        pytest.skip('fp16 autocast is for CUDA')
    env = _env(data, tmp_path, tasks=TASKS[:1], DEVICE=DEVICE)
    proc = run_script(SCRIPT, env, timeout=900)
    assert proc.returncode == 0, tail(proc)
    root = tmp_path / 'checkpoints' / ARCH_DIR
    first = model_from_checkpoint(load_checkpoint(str(root / TASKS[0] / 'gradual_prune')), DEVICE)
    tasks = TASKS[:2] if 'COMPILE' in switches and DEVICE == 'cpu' else TASKS
    proc = run_script(SCRIPT, dict(env, TASKS=' '.join(tasks), **switches), timeout=1500)
    assert proc.returncode == 0, tail(proc)
    log = (root / TASKS[1] / 'train.log').read_text()
    for key, flag in (('AMP', '"amp": "bf16"'), ('CHANNELS_LAST', '"channels_last": true'), ('COMPILE', '"compile": true')):
        if key in switches:
            assert flag in log, flag
    second = model_from_checkpoint(load_checkpoint(str(root / TASKS[1] / 'gradual_prune')), DEVICE)
    final = model_from_checkpoint(load_checkpoint(str(root / tasks[-1] / 'gradual_prune')), DEVICE)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    # task 1 through the later tasks, task 2 (learned with the switches) through task 3
    assert torch.equal(task_logits(first, x, [1])[1], task_logits(final, x, [1])[1])
    if len(tasks) > 2:
        assert torch.equal(task_logits(second, x, [2])[2], task_logits(final, x, [2])[2])
