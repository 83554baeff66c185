"""The CLI's error protocol (spec §3.7, §12 items 7, 12, 27): one clear line, the right exit status.

Exit 1 = error, 3 = goal file missing; never 2 (which the scripts read as "widen the network").
The main cases run as real subprocesses (exit status, stdout/stderr as the scripts see them); the
rest call the same entry points in process (each subprocess costs a ~3 s torch import).
"""
import json
import os
import subprocess
import sys

import pytest

import CPG_cifar100_main as cli
from cpg_testlib import REPO, subprocess_env, tiny_model
from utils.checkpoint import save_checkpoint

MAIN = os.path.join(REPO, 'CPG_cifar100_main.py')
CHOOSER = os.path.join(REPO, 'tools', 'choose_appropriate_pruning_ratio_for_next_task.py')


def _cases(tmp, toy_data):
    """name -> (argv, expected exit, strings the error line must contain)."""
    goals = os.path.join(tmp, 'goals.json')
    with open(goals, 'w') as f:
        json.dump({'toy_task_1': '0.5', 'no_such_task': '0.5'}, f)
    bad_goals = os.path.join(tmp, 'bad_goals.json')
    with open(bad_goals, 'w') as f:
        f.write('{"toy_task_1": ')  # truncated JSON
    corrupt = os.path.join(tmp, 'corrupt')
    os.makedirs(corrupt)
    with open(os.path.join(corrupt, 'checkpoint.pth.tar'), 'wb') as f:
        f.write(b'\x80\x02garbage, not a checkpoint \x00\xff' * 32)
    good = os.path.join(tmp, 'good', 'checkpoint.pth.tar')
    model = tiny_model()
    model.add_task('toy_task_1', 5)
    save_checkpoint(good, model, 'custom_vgg_cifar100')
    truncated = os.path.join(tmp, 'truncated')
    os.makedirs(truncated)
    with open(good, 'rb') as src, open(os.path.join(truncated, 'checkpoint.pth.tar'), 'wb') as dst:
        dst.write(src.read()[:5000])
    missing = os.path.join(tmp, 'no_such_folder')
    no_data = os.path.join(tmp, 'no_such_data')
    no_goals = os.path.join(tmp, 'no_goals.json')
    out = os.path.join(tmp, 'out')
    common = ['--data_root', toy_data, '--device', 'cpu', '--workers', '0', '--base_width', '0.0625']
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
                                 '--device', 'cpu', '--workers', '0'], 1, [no_data]),
        'unknown_task': ([MAIN, *finetune, '--dataset', 'no_such_task', *common], 1, ["'no_such_task'"]),
        'task_without_goal': ([MAIN, *finetune, '--dataset', 'toy_task_2', *common], 1,
                              ["'toy_task_2'", goals]),
        'missing_goal_file': ([MAIN, '--mode', 'finetune', '--dataset', 'toy_task_1', '--save_folder',
                               out + '_g', *common, '--baseline_acc_file', no_goals], 3, [no_goals]),
        'corrupt_goal_file': ([MAIN, '--mode', 'finetune', '--dataset', 'toy_task_1', '--save_folder',
                               out + '_h', *common, '--baseline_acc_file', bad_goals], 1, [bad_goals]),
        'inference_unknown_task': ([MAIN, '--mode', 'inference', '--load_folder', os.path.dirname(good),
                                    '--tasks', 'toy_task_1', 'no_such_task', *common], 1,
                                   ["'no_such_task'", os.path.dirname(good)]),
        'wrong_num_classes': ([MAIN, *finetune, '--dataset', 'toy_task_1', *common, '--num_classes', '7'],
                              1, ["'toy_task_1'", '7']),
        'no_cuda': ([MAIN, *finetune, '--dataset', 'toy_task_1', '--data_root', toy_data,
                     '--device', 'cuda:0'], 1, ['cuda']) if not _has_cuda() else None,
        'prune_without_load_folder': ([MAIN, '--mode', 'prune', '--dataset', 'toy_task_1',
                                       '--save_folder', out], 1, ['--load_folder']),
        'bad_sparsities': ([MAIN, *prune, '--load_folder', os.path.dirname(good),
                            '--initial_sparsity', '0.5', '--target_sparsity', '0.4'], 1, ['--target_sparsity']),
        'unknown_flag': ([MAIN, '--mode', 'finetune', '--bogus_flag'], 1, ['--bogus_flag']),
        'bad_choice': ([MAIN, '--mode', 'widen'], 1, ['widen']),
        'chooser_missing_goal_file': ([CHOOSER, '--task_folder', chooser_task, '--dataset', 'toy_task_1',
                                       '--baseline_acc_file', no_goals], 3, [no_goals]),
    }


def _has_cuda():
    import torch
    return torch.cuda.is_available()


SUBPROCESS_CASES = ['corrupt_checkpoint', 'missing_checkpoint_folder', 'missing_data_folder',
                    'unknown_task', 'missing_goal_file', 'prune_without_load_folder',
                    'chooser_missing_goal_file']


@pytest.fixture(scope='module')
def cli_cases(toy_data, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp('cli_errors'))
    cases = {k: v for k, v in _cases(tmp, toy_data).items() if v is not None}
    env = subprocess_env()
    procs = {name: subprocess.Popen([sys.executable, *cases[name][0]], cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in SUBPROCESS_CASES}
    runs = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        runs[name] = (proc.returncode, stdout, stderr)
    return tmp, cases, runs


def _in_process(argv, capsys):
    """CPG_cifar100_main's __main__ block, in this process: (exit status, stdout, stderr)."""
    assert argv[0] == MAIN
    parser = cli.get_args_parser()
    try:
        args = parser.parse_args(argv[1:])
        cli.check_args(parser, args)
        rc = cli.main(args)
    except SystemExit as exc:
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


CASE_NAMES = ['corrupt_checkpoint', 'truncated_checkpoint', 'missing_checkpoint_folder',
              'missing_data_folder', 'unknown_task', 'task_without_goal', 'missing_goal_file',
              'corrupt_goal_file', 'inference_unknown_task', 'wrong_num_classes', 'no_cuda',
              'prune_without_load_folder', 'bad_sparsities', 'unknown_flag', 'bad_choice',
              'chooser_missing_goal_file']


@pytest.mark.parametrize('case', CASE_NAMES)
def test_error_is_one_clear_line_with_the_right_status(cli_cases, case, capsys):
    tmp, cases, runs = cli_cases
    if case not in cases:
        pytest.skip('CUDA is available here')
    argv, expected_rc, needles = cases[case]
    rc, stdout, stderr = runs[case] if case in runs else _in_process(argv, capsys)
    output = stdout + stderr
    assert rc == expected_rc, f'{case}: exit {rc}, expected {expected_rc}\n{output[-2000:]}'
    assert 'Traceback' not in output, output[-3000:]
    lines = [line for line in output.splitlines() if 'ERROR' in line or 'error:' in line]
    assert len(lines) == 1, f'{case}: expected one error line, got {lines}'
    for needle in needles:
        assert needle in lines[0], f'{case}: {needle!r} missing from {lines[0]!r}'


def test_failed_runs_leave_no_result_to_replay(cli_cases):
    """A failed stage must not leave a result.json (a rerun would replay it) or a checkpoint."""
    tmp, _, runs = cli_cases
    assert runs['corrupt_checkpoint'][0] == 1
    for dirpath, _, files in os.walk(tmp):
        assert 'result.json' not in files, dirpath
        if os.path.basename(dirpath).startswith('out'):
            assert not any(f.endswith('.pth.tar') for f in files), dirpath
