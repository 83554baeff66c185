"""The must-prune rule against the train-accuracy gate, the relative gate, and the choosers, through
the real stages of CPG_cifar100_main in process on in-memory data (cpg_testlib.TensorTasks).

A task accepted at the maximum width without succeeding (goal missed, or train accuracy under the
gate) must free its required share 1 - round(1 / (remaining + 1), 1) whatever the gate says, and
no chooser (the automatic rule, tools/pick_pruning_ratio.py by hand or --auto, --pick last) picks
a sparsity below it. --gate_stops_must_prune restores the original (the gate stops the pruning
first; only a missed goal starts the rule). TRAIN_ACC_GATE=relative:D: Phase A accepts on its goal
alone, and a pruning stage passes while its train accuracy stays within D of Phase A's.
"""
import json
import logging
import os

import pytest

import CPG_cifar100_main as cli
from cpg_testlib import DEVICE, TINY, TensorTasks, load_tool, run_main_block, stage_args
from test_pick_tool import TOOL, make_task
from utils.checkpoint import load_checkpoint
from utils.context import EXIT_OK, EXIT_STOP_PRUNING, EXIT_WIDEN
from utils.errors import CPGError
from utils.sequence import TaskRunner

TASK = 'toy_task_1'
NEVER = 1.0   # an absolute gate no train accuracy exceeds


@pytest.fixture
def stages(tmp_path, monkeypatch):
    """finetune(save, goal, **flags) / prune(save, load, initial, target, **flags): the real stages of
    task 1 in a run of 2 tasks (required sparsity 0.5 under the rule), record.txt in tmp/gp/."""
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    record = tmp_path / 'gp' / 'record.txt'

    def common(goal, **flags):
        goals = tmp_path / f'goals_{goal}.json'
        goals.write_text(json.dumps({TASK: f'{goal:.4f}'}))
        settings = dict(dataset=TASK, data_root=str(tmp_path), base_width=TINY, batch_size=32, workers=0,
                        resume_every_minutes=0, num_classes=5, network_width_multiplier=1.5,
                        max_allowed_network_width_multiplier=1.5, total_num_tasks=2, baseline_acc_file=str(goals),
                        pruning_ratio_to_acc_record_file=str(record), lr=1e-3)
        settings.update(flags)
        return settings

    def finetune(save, goal, epochs=1, **flags):
        return cli.main(stage_args(['--mode', 'finetune'], save_folder=str(tmp_path / save), epochs=epochs,
                                   **common(goal, **flags)))

    def prune(save, load, initial, target, goal, epochs=1, **flags):
        flags = dict(dict(pruning_interval=1, pruning_frequency=1), **flags)
        return cli.main(stage_args(['--mode', 'prune'], save_folder=str(tmp_path / save),
                                   load_folder=str(tmp_path / load), initial_sparsity=initial,
                                   target_sparsity=target, epochs=epochs, **common(goal, **flags)))

    return tmp_path, finetune, prune


def _result(folder):
    return json.loads((folder / 'result.json').read_text())


def _record(root):
    return json.loads((root / 'gp' / 'record.txt').read_text())


def _free_share(folder):
    owners = [v for k, v in load_checkpoint(str(folder))['model'].items() if k.endswith('.owner')]
    return sum(int((o == 0).sum()) for o in owners) / sum(o.numel() for o in owners)


def test_a_failed_gate_does_not_stop_the_must_prune_rule(stages):
    """Goal missed at the maximum width, a gate no stage passes: every stage up to the required 0.5
    saves its model; the one reaching it stops the loop. --gate_stops_must_prune (the original): the
    first stage saves nothing and stops, the task keeps all its weights."""
    root, finetune, prune = stages
    assert finetune('scratch', goal=1.0, train_acc_gate=NEVER) == EXIT_OK   # accepted at max width
    assert prune('p0.3', 'scratch', 0.0, 0.3, goal=1.0, train_acc_gate=NEVER) == EXIT_OK
    assert _result(root / 'p0.3')['saved'] is True and abs(_free_share(root / 'p0.3') - 0.3) < 0.01
    assert prune('p0.6', 'p0.3', 0.3, 0.6, goal=1.0, train_acc_gate=NEVER) == EXIT_STOP_PRUNING
    assert _result(root / 'p0.6')['reason'] == 'must-prune reached'
    assert set(_record(root)) == {'0.0', '0.3', '0.6'}
    assert json.loads((root / 'gp' / 'must_prune.json').read_text())['required_sparsity'] == 0.5

    status = prune('orig0.3', 'scratch', 0.0, 0.3, goal=1.0, train_acc_gate=NEVER, gate_stops_must_prune=True)
    assert status == EXIT_STOP_PRUNING and 'gate' in _result(root / 'orig0.3')['reason']
    assert not os.path.exists(root / 'orig0.3' / 'checkpoint.pth.tar')


