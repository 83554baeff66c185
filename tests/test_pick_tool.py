"""tools/pick_pruning_ratio.py: the hand pick of the sparsity a task keeps (experiment 2's workflow).

The tool runs as a user runs it, on a task folder fabricated with real (tiny) checkpoints: in this
process through its __main__ block (the fast loop), and as a subprocess (`slow`).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from cpg_testlib import REPO, load_tool, run_main_block, subprocess_env, tiny_model, tree_bytes
from utils.checkpoint import read_sidecar, save_checkpoint
from utils.ratio_choice import choose_ratio, format_record_table

TOOL = os.path.join(REPO, 'tools', 'pick_pruning_ratio.py')
# 0.95 is recorded, but its checkpoint is missing (e.g. the stage files were dropped)
RECORD = {'0.0': 0.80, '0.1': 0.812, '0.2': 0.805, '0.3': 0.80, '0.4': 0.79, '0.5': 0.75, '0.95': 0.5}
HOW = [pytest.param('in_process', id='in_process'),
       pytest.param('subprocess', id='subprocess', marks=pytest.mark.slow)]


def make_task(root, name='cubs', multiplier=1.0, record=RECORD, missing=('0.95',), goal=0.80):
    """<root>/<name>/{scratch,gradual_prune/<s>}/checkpoint.pth.tar + record.txt, and a goal file."""
    folder = os.path.join(str(root), name)
    model = tiny_model()
    model.add_task(name, 5, multiplier=multiplier)
    save_checkpoint(os.path.join(folder, 'scratch', 'checkpoint.pth.tar'), model, 'custom_vgg_cifar100',
                    stage='scratch')
    for key in record:
        if key != '0.0' and key not in missing:
            save_checkpoint(os.path.join(folder, 'gradual_prune', key, 'checkpoint.pth.tar'), model,
                            'custom_vgg_cifar100', stage=key)
    os.makedirs(os.path.join(folder, 'gradual_prune'), exist_ok=True)
    with open(os.path.join(folder, 'gradual_prune', 'record.txt'), 'w') as f:
        json.dump(record, f)
    goals = os.path.join(str(root), 'goals.json')
    with open(goals, 'w') as f:
        json.dump({name: f'{goal:.4f}'}, f)
    return folder, goals


def run_tool(argv, how, capsys=None):
    """(exit status, stdout, stderr) of `python tools/pick_pruning_ratio.py ARGV`, run from the repo."""
    if how == 'subprocess':
        proc = subprocess.run([sys.executable, TOOL, *argv], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr
    return run_main_block([TOOL, *argv], capsys)


def checkpoint_id(path):
    return read_sidecar(path)['checkpoint_id']


def stage(folder, key):
    sub = 'scratch' if float(key) == 0 else os.path.join('gradual_prune', key)
    return os.path.join(folder, sub, 'checkpoint.pth.tar')


def rel(folder, key):
    """chosen.json's `source` of `key`: the stage checkpoint relative to the task folder."""
    return os.path.relpath(stage(folder, key), folder)


def promoted(folder):
    return os.path.join(folder, 'gradual_prune', 'checkpoint.pth.tar')


def chosen_json(folder):
    with open(os.path.join(folder, 'gradual_prune', 'chosen.json')) as f:
        return json.load(f)


def row(stdout, key):
    """The table row of sparsity `key`."""
    rows = [line for line in stdout.splitlines() if line.split()[:1] == [key]]
    assert len(rows) == 1, stdout
    return rows[0]


# ----- the table ----------------------------------------------------------------------------------
@pytest.mark.parametrize('how', HOW)
def test_table_rows_goal_and_suggestion(tmp_path, how, capsys):
    folder, goals = make_task(tmp_path)
    before = tree_bytes(folder)
    rc, out, err = run_tool(['--task_folder', folder, '--baseline_acc_file', goals], how, capsys)
    assert rc == 0 and err == '', err
    keys = [line.split()[0] for line in out.splitlines() if line.split()[:1] and line.split()[0][0].isdigit()]
    assert keys == ['0.0', '0.1', '0.2', '0.3', '0.4', '0.5', '0.95']  # numeric order
    assert row(out, '0.1').split()[:4] == ['0.1', '81.20%', '+1.20', 'yes']
    assert row(out, '0.4').split()[:4] == ['0.4', '79.00%', '-1.00', 'yes']
    assert row(out, '0.95').split()[:4] == ['0.95', '50.00%', '-30.00', 'missing']
    # the rule: the highest sparsity with accuracy >= goal (0.3 meets 80.00% exactly)
    assert row(out, '0.3').endswith('<- suggested')
    assert out.count('<- suggested') == 1
    assert 'goal 80.00%' in out and 'suggests 0.3' in out
    assert f'pick it: python tools/pick_pruning_ratio.py --task_folder {folder} ' \
           f'--baseline_acc_file {goals} --ratio 0.3' in out
    assert 'chosen' not in out  # nothing chosen yet
    assert tree_bytes(folder) == before  # printing changes nothing


