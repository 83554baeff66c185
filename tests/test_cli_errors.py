"""The CLI's error protocol (spec §3.7, §12 items 7, 12, 27): one clear line, the right exit status.

Exit 1 = error, 3 = goal file missing; never 2 (which the scripts read as "widen the network").
The whole stderr of a failed run is that one line; stdout and the log file may say more.
Every case runs in this process (CPG_cifar100_main's __main__ block under capsys, the fast loop);
the cases in SUBPROCESS_CASES also run as real processes (`slow`: a torch import each), where
stderr is exactly what the bash scripts see, warnings included.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from cpg_testlib import (DEVICE, REPO, make_toy_data, run_main_block, subprocess_env, tiny_model,
                         tree_bytes)
from utils.checkpoint import save_checkpoint

MAIN = os.path.join(REPO, 'CPG_cifar100_main.py')
CHOOSER = os.path.join(REPO, 'tools', 'choose_appropriate_pruning_ratio_for_next_task.py')

# A --device that names CUDA but cannot run here: no CUDA at all (cuda:0 on a CPU machine), or an
# index past the visible GPUs (cuda:1 on a one-GPU machine), so the case runs on every machine.
UNUSABLE_CUDA = f'cuda:{torch.cuda.device_count()}'


def _cases(tmp, data):
    """name -> (argv, expected exit, strings the error line must contain)."""
    goals = os.path.join(tmp, 'goals.json')
    with open(goals, 'w') as f:
        json.dump({'toy_task_1': '0.5', 'toy_task_2': '0.0', 'no_such_task': '0.5'}, f)
    bad_goals = os.path.join(tmp, 'bad_goals.json')
    with open(bad_goals, 'w') as f:
        f.write('{"toy_task_1": ')  # truncated JSON
    corrupt = os.path.join(tmp, 'corrupt')
    os.makedirs(corrupt)
    with open(os.path.join(corrupt, 'checkpoint.pth.tar'), 'wb') as f:
        f.write(b'\x80\x02garbage, not a checkpoint \x00\xff' * 32)
    good = os.path.join(tmp, 'good', 'checkpoint.pth.tar')
    _write_task1_checkpoint(good)
    truncated = os.path.join(tmp, 'truncated')
    os.makedirs(truncated)
    with open(good, 'rb') as src, open(os.path.join(truncated, 'checkpoint.pth.tar'), 'wb') as dst:
        dst.write(src.read()[:5000])
    missing = os.path.join(tmp, 'no_such_folder')
    no_data = os.path.join(tmp, 'no_such_data')
    no_goals = os.path.join(tmp, 'no_goals.json')
    out = os.path.join(tmp, 'out')
    common = ['--data_root', data, '--device', DEVICE, '--workers', '0', '--base_width', '0.0625']
    prune = ['--mode', 'prune', '--dataset', 'toy_task_1', '--save_folder', out + '_p', *common,
             '--baseline_acc_file', goals]
    finetune = ['--mode', 'finetune', '--save_folder', out + '_f', '--baseline_acc_file', goals]
    chooser_task = os.path.join(tmp, 'chooser_task')
    os.makedirs(os.path.join(chooser_task, 'gradual_prune'))
    return {
        'corrupt_checkpoint': ([MAIN, *prune, '--load_folder', corrupt], 1,
                               [os.path.join(corrupt, 'checkpoint.pth.tar'), 'corrupt']),
        'truncated_checkpoint': ([MAIN, *prune, '--load_folder', truncated], 1,
                                 [os.path.join(truncated, 'checkpoint.pth.tar'), 'corrupt']),
        'missing_checkpoint_folder': ([MAIN, *prune, '--load_folder', missing], 1, [missing, 'not found']),
        'missing_data_folder': ([MAIN, *finetune, '--dataset', 'toy_task_1', '--data_root', no_data,
                                 '--device', DEVICE, '--workers', '0'], 1, [no_data]),
        'unknown_task': ([MAIN, *finetune, '--dataset', 'no_such_task', *common], 1, ["'no_such_task'"]),
        'task_without_goal': ([MAIN, *finetune, '--dataset', 'toy_task_3', *common], 1,
                              ["'toy_task_3'", goals]),
        'missing_goal_file': ([MAIN, '--mode', 'finetune', '--dataset', 'toy_task_1', '--save_folder',
                               out + '_g', *common, '--baseline_acc_file', no_goals], 3, [no_goals]),
        'corrupt_goal_file': ([MAIN, '--mode', 'finetune', '--dataset', 'toy_task_1', '--save_folder',
                               out + '_h', *common, '--baseline_acc_file', bad_goals], 1, [bad_goals]),
        'inference_unknown_task': ([MAIN, '--mode', 'inference', '--load_folder', os.path.dirname(good),
                                    '--tasks', 'toy_task_1', 'no_such_task', *common], 1,
                                   ["'no_such_task'", os.path.dirname(good)]),
        'wrong_num_classes': ([MAIN, *finetune, '--dataset', 'toy_task_1', *common, '--num_classes', '7'],
                              1, ["'toy_task_1'", '7']),
        'unusable_cuda_device': ([MAIN, *finetune, '--dataset', 'toy_task_1', '--data_root', data,
                                  '--workers', '0', '--base_width', '0.0625', '--device', UNUSABLE_CUDA],
                                 1, [UNUSABLE_CUDA]),
        'bad_device_name': ([MAIN, *finetune, '--dataset', 'toy_task_1', '--data_root', data,
                             '--workers', '0', '--base_width', '0.0625', '--device', 'gpu'], 1, ["gpu"]),
        # a stage that fails while training: task 2's Phase A, from task 1's checkpoint, diverges
        'diverging_loss': ([MAIN, '--mode', 'finetune', '--dataset', 'toy_task_2', '--save_folder',
                            out + '_d', '--load_folder', os.path.dirname(good), *common,
                            '--baseline_acc_file', goals, '--epochs', '1', '--batch_size', '16',
                            '--lr', '1e30', '--resume_every_minutes', '0'], 1, ['loss']),
        'prune_without_load_folder': ([MAIN, '--mode', 'prune', '--dataset', 'toy_task_1',
                                       '--save_folder', out], 1, ['--load_folder']),
        'bad_sparsities': ([MAIN, *prune, '--load_folder', os.path.dirname(good),
                            '--initial_sparsity', '0.5', '--target_sparsity', '0.4'], 1, ['--target_sparsity']),
        'unknown_flag': ([MAIN, '--mode', 'finetune', '--bogus_flag'], 1, ['--bogus_flag']),
        'bad_choice': ([MAIN, '--mode', 'widen'], 1, ['widen']),
        'chooser_missing_goal_file': ([CHOOSER, '--task_folder', chooser_task, '--dataset', 'toy_task_1',
                                       '--baseline_acc_file', no_goals], 3, [no_goals]),
    }


def _write_task1_checkpoint(path):
    """A finished toy_task_1 that released half of every layer: task 2 gets capacity to train."""
    model = tiny_model()
    model.add_task('toy_task_1', 5)
    with torch.no_grad():
        for _, layer in model.masked_layers():
            layer.owner.view(-1)[::2] = 1  # every other entry stays free
    save_checkpoint(path, model, 'custom_vgg_cifar100')


CASE_NAMES = ['corrupt_checkpoint', 'truncated_checkpoint', 'missing_checkpoint_folder',
              'missing_data_folder', 'unknown_task', 'task_without_goal', 'missing_goal_file',
              'corrupt_goal_file', 'inference_unknown_task', 'wrong_num_classes',
              'unusable_cuda_device', 'bad_device_name', 'diverging_loss', 'prune_without_load_folder',
              'bad_sparsities', 'unknown_flag', 'bad_choice', 'chooser_missing_goal_file']
# one case per way an error leaves the process: a CPGError in main(), exit 3, the CUDA check,
# argparse, a helper tool, a stage failing mid-training
SUBPROCESS_CASES = ['corrupt_checkpoint', 'missing_data_folder', 'missing_goal_file',
                    'unusable_cuda_device', 'diverging_loss', 'prune_without_load_folder',
                    'chooser_missing_goal_file']


@pytest.fixture(scope='module')
def cli_cases(tmp_path_factory):
    """(tmp folder, cases); 2 toy tasks with 16 train / 4 test images per class."""
    data = make_toy_data(tmp_path_factory.mktemp('cli_data'), tasks=2, train=16, test=4)
    tmp = str(tmp_path_factory.mktemp('cli_errors'))
    return tmp, _cases(tmp, data)


@pytest.fixture(scope='module')
def subprocess_runs(cli_cases):
    """SUBPROCESS_CASES run as real processes, all at once: name -> (exit, stdout, stderr)."""
    _, cases = cli_cases
    env = subprocess_env()
    procs = {name: subprocess.Popen([sys.executable, *cases[name][0]], cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in SUBPROCESS_CASES}
    runs = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        runs[name] = (proc.returncode, stdout, stderr)
    return runs


def _in_process(argv, capsys):
    """The script's own __main__ block, run in this process: (exit status, stdout, stderr)."""
    return run_main_block(argv, capsys)


