"""Choosing the sparsity to keep (spec §3.4), record.txt (§4.3) and the must-prune rule (§3.3)."""
import json
import os

import pytest

from cpg_testlib import load_tool, tiny_model
from utils.checkpoint import save_checkpoint
from utils.errors import CPGError
from utils.phases import must_prune_sparsity
from utils.records import GoalFileMissing, read_record, reset_record, write_record


chooser = load_tool('choose_appropriate_pruning_ratio_for_next_task')
choose_ratio = chooser.choose_ratio


# ----- the rule --------------------------------------------------------------------------------------
def test_highest_ratio_meeting_the_goal_in_numeric_not_insertion_order():
    # insertion order deliberately scrambled; "0.95" > "0.9" > "0.5" numerically
    record = {'0.9': 0.70, '0.0': 0.80, '0.95': 0.60, '0.5': 0.80, '0.1': 0.82, '0.3': 0.79}
    assert choose_ratio(record, 0.80, 0.0, False) == '0.5'   # acc == goal counts
    assert choose_ratio(record, 0.60, 0.0, False) == '0.95'
    assert choose_ratio(record, 0.81, 0.0, False) == '0.1'
    assert choose_ratio(dict(reversed(list(record.items()))), 0.80, 0.0, False) == '0.5'


def test_allow_acc_loss_tolerance():
    record = {'0.0': 0.80, '0.5': 0.78, '0.9': 0.70}
    assert choose_ratio(record, 0.80, 0.0, False) is None
    assert choose_ratio(record, 0.80, 0.02, False) == '0.5'
    assert choose_ratio(record, 0.80, 0.01, False) is None
    assert choose_ratio(record, 0.80, 0.11, False) == '0.9'


def test_nothing_meets_the_goal_gives_none():
    assert choose_ratio({'0.0': 0.9, '0.1': 0.5, '0.2': 0.4}, 0.95, 0.0, False) is None
    assert choose_ratio({'0.0': 0.9}, 0.5, 0.0, False) is None  # no stage at all
    assert choose_ratio({}, 0.5, 0.0, True) is None


def test_width_limit_exception_takes_the_highest_ratio():
    record = {'0.0': 0.0, '0.5': 0.3, '0.9': 0.1, '0.1': 0.4}
    assert choose_ratio(record, 0.9, 0.0, True) == '0.9'     # at max width, unpruned missed the goal
    assert choose_ratio(record, 0.9, 0.0, False) is None     # below max width: the normal rule
    # at max width but the unpruned model met the goal: the normal rule again
    record = {'0.0': 0.95, '0.5': 0.92, '0.9': 0.5}
    assert choose_ratio(record, 0.9, 0.0, True) == '0.5'


@pytest.mark.parametrize('task, expected', [(k, 0.9) for k in range(1, 15)]
                         + [(15, 0.8), (16, 0.8), (17, 0.8), (18, 0.7), (19, 0.5), (20, 0.0)])
def test_must_prune_sparsity_for_20_tasks(task, expected):
    assert must_prune_sparsity(20, task) == expected


# ----- record.txt ----------------------------------------------------------------------------------
def test_record_has_string_keys_in_numeric_order_and_one_entry_per_ratio(tmp_path):
    path = str(tmp_path / 'gradual_prune' / 'record.txt')
    assert read_record(path) == {}
    for ratio, acc in ((0.95, 0.5), (0.1, 0.68126), (0.9, 0.6), (0.0, 0.7), (0.0, 0.71)):
        write_record(path, ratio, acc)
    with open(path) as f:
        text = f.read()
    raw = json.loads(text)
    assert list(raw) == ['0.0', '0.1', '0.9', '0.95']
    assert raw == {'0.0': 0.71, '0.1': 0.6813, '0.9': 0.6, '0.95': 0.5}
    assert text.count('"0.0"') == 1
    with open(path, 'w') as f:  # keys written by other tools ("0.10") read back normalized
        json.dump({'0.10': 0.5, '0.0': 0.6}, f)
    assert read_record(path) == {'0.1': 0.5, '0.0': 0.6}


