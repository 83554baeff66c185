"""LR schedules and stage selection (spec §8.1): the plateau rule against a hand-made accuracy
sequence, its resume, and best-epoch selection in pruning stages, through the real phases."""
import json
import os

import pytest

import CPG_cifar100_main as cli
from cpg_testlib import TensorTasks, stage_args, TINY
from utils.manager import Manager
from utils.schedules import MilestoneSchedule, PlateauSchedule
from utils.selection import BestEpoch, LastEpoch

# Hand-made validation accuracies. Best so far: 0.50 at epoch 1; epochs 2-6 do not beat it, so
# the 5th stale epoch (6) triggers decay 1; then 0.60 at 7 resets; 8-12 stale -> decay 2 at 12;
# 13-17 stale -> decay 3 at 17; the stage stops before epoch 18.
ACCS = [0.40, 0.50, 0.50, 0.45, 0.30, 0.49, 0.50, 0.60, 0.1, 0.2, 0.3, 0.4, 0.59,
        0.60, 0.55, 0.55, 0.55, 0.55, 0.99, 0.99]
DECAY_EPOCHS = (6, 12, 17)  # the epoch after whose validation each decay happens


def expected_lrs(lr, lr_mask):
    """(lr, lr_mask) the rule gives before each epoch 0..17."""
    out = []
    for epoch in range(18):
        decays = sum(epoch > d for d in DECAY_EPOCHS)
        out.append((lr * 0.1 ** decays, lr_mask * (0.2 if decays else 1.0)))
    return out


def flat(pairs):
    return [value for pair in pairs for value in pair]


def test_plateau_schedule_against_hand_sequence():
    schedule = PlateauSchedule(lr=1e-2, lr_mask=1e-4, epochs=300, patience=5)
    seen = []
    epoch = 0
    while not schedule.finished(epoch):
        seen.append(schedule.lrs(epoch))
        schedule.observe(ACCS[epoch])
        epoch += 1
    assert epoch == 18, 'stops once 3 decays have happened'
    assert flat(seen) == pytest.approx(flat(expected_lrs(1e-2, 1e-4)))
    assert schedule.decays == 3 and schedule.best == 0.60


def test_plateau_schedule_resumes_mid_schedule():
    whole = PlateauSchedule(1e-2, 1e-4, 300)
    for acc in ACCS[:9]:
        whole.observe(acc)
    state = json.loads(json.dumps(whole.state_dict()))  # what the resume file holds
    resumed = PlateauSchedule(1e-2, 1e-4, 300)
    resumed.load_state_dict(state)
    for epoch in range(9, 18):
        assert resumed.lrs(epoch) == whole.lrs(epoch)
        resumed.observe(ACCS[epoch])
        whole.observe(ACCS[epoch])
    assert resumed.state_dict() == whole.state_dict() and resumed.finished(18)


def test_plateau_schedule_stops_at_max_epochs():
    schedule = PlateauSchedule(1e-2, 1e-4, epochs=4)
    assert not schedule.finished(3) and schedule.finished(4)


def test_milestone_schedule():
    schedule = MilestoneSchedule(1e-2, 5e-4, 100, [50, 80], 0.1, [50, 70], [0.2, 0.0])
    assert schedule.lrs(49) == (1e-2, 5e-4)
    assert schedule.lrs(50) == pytest.approx((1e-3, 1e-4))
    assert schedule.lrs(80) == pytest.approx((1e-4, 0.0))
    assert schedule.finished(100) and not schedule.finished(99)


def test_best_epoch_ignores_epochs_before_the_pruning_interval():
    # interval 4: epochs 0-2 are still ramping the sparsity, even when they score higher
    selection = BestEpoch(first_epoch=3, last_epoch=7)
    accs = [0.9, 0.95, 0.8, 0.5, 0.6, 0.55, 0.4, 0.3]
    saved = [e for e, acc in enumerate(accs)
             if selection.observe(e, {'accuracy': 1.0}, {'accuracy': acc})]
    assert saved == [3, 4] and selection.accuracy == 0.6 and selection.epoch == 4


def test_best_epoch_last_epoch_always_qualifies():
    selection = BestEpoch(first_epoch=5, last_epoch=1)  # a stage shorter than the interval
    assert not selection.observe(0, {}, {'accuracy': 0.9})
    assert selection.observe(1, {}, {'accuracy': 0.1}) and selection.accuracy == 0.1


def test_last_epoch_gate():
    selection = LastEpoch(gate=0.95)
    selection.observe(0, {'accuracy': 0.99}, {'accuracy': 0.5})
    selection.observe(1, {'accuracy': 0.90}, {'accuracy': 0.7})
    assert selection.accuracy == 0.7 and not selection.passes_gate()


# ----- through the phases -------------------------------------------------------------------------
def _scripted_validate(accs, counter):
    """Manager.validate returning accs[i] for the i-th validation of the training stage."""
    def validate(self, task=None, loader=None):
        i = counter['n']
        counter['n'] += 1
        return {'loss': 1.0, 'accuracy': accs[min(i, len(accs) - 1)], 'correct': 0, 'total': 1}
    return validate