def _params():
    params = [pytest.param(name, 'in_process', id=name) for name in CASE_NAMES]
    params += [pytest.param(name, 'subprocess', id=f'{name}-subprocess', marks=pytest.mark.slow)
               for name in SUBPROCESS_CASES]
    return params


@pytest.mark.parametrize('case, how', _params())
def test_error_is_one_clear_line_with_the_right_status(cli_cases, case, how, capsys, request):
    _, cases = cli_cases
    argv, expected_rc, needles = cases[case]
    if how == 'subprocess':
        rc, stdout, stderr = request.getfixturevalue('subprocess_runs')[case]
    else:
        rc, stdout, stderr = _in_process(argv, capsys)
    output = stdout + stderr
    assert rc == expected_rc, f'{case}: exit {rc}, expected {expected_rc}\n{output[-2000:]}'
    assert 'Traceback' not in output, output[-3000:]
    error_lines = [line for line in output.splitlines() if 'ERROR' in line or 'error:' in line]
    assert len(error_lines) == 1, f'{case}: expected one error line, got {error_lines}'
    for needle in needles:
        assert needle in error_lines[0], f'{case}: {needle!r} missing from {error_lines[0]!r}'

    # the whole stderr is that one line (splitlines also splits tqdm's carriage returns)
    stderr_is_one_line = len(stderr.splitlines()) == 1 and all(n in stderr for n in needles)
    assert stderr_is_one_line, f'{case}: stderr must be exactly the error line, got {stderr[-2000:]!r}'