def test_goal_met_below_the_gate_at_maximum_width_must_still_prune(stages):
    """Issue 19 item 6: goal met, train accuracy under the gate, at the maximum width: accepted with
    the must-prune rule, which now holds through the gate. The original rule (--gate_stops_must_prune)
    does not start the rule for a met goal, and its gate stops the first stage."""
    root, finetune, prune = stages
    assert finetune('scratch', goal=0.0, train_acc_gate=NEVER) == EXIT_OK
    assert 'must-prune rule applies' in _result(root / 'scratch')['reason']
    assert load_checkpoint(str(root / 'scratch'))['tasks'][0]['below_gate_at_max_width'] is True
    assert prune('p0.5', 'scratch', 0.0, 0.5, goal=0.0, train_acc_gate=NEVER) == EXIT_STOP_PRUNING
    assert _result(root / 'p0.5')['saved'] is True and abs(_free_share(root / 'p0.5') - 0.5) < 0.01

    assert prune('orig', 'scratch', 0.0, 0.5, goal=0.0, train_acc_gate=NEVER,
                 gate_stops_must_prune=True) == EXIT_STOP_PRUNING
    assert not os.path.exists(root / 'orig' / 'checkpoint.pth.tar')
    assert not os.path.exists(root / 'gp' / 'must_prune.json')   # no rule: nothing for the choosers


def test_relative_gate_accepts_phase_a_on_the_goal_alone(stages):
    """Below the maximum width, a met goal under an absolute gate no one passes widens (exit 2);
    under relative:0.02 Phase A accepts it and records its train accuracy for the stages."""
    root, finetune, _ = stages
    below_max = dict(network_width_multiplier=1.0)
    assert finetune('abs', goal=0.0, train_acc_gate=NEVER, **below_max) == EXIT_WIDEN
    assert finetune('rel', goal=0.0, train_acc_gate='relative:0.02', **below_max) == EXIT_OK
    task = load_checkpoint(str(root / 'rel'))['tasks'][0]
    assert task['phase_a_train_accuracy'] == _result(root / 'rel')['train_accuracy']
    assert 'below_gate_at_max_width' not in task


def test_relative_gate_passes_a_stage_within_its_margin_of_phase_a(stages):
    """One-shot pruning to 0.9 at LR 0 costs train accuracy; the stage passes relative:D exactly when
    its train accuracy >= Phase A's - D; under the must-prune rule it saves whatever it is."""
    root, finetune, prune = stages
    assert finetune('scratch', goal=0.0, epochs=4, lr=0.05, train_acc_gate='relative:0.02',
                    network_width_multiplier=1.0) == EXIT_OK
    reference = _result(root / 'scratch')['train_accuracy']
    flags = dict(goal=0.0, lr=0.0, pruning_interval=0, network_width_multiplier=1.0)
    assert prune('tight', 'scratch', 0.0, 0.9, train_acc_gate='relative:0', **flags) == EXIT_STOP_PRUNING
    tight = _result(root / 'tight')
    assert tight['train_accuracy'] < reference and 'Phase A train accuracy' in tight['reason']
    drop = reference - tight['train_accuracy']   # the same stage again: the same train accuracy
    assert prune('narrow', 'scratch', 0.0, 0.9, train_acc_gate=f'relative:{drop - 0.01:.4f}',
                 **flags) == EXIT_STOP_PRUNING
    assert prune('wide', 'scratch', 0.0, 0.9, train_acc_gate=f'relative:{drop + 0.01:.4f}', **flags) == EXIT_OK
    # "within D" includes D itself (accuracies are multiples of 1/64 here: the difference is exact)
    assert prune('exact', 'scratch', 0.0, 0.9, train_acc_gate=f'relative:{drop!r}', **flags) == EXIT_OK
    wide = _result(root / 'wide')
    assert wide['saved'] is True and wide['train_accuracy'] == tight['train_accuracy']

    # at the maximum width with the goal missed: the rule saves the stage the gate would refuse
    assert finetune('max', goal=1.0, epochs=4, lr=0.05, train_acc_gate='relative:0') == EXIT_OK
    status = prune('must', 'max', 0.0, 0.9, goal=1.0, lr=0.0, pruning_interval=0, train_acc_gate='relative:0')
    assert status == EXIT_STOP_PRUNING and _result(root / 'must')['saved'] is True


