"""The must-prune rule (spec §3.3) through the real pruning stages of CPG_cifar100_main, in process
on in-memory data (cpg_testlib.TensorTasks).

A task that missed its goal at the maximum width must still free capacity for the tasks to come:
its pruning stops at the required sparsity 1 - round(1 / (remaining + 1), 1), where remaining
= total_num_tasks - tasks learned so far. A stage ending at or beyond it saves its result and
stops the stage loop (exit 6); a stage starting there stops at once and saves nothing.
"""
import json
import os

import pytest

import CPG_cifar100_main as cli
from cpg_testlib import TINY, TensorTasks, stage_args
from utils.checkpoint import load_checkpoint
from utils.context import EXIT_OK, EXIT_STOP_PRUNING

TASK = 'toy_task_1'


def required_sparsity(total_num_tasks, learned):
    """The spec's formula, written out (not utils.phases.must_prune_sparsity)."""
    remaining = total_num_tasks - learned
    return 1.0 - round(1.0 / (remaining + 1), 1)


@pytest.fixture
def phase_a(tmp_path, monkeypatch):
    """Task 1's Phase A at the maximum width 1.5 with a goal it cannot reach (1.0): accepted
    there (exit 0), so the must-prune rule applies to its pruning stages."""
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({TASK: '1.0000'}))
    record = tmp_path / 'record.txt'
    common = dict(dataset=TASK, data_root=str(tmp_path), base_width=TINY, batch_size=32, workers=0,
                  epochs=1, train_acc_gate=0, resume_every_minutes=0, num_classes=5,
                  network_width_multiplier=1.5, max_allowed_network_width_multiplier=1.5,
                  baseline_acc_file=str(goals), pruning_ratio_to_acc_record_file=str(record))
    status = cli.main(stage_args(['--mode', 'finetune'], save_folder=str(tmp_path / 'scratch'),
                                 lr=1e-4, total_num_tasks=2, **common))
    assert status == EXIT_OK
    acc0 = json.loads(record.read_text())['0.0']
    assert acc0 < 1.0   # the goal was missed: the premise of the rule

    def prune(save, load, initial, target, total_num_tasks, **flags):
        args = stage_args(['--mode', 'prune'], save_folder=str(tmp_path / save),
                          load_folder=str(tmp_path / load), lr=1e-3, initial_sparsity=initial,
                          target_sparsity=target, pruning_interval=1, pruning_frequency=1,
                          total_num_tasks=total_num_tasks, **dict(common, **flags))
        return cli.main(args)

    return tmp_path, prune


def _free_share(folder):
    """Free entries / all entries of every masked layer of the checkpoint in `folder`."""
    state = load_checkpoint(folder)['model']
    owners = [v for k, v in state.items() if k.endswith('.owner')]
    assert owners
    return [int((o == 0).sum()) / o.numel() for o in owners], owners


def test_stage_reaching_the_required_sparsity_saves_and_stops(phase_a):
    root, prune = phase_a
    # 2 tasks in all, task 1 learned: one remains -> 1 - round(1/2, 1) = 0.5 must be freed
    assert required_sparsity(2, 1) == 0.5
    assert prune('p0.5', 'scratch', 0.0, 0.5, total_num_tasks=2) == EXIT_STOP_PRUNING
    shares, owners = _free_share(str(root / 'p0.5'))   # the stage's result was saved, at 0.5
    assert all(round(0.5 * o.numel()) == int((o == 0).sum()) for o in owners), shares
    result = json.loads((root / 'p0.5' / 'result.json').read_text())
    assert result['status'] == EXIT_STOP_PRUNING and result['saved'] is True
    assert json.loads((root / 'record.txt').read_text())['0.5'] == round(result['accuracy'], 4)

    # the next stage starts at the required sparsity: it stops before loading anything
    assert prune('p0.6', 'p0.5', 0.5, 0.6, total_num_tasks=2) == EXIT_STOP_PRUNING
    assert not os.path.exists(root / 'p0.6' / 'checkpoint.pth.tar')
    assert '0.6' not in json.loads((root / 'record.txt').read_text())


def test_required_sparsity_follows_the_tasks_still_to_come(phase_a):
    root, prune = phase_a
    # 3 tasks in all: two remain -> 1 - round(1/3, 1) = 0.7; 0.5 is not enough yet
    assert required_sparsity(3, 1) == pytest.approx(0.7)
    assert prune('p0.5', 'scratch', 0.0, 0.5, total_num_tasks=3) == EXIT_OK
    assert prune('p0.7', 'p0.5', 0.5, 0.7, total_num_tasks=3) == EXIT_STOP_PRUNING
    assert os.path.exists(root / 'p0.7' / 'checkpoint.pth.tar')


def test_no_rule_when_the_goal_was_met(phase_a):
    """The same stage with a goal Phase A met: the rule does not apply, pruning continues."""
    root, prune = phase_a
    reachable = root / 'goals_met.json'
    reachable.write_text(json.dumps({TASK: '0.0000'}))
    assert prune('p0.5', 'scratch', 0.0, 0.5, total_num_tasks=2, baseline_acc_file=str(reachable)) == EXIT_OK
    assert prune('p0.6', 'p0.5', 0.5, 0.6, total_num_tasks=2, baseline_acc_file=str(reachable)) == EXIT_OK