@pytest.mark.parametrize('how', HOW)
def test_table_without_goal_says_so(tmp_path, how, capsys):
    folder, goals = make_task(tmp_path)
    rc, out, err = run_tool(['--task_folder', folder], how, capsys)
    assert rc == 0 and err == '', err
    assert row(out, '0.4').split() == ['0.4', '79.00%', 'yes']  # no goal column
    assert 'vs goal' not in out and 'suggested' not in out.replace('no suggestion', '')
    assert 'no accuracy goal (no --baseline_acc_file given)' in out
    assert f'--task_folder {folder} --ratio <sparsity>' in out
    # a goal file without this task: the same table, and the reason
    rc, out, err = run_tool(['--task_folder', folder, '--baseline_acc_file', goals, '--dataset', 'other'],
                            how, capsys)
    assert rc == 0 and err == '', err
    assert "no accuracy goal (task 'other' has no accuracy goal in" in out


def test_format_record_table_marks_suggestion_and_choice():
    record = {'0.5': 0.7, '0.0': 0.8, '0.1': 0.79}
    lines = format_record_table(record, 0.75, '0.1', {'chosen_pruning_ratio': 0.5, 'picked_by': 'hand'},
                                {'0.0': True, '0.1': True, '0.5': False})
    assert lines[0].split() == ['sparsity', 'accuracy', 'vs', 'goal', 'checkpoint']
    assert [line.split()[0] for line in lines[1:]] == ['0.0', '0.1', '0.5']
    assert lines[2].endswith('<- suggested') and lines[3].endswith('<- chosen (hand)')
    assert lines[3].split()[:4] == ['0.5', '70.00%', '-5.00', 'missing']
    # nothing qualifies: the unpruned row is the suggestion; one row can carry both marks
    lines = format_record_table(record, 0.9, None, {'chosen_pruning_ratio': 0.0, 'picked_by': 'auto'})
    assert lines[1].endswith('<- suggested, chosen (auto)')
    assert format_record_table(record)[0].split() == ['sparsity', 'accuracy']


# ----- picking -----------------------------------------------------------------------------------
@pytest.mark.parametrize('how', HOW)
def test_pick_by_hand_then_repick(tmp_path, how, capsys):
    folder, goals = make_task(tmp_path)
    stage_ids = {key: checkpoint_id(stage(folder, key)) for key in RECORD if key != '0.95'}
    log = os.path.join(folder, 'train.log')
    rc, out, err = run_tool(['--task_folder', folder, '--ratio', '0.4', '--baseline_acc_file', goals,
                             '--log_path', log], how, capsys)
    assert rc == 0 and err == '', err
    assert len(out.splitlines()) == 1, out
    with open(log) as f:
        assert f.read().rstrip('\n').endswith(' - picker - INFO - ' + out.rstrip('\n'))
    for part in ('picked sparsity 0.4 for cubs (by hand)', 'accuracy 79.00%', 'goal 80.00%',
                 f'the next task can now load {os.path.join(folder, "gradual_prune")}', 'TARGET_TASK_ID='):
        assert part in out, out
    assert checkpoint_id(promoted(folder)) == stage_ids['0.4']
    with open(promoted(folder), 'rb') as a, open(stage(folder, '0.4'), 'rb') as b:
        assert a.read() == b.read()
    assert chosen_json(folder) == {'task': 'cubs', 'chosen_pruning_ratio': 0.4, 'accuracy': 0.79, 'goal': 0.8,
                                   'network_width_multiplier': 1.0, 'source': rel(folder, '0.4'),
                                   'picked_by': 'hand'}

    # the table now marks the choice (and still the rule's suggestion)
    rc, out, _ = run_tool(['--task_folder', folder, '--baseline_acc_file', goals], how, capsys)
    assert rc == 0 and row(out, '0.4').endswith('<- chosen (hand)') and row(out, '0.3').endswith('<- suggested')

    # the same pick again: nothing is copied
    mtime = os.stat(promoted(folder)).st_mtime_ns
    rc, out, _ = run_tool(['--task_folder', folder, '--ratio', '0.40'], how, capsys)
    assert rc == 0 and '(already in place)' in out and 'no goal given' in out
    assert os.stat(promoted(folder)).st_mtime_ns == mtime

    # repick: the unpruned model replaces the promoted file and chosen.json; nothing is deleted.
    # The task is DONE here: tasks learned after it keep the old choice, and the tool says so.
    open(os.path.join(folder, 'DONE'), 'w').close()
    rc, out, err = run_tool(['--task_folder', folder, '--ratio', '0'], how, capsys)
    assert rc == 0 and err == '' and 'picked sparsity 0.0 for cubs' in out and 'accuracy 80.00%' in out
    assert out.splitlines()[1].startswith('note: cubs is marked DONE')
    assert checkpoint_id(promoted(folder)) == stage_ids['0.0']
    chosen = chosen_json(folder)
    assert (chosen['chosen_pruning_ratio'], chosen['source'], chosen['goal']) == (0.0, rel(folder, '0.0'), None)
    assert {key: checkpoint_id(stage(folder, key)) for key in stage_ids} == stage_ids
    assert not [name for name in os.listdir(os.path.join(folder, 'gradual_prune')) if name.endswith('.tmp')]