def _required(folder, value):
    with open(os.path.join(folder, 'gradual_prune', 'must_prune.json'), 'w') as f:
        json.dump({'task': 'cubs', 'required_sparsity': value}, f)


RECORD = {'0.0': 0.70, '0.1': 0.80, '0.3': 0.79, '0.5': 0.60, '0.6': 0.50}


def test_no_chooser_picks_below_the_required_sparsity(tmp_path, capsys):
    """must_prune.json says 0.5: the rule picks 0.5 although 0.1 meets the goal; a hand pick of 0.3
    is refused in one line; --pick last refuses a last stage below it."""
    folder, goals = make_task(tmp_path, record=RECORD, missing=(), goal=0.80)
    _required(folder, 0.5)
    rc, out, err = run_main_block([TOOL, '--task_folder', folder, '--baseline_acc_file', goals, '--ratio', '0.3'],
                                  capsys)
    assert rc == 1 and 'must-prune rule requires' in err and err.count('\n') == 1
    rc, out, err = run_main_block([TOOL, '--task_folder', folder, '--baseline_acc_file', goals, '--auto'], capsys)
    assert rc == 0 and 'picked sparsity 0.6' in out   # the highest >= 0.5 (none meets the goal)
    rc, out, err = run_main_block([TOOL, '--task_folder', folder, '--baseline_acc_file', goals], capsys)
    assert rc == 0 and 'must free 0.5' in out and 'suggests 0.6' in out
    rc, out, err = run_main_block([TOOL, '--task_folder', folder, '--ratio', '0.5'], capsys)
    assert rc == 0 and 'picked sparsity 0.5' in out

    chooser = load_tool('choose_appropriate_pruning_ratio_for_next_task')
    args = chooser.get_args_parser().parse_args(['--task_folder', folder, '--dataset', 'cubs',
                                                 '--baseline_acc_file', goals])
    assert chooser.main(args) == 0
    assert json.loads(open(os.path.join(folder, 'gradual_prune', 'chosen.json')).read())['chosen_pruning_ratio'] == 0.6

    runner = _runner(folder, goals, pick='last')
    runner.args.pruning_ratios = ['0.1', '0.3']   # a last stage below the required 0.5
    with pytest.raises(CPGError, match='must-prune rule requires'):
        runner.pick()


def _runner(folder, goals, **flags):
    """A TaskRunner over the fabricated task folder (only its pick runs)."""
    os.remove(os.path.join(folder, 'gradual_prune', 'chosen.json')) if os.path.exists(
        os.path.join(folder, 'gradual_prune', 'chosen.json')) else None
    args = stage_args(['--mode', 'task'], dataset='cubs', task_folder=folder, baseline_acc_file=goals, **flags)
    return TaskRunner(args, None, logging.getLogger('test'), DEVICE)


def test_the_automatic_pick_accepts_a_stage_within_the_goal_margin(tmp_path):
    """ALLOW_ACC_LOSS unset: --allow_acc_loss is the task's --goal_margin, so a stage Phase A's rule
    would accept (0.3: 0.797 >= 0.80 - 0.005) is picked; an explicit 0 does not pick it."""
    record = {'0.0': 0.80, '0.1': 0.801, '0.3': 0.797, '0.5': 0.70}
    folder, goals = make_task(tmp_path, record=record, missing=(), goal=0.80)
    runner = _runner(folder, goals, goal_margin=0.005, pick='auto', max_allowed_network_width_multiplier=1.5)
    assert runner.args.allow_acc_loss == 0.005
    assert runner.pick()
    assert json.loads(open(os.path.join(folder, 'gradual_prune', 'chosen.json')).read())['chosen_pruning_ratio'] == 0.3
    strict = _runner(folder, goals, goal_margin=0.005, allow_acc_loss=0.0, pick='auto')
    assert strict.pick()
    assert json.loads(open(os.path.join(folder, 'gradual_prune', 'chosen.json')).read())['chosen_pruning_ratio'] == 0.1

    # the hand tool's suggestion follows the margin Phase A accepted with (its result.json)
    with open(os.path.join(folder, 'scratch', 'result.json'), 'w') as f:
        json.dump({'status': 0, 'signature': {'goal_margin': 0.005}}, f)
    tool = load_tool('pick_pruning_ratio')
    args = tool.get_args_parser().parse_args(['--task_folder', folder, '--baseline_acc_file', goals, '--auto'])
    assert tool.main(args) == 0 and args.allow_acc_loss == 0.005
    assert json.loads(open(os.path.join(folder, 'gradual_prune', 'chosen.json')).read())['chosen_pruning_ratio'] == 0.3