def _log(folder):
    with open(os.path.join(folder, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def _plateau_args(tmp_path, name, **flags):
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'toy_task_1': '0.1', 'toy_task_2': '0.1'}))
    settings = dict(dataset='toy_task_2', data_root=str(tmp_path), save_folder=str(tmp_path / name),
                    base_width=TINY, batch_size=32, workers=0, baseline_acc_file=str(goals), epochs=300,
                    lr=1e-2, lr_mask=1e-4, lr_schedule='plateau', selection='best', patience=5,
                    resume_every_minutes=0, num_classes=5, load_folder=str(tmp_path / 'task1'),
                    network_width_multiplier=1.5)  # task 1 owns all of width 1.0
    settings.update(flags)
    return stage_args(['--mode', 'finetune'], **{k: v for k, v in settings.items() if v is not None})


def test_phase_a_plateau_decays_stops_and_resumes(tmp_path, monkeypatch):
    """Phase A with the plateau rule: LRs per epoch as the hand sequence says, stop after the 3rd
    decay, best epoch kept; interrupted at epoch 9 and rerun: the same epochs, LRs and result."""
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    task1 = _plateau_args(tmp_path, 'task1', dataset='toy_task_1', epochs=1, load_folder=None,
                           network_width_multiplier=1.0)
    assert cli.main(task1) == 0
    whole = _plateau_args(tmp_path, 'whole')  # task 2 learns a pick mask: its LR decays too
    monkeypatch.setattr(Manager, 'validate', _scripted_validate(ACCS, {'n': 0}))
    assert cli.main(whole) == 0
    lines = _log(whole.save_folder)
    assert [line['epoch'] for line in lines] == list(range(18))
    assert flat((line['lr']['lr'], line['lr']['lr_mask']) for line in lines) == pytest.approx(
        flat(expected_lrs(1e-2, 1e-4)))
    with open(os.path.join(whole.save_folder, 'result.json')) as f:
        result = json.load(f)
    assert result['accuracy'] == 0.60 and result['epoch'] == 7

    resumed = _plateau_args(tmp_path, 'resumed')
    original_train = Manager.train_epoch

    def interrupt_at_9(self, epoch, *a, **k):
        if epoch == 9:
            raise KeyboardInterrupt
        return original_train(self, epoch, *a, **k)

    monkeypatch.setattr(Manager, 'validate', _scripted_validate(ACCS, {'n': 0}))
    monkeypatch.setattr(Manager, 'train_epoch', interrupt_at_9)
    with pytest.raises(KeyboardInterrupt):
        cli.main(resumed)
    monkeypatch.setattr(Manager, 'train_epoch', original_train)
    monkeypatch.setattr(Manager, 'validate', _scripted_validate(ACCS[9:], {'n': 0}))
    assert cli.main(resumed) == 0
    again = _log(resumed.save_folder)
    assert [line['epoch'] for line in again] == list(range(18))
    assert [line['lr'] for line in again] == [line['lr'] for line in lines]
    with open(os.path.join(resumed.save_folder, 'result.json')) as f:
        assert json.load(f)['accuracy'] == 0.60


def test_pruning_stage_keeps_its_best_epoch_after_the_interval(tmp_path, monkeypatch):
    """A real pruning stage with --selection best, interval 2 of 3 epochs: epoch 0 scores highest
    but is still ramping, so the stage keeps epoch 2 (the best of epochs 1-2) and records it."""
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    task1 = _plateau_args(tmp_path, 'task1', dataset='toy_task_1', epochs=1, load_folder=None,
                          network_width_multiplier=1.0)
    assert cli.main(task1) == 0
    record = tmp_path / 'record.txt'
    prune = stage_args(['--mode', 'prune'], dataset='toy_task_1', data_root=str(tmp_path),
                       load_folder=str(tmp_path / 'task1'), save_folder=str(tmp_path / 'prune'),
                       base_width=TINY, batch_size=32, workers=0, epochs=3, lr=1e-3,
                       selection='best', pruning_interval=2, pruning_frequency=1,
                       target_sparsity=0.5, resume_every_minutes=0, num_classes=5,
                       baseline_acc_file=str(tmp_path / 'goals.json'), total_num_tasks=0,
                       pruning_ratio_to_acc_record_file=str(record))
    # validations: before pruning, then epochs 0, 1, 2
    monkeypatch.setattr(Manager, 'validate', _scripted_validate([0.5, 0.95, 0.3, 0.4], {'n': 0}))
    saved, kept = [], []
    original_save, original_keep = cli.engine.PhaseContext.save, cli.engine.PhaseContext.keep_best

    def spy_save(self, model, *a, **k):
        saved.append(model.tasks[0]['accuracy'])
        return original_save(self, model, *a, **k)

    def spy_keep(self, model):
        kept.append(model.tasks[0]['accuracy'])
        return original_keep(self, model)

    monkeypatch.setattr(cli.engine.PhaseContext, 'save', spy_save)
    monkeypatch.setattr(cli.engine.PhaseContext, 'keep_best', spy_keep)
    assert cli.main(prune) == 0
    with open(tmp_path / 'prune' / 'result.json') as f:
        result = json.load(f)
    assert (result['accuracy'], result['epoch']) == (0.4, 2)
    assert kept == [0.3, 0.4]  # epoch 0 (0.95, still ramping) was never a candidate
    assert saved == [0.4]      # and the best is written once, when the stage ends
    assert json.loads(record.read_text()) == {'0.5': 0.4}