@pytest.mark.parametrize('how', HOW)
def test_pick_records_the_source_relative_to_the_task_folder(tmp_path, how, capsys, monkeypatch):
    """chosen.json['source'] is relative to the task folder, whatever the working directory: a
    whole run folder can be moved (the bash script joins it with the task folder)."""
    folder, _ = make_task(tmp_path)
    relative = os.path.relpath(folder, REPO)
    if how == 'in_process':
        monkeypatch.chdir(REPO)
    rc, out, err = run_tool(['--task_folder', relative, '--ratio', '0.2'], how, capsys)
    assert rc == 0, err
    assert chosen_json(folder)['source'] == os.path.join('gradual_prune', '0.2', 'checkpoint.pth.tar')
    assert checkpoint_id(promoted(folder)) == checkpoint_id(stage(folder, '0.2'))
    moved = tmp_path / 'moved'
    shutil.move(str(tmp_path / 'cubs'), str(moved))   # the same pick from the moved folder: in place
    rc, out, err = run_tool(['--task_folder', str(moved), '--ratio', '0.2'], how, capsys)
    assert rc == 0 and '(already in place)' in out, err


# ----- --auto: experiment 1's rule, the same choice as the old chooser ----------------------------------
AUTO_CASES = [
    pytest.param(1.0, {'0.9': 0.70, '0.0': 0.80, '0.5': 0.80}, 0.80, [], '0.5', id='highest_meeting_goal'),
    pytest.param(1.0, {'0.0': 0.80, '0.5': 0.70, '0.9': 0.60}, 0.80, [], None, id='nothing_qualifies'),
    pytest.param(1.5, {'0.0': 0.50, '0.5': 0.40, '0.9': 0.30}, 0.80, [], '0.9', id='max_width'),
    pytest.param(1.5, {'0.0': 0.50, '0.5': 0.40, '0.9': 0.30}, 0.80,
                 ['--max_allowed_network_width_multiplier', '2.0'], None, id='below_max_width'),
    pytest.param(1.0, {'0.0': 0.80, '0.5': 0.78, '0.9': 0.70}, 0.80, ['--allow_acc_loss', '0.02'], '0.5',
                 id='allow_acc_loss'),
]


@pytest.mark.parametrize('multiplier, record, goal, flags, expected, how',
                         [pytest.param(*case.values, 'in_process', id=case.id) for case in AUTO_CASES]
                         + [pytest.param(*case.values, 'subprocess', id=f'{case.id}-subprocess',
                                         marks=pytest.mark.slow)
                            for case in AUTO_CASES if case.id in ('highest_meeting_goal', 'max_width')])
def test_auto_equals_the_old_chooser(tmp_path, how, capsys, multiplier, record, goal, flags, expected):
    folder, goals = make_task(tmp_path / 'a', multiplier=multiplier, record=record, missing=(), goal=goal)
    twin = str(tmp_path / 'b' / 'cubs')
    shutil.copytree(folder, twin)  # the same checkpoints (same ids) for the old chooser
    chooser = load_tool('choose_appropriate_pruning_ratio_for_next_task')
    args = chooser.get_args_parser().parse_args(
        ['--task_folder', twin, '--dataset', 'cubs', '--baseline_acc_file', goals, *flags])
    assert chooser.main(args) == 0
    assert chooser.choose_ratio is choose_ratio  # the rule exists once

    rc, out, err = run_tool(['--task_folder', folder, '--baseline_acc_file', goals, '--auto', *flags], how, capsys)
    assert rc == 0 and err == '', err
    assert f'picked sparsity {expected or "0.0"} for cubs (automatic rule)' in out
    mine, old = chosen_json(folder), chosen_json(twin)
    assert mine['source'] == rel(folder, expected or '0.0')
    assert mine == old and mine['picked_by'] == 'auto'
    assert checkpoint_id(promoted(folder)) == checkpoint_id(promoted(twin)) \
        == checkpoint_id(stage(folder, expected or '0.0'))