@pytest.mark.parametrize('case', ['diverging_loss', 'wrong_num_classes', 'task_without_goal'])
def test_failed_stage_leaves_the_previous_task_untouched_and_nothing_to_replay(cli_cases, case, capsys):
    """A stage of task 2 that fails (while training, on its data, on its goal) exits 1 and leaves
    task 1's checkpoint folder byte for byte as it was; it writes no result.json (a rerun would
    replay it), no checkpoint and no resume file of its own."""
    tmp, cases = cli_cases
    argv, expected_rc, _ = cases[case]
    argv = list(argv)
    if '--load_folder' not in argv:  # run it as task 2 after task 1, like the bash loop does
        argv = [a if a != 'toy_task_1' else 'toy_task_2' for a in argv]
        argv += ['--load_folder', os.path.join(tmp, 'good')]
    save_folder = argv[argv.index('--save_folder') + 1]
    before = tree_bytes(os.path.join(tmp, 'good'))
    assert set(before) >= {'checkpoint.pth.tar', 'checkpoint.pth.tar.json'}
    rc, stdout, stderr = _in_process(argv, capsys)
    assert rc == expected_rc == 1, stdout[-2000:] + stderr[-2000:]
    assert tree_bytes(os.path.join(tmp, 'good')) == before
    left = tree_bytes(save_folder) if os.path.isdir(save_folder) else {}
    assert not any(name.endswith(('result.json', '.pth.tar')) for name in left), sorted(left)


@pytest.mark.slow
def test_subprocess_failures_leave_no_result_to_replay(cli_cases, subprocess_runs):
    """The real processes that failed left no result.json and no checkpoint anywhere they wrote."""
    tmp, _ = cli_cases
    assert all(runs[0] != 0 for runs in subprocess_runs.values())
    for dirpath, _, files in os.walk(tmp):
        assert 'result.json' not in files, dirpath
        if os.path.basename(dirpath).startswith('out'):
            assert not any(f.endswith('.pth.tar') for f in files), dirpath