# ----- the tool: promotion of the chosen checkpoint ------------------------------------------------
def _task_folder(tmp_path, multiplier, record, goal):
    folder = tmp_path / 'task'
    model = tiny_model()
    model.add_task('t', 5, multiplier=multiplier)
    save_checkpoint(str(folder / 'scratch' / 'checkpoint.pth.tar'), model, 'custom_vgg_cifar100',
                    stage='scratch')
    for key in record:
        if key != '0.0':
            save_checkpoint(str(folder / 'gradual_prune' / key / 'checkpoint.pth.tar'), model,
                            'custom_vgg_cifar100', stage=key)
            (folder / 'gradual_prune' / key / 'result.json').write_text('{"status": 0}\n')
    with open(folder / 'gradual_prune' / 'record.txt', 'w') as f:
        json.dump(record, f)
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'t': f'{goal:.4f}'}))
    return folder, goals


def _run_chooser(folder, goals, *extra):
    args = chooser.get_args_parser().parse_args(
        ['--task_folder', str(folder), '--dataset', 't', '--baseline_acc_file', str(goals), *extra])
    return chooser.main(args)


def _promoted_from(folder):
    import torch
    return torch.load(folder / 'gradual_prune' / 'checkpoint.pth.tar', weights_only=True)['stage']


@pytest.mark.parametrize('multiplier, record, goal, expected', [
    (1.0, {'0.9': 0.70, '0.0': 0.80, '0.5': 0.80}, 0.80, '0.5'),
    (1.0, {'0.0': 0.80, '0.5': 0.70, '0.9': 0.60}, 0.80, None),   # nothing: unpruned scratch model
    (1.5, {'0.0': 0.50, '0.5': 0.40, '0.9': 0.30}, 0.80, '0.9'),  # max width exception
])
def test_tool_promotes_the_chosen_checkpoint(tmp_path, multiplier, record, goal, expected):
    folder, goals = _task_folder(tmp_path, multiplier, record, goal)
    assert _run_chooser(folder, goals) == 0
    assert _promoted_from(folder) == (expected or 'scratch')
    chosen = json.loads((folder / 'gradual_prune' / 'chosen.json').read_text())
    assert chosen['chosen_pruning_ratio'] == (float(expected) if expected else 0.0)
    assert chosen['network_width_multiplier'] == multiplier
    source = folder / ('scratch' if expected is None else f'gradual_prune/{expected}') / 'checkpoint.pth.tar'
    assert chosen['source'] == os.path.relpath(source, folder)   # survives moving the run folder
    promoted = folder / 'gradual_prune' / 'checkpoint.pth.tar'
    assert promoted.read_bytes() == source.read_bytes()
    # nothing is deleted: every stage stays replayable until the script marks the task DONE
    for key in record:
        if key != '0.0':
            assert (folder / 'gradual_prune' / key / 'checkpoint.pth.tar').exists()
    assert (folder / 'scratch' / 'checkpoint.pth.tar').exists()
    # rerun: same decision, and the copy already in place is not written again
    mtime = promoted.stat().st_mtime_ns
    assert _run_chooser(folder, goals) == 0
    assert promoted.stat().st_mtime_ns == mtime and promoted.read_bytes() == source.read_bytes()
    # a fresh Phase A resets the record and the choice (utils.records.reset_record)
    reset_record(str(folder / 'gradual_prune' / 'record.txt'))
    assert not (folder / 'gradual_prune' / 'record.txt').exists()
    assert not (folder / 'gradual_prune' / 'chosen.json').exists()
    assert promoted.exists()  # the promoted model stays until a new choice replaces it


def test_tool_errors(tmp_path):
    folder, goals = _task_folder(tmp_path, 1.0, {'0.0': 0.8, '0.5': 0.8}, 0.8)
    with pytest.raises(GoalFileMissing):
        _run_chooser(folder, tmp_path / 'missing_goals.json')
    os.remove(folder / 'gradual_prune' / '0.5' / 'checkpoint.pth.tar')
    with pytest.raises(CPGError, match='0.5'):  # recorded stage without its checkpoint
        _run_chooser(folder, goals)