# ----- refusals: one stderr line, the exit status, nothing changed ---------------------------------------
def _refusal_cases(root):
    folder, goals = make_task(root)
    empty = os.path.join(str(root), 'empty_task')
    os.makedirs(os.path.join(empty, 'scratch'))
    record_path = os.path.join(folder, 'gradual_prune', 'record.txt')
    missing_goals = os.path.join(str(root), 'no_goals.json')
    return folder, {
        'absent_ratio': (['--task_folder', folder, '--ratio', '0.6'], 1,
                         [f'sparsity 0.6 is not in {record_path}', '(recorded: 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.95)',
                          f'print the table with: python tools/pick_pruning_ratio.py --task_folder {folder}']),
        'missing_checkpoint': (['--task_folder', folder, '--ratio', '0.95'], 1,
                               [f'its checkpoint {stage(folder, "0.95")} is missing',
                                'rerun that pruning stage', 'CPG script']),
        'missing_record': (['--task_folder', empty, '--ratio', '0.4'], 1,
                           [f'no pruning record at {os.path.join(empty, "gradual_prune", "record.txt")}',
                            "run the task's CPG script with TARGET_TASK_ID"]),
        'missing_record_table': (['--task_folder', empty], 1, ['no pruning record at', 'TARGET_TASK_ID']),
        'missing_task_folder': (['--task_folder', os.path.join(str(root), 'nope'), '--ratio', '0.4'], 1,
                                [f'task folder {os.path.join(str(root), "nope")} does not exist',
                                 'TARGET_TASK_ID']),
        'bad_ratio': (['--task_folder', folder, '--ratio', 'forty'], 1, ["--ratio 'forty' is not a number"]),
        'nan_ratio': (['--task_folder', folder, '--ratio', 'nan'], 1, ["--ratio 'nan' is not a number"]),
        'ratio_and_auto': (['--task_folder', folder, '--ratio', '0.4', '--auto', '--baseline_acc_file', goals], 1,
                           ['error: argument --auto: not allowed with argument --ratio']),
        'auto_goal_file_missing': (['--task_folder', folder, '--auto', '--baseline_acc_file', missing_goals], 3,
                                   [f'accuracy goal file not found: {missing_goals}']),
        'auto_without_goal_file': (['--task_folder', folder, '--auto'], 1,
                                   ['--auto needs the accuracy goal: pass --baseline_acc_file']),
        'auto_task_without_goal': (['--task_folder', folder, '--auto', '--baseline_acc_file', goals,
                                    '--dataset', 'other'], 1, ["task 'other' has no accuracy goal in"]),
    }


REFUSALS = ['absent_ratio', 'missing_checkpoint', 'missing_record', 'missing_record_table',
            'missing_task_folder', 'bad_ratio', 'nan_ratio', 'ratio_and_auto', 'auto_goal_file_missing',
            'auto_without_goal_file', 'auto_task_without_goal']


# as real processes too: one per way an error leaves the tool (CPGError in main, exit 3, argparse)
SUBPROCESS_REFUSALS = ['absent_ratio', 'missing_checkpoint', 'bad_ratio', 'ratio_and_auto', 'auto_goal_file_missing']


@pytest.fixture(scope='module')
def refusal_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp('pick_refusals')
    folder, cases = _refusal_cases(root)
    return root, folder, cases


@pytest.fixture(scope='module')
def refusal_subprocess_runs(refusal_cases):
    """Every refusal as a real process, all started at once: name -> (exit, stdout, stderr)."""
    root, _, cases = refusal_cases
    before = tree_bytes(str(root))
    procs = {name: subprocess.Popen([sys.executable, TOOL, *cases[name][0]], cwd=REPO, env=subprocess_env(),
                                    text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in SUBPROCESS_REFUSALS}
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        runs[name] = (proc.returncode, out, err)
    assert tree_bytes(str(root)) == before  # no refusal wrote anything
    return runs


@pytest.mark.parametrize('case, how', [pytest.param(name, 'in_process', id=name) for name in REFUSALS]
                         + [pytest.param(name, 'subprocess', id=f'{name}-subprocess', marks=pytest.mark.slow)
                            for name in SUBPROCESS_REFUSALS])
def test_refusal_is_one_stderr_line(refusal_cases, case, how, capsys, request):
    root, _, cases = refusal_cases
    argv, expected_rc, needles = cases[case]
    if how == 'subprocess':
        rc, out, err = request.getfixturevalue('refusal_subprocess_runs')[case]
    else:
        before = tree_bytes(str(root))
        rc, out, err = run_tool(argv, how, capsys)
        assert tree_bytes(str(root)) == before
    assert rc == expected_rc, f'{case}: exit {rc}, expected {expected_rc}\n{out}{err}'
    assert out == '' and len(err.splitlines()) == 1 and 'error: ' in err, (out, err)
    for needle in needles:
        assert needle in err, f'{case}: {needle!r} missing from {err!r}'
