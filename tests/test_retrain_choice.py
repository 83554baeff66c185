"""Retrain must beat the pruned model (a ★ difference, docs/differences.md): the real retrain phase + the chooser.

A retrained epoch must beat both the pruned model's recorded accuracy and the fresh pick mask's
first validation. An unbeatable recorded 1.01 makes "worse" certain; a barely trained task 2 (at
chance) retrained at a normal LR makes "better" certain.
"""
import json
import os
from types import SimpleNamespace

import pytest
import torch

import CPG_cifar100_main as cli
from cpg_testlib import DEVICE, load_tool, toy_stage_args
from utils.cifar100_dataset import CifarTasks
from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

retrain_chooser = load_tool('choose_retrain_or_not')


@pytest.fixture(scope='module')
def task2_model(toy_data, tmp_path_factory):
    """A 2-task checkpoint (task 2 grown so that it owns weights), and the goal file."""
    tmp = tmp_path_factory.mktemp('retrain_choice')
    goals = str(tmp / 'goals.json')
    with open(goals, 'w') as f:
        json.dump({'toy_task_1': '0.0000', 'toy_task_2': '0.0000'}, f)
    t1, t2 = str(tmp / 't1'), str(tmp / 't2')
    assert cli.main(toy_stage_args(toy_data, goals, 'finetune', t1, epochs=1, dataset='toy_task_1')) == 0
    # task 2 barely trained (LR 1e-5): a retrain at a normal LR is sure to beat its accuracy
    assert cli.main(toy_stage_args(toy_data, goals, 'finetune', t2, t1, epochs=1, lr=1e-5,
                                   network_width_multiplier=1.5)) == 0
    return goals, t2


def _task_folder(tmp_path, t2, pruned_accuracy):
    """<task>/gradual_prune/<chosen>/ and the promoted copy in gradual_prune/, as the ratio
    chooser leaves them, with the pruned model's recorded accuracy set to `pruned_accuracy`."""
    model = model_from_checkpoint(load_checkpoint(t2))
    model.tasks[-1]['accuracy'] = pruned_accuracy
    chosen = tmp_path / 'task' / 'gradual_prune' / '0.5' / 'checkpoint.pth.tar'
    save_checkpoint(str(chosen), model, 'custom_vgg_cifar100')
    promoted = tmp_path / 'task' / 'gradual_prune' / 'checkpoint.pth.tar'
    promoted.write_bytes(chosen.read_bytes())
    return tmp_path / 'task', chosen, promoted


@torch.no_grad()
def _test_accuracy(toy_data, path):
    """Top-1 accuracy of the checkpoint's last task on toy_task_2's test split (eval mode)."""
    model = model_from_checkpoint(load_checkpoint(path), DEVICE).eval()
    model.set_task(len(model.tasks))
    args = SimpleNamespace(data_root=toy_data, batch_size=64, val_batch_size=100, workers=0, seed=1,
                           val_fraction=0.0, num_classes=None)
    correct = total = 0
    for images, labels in CifarTasks(args, DEVICE).test_loader('toy_task_2'):
        correct += int((model(images.to(DEVICE)).argmax(1).cpu() == labels).sum())
        total += labels.numel()
    return correct / total


def _retrain_and_choose(toy_data, goals, folder, chosen):
    args = toy_stage_args(toy_data, goals, 'finetune', str(folder / 'retrain'), str(chosen), epochs=2,
                          finetune_again=True, retrain_patience=5, lr=0.05, lr_mask=1e-3)
    assert cli.main(args) == 0
    result = json.loads((folder / 'retrain' / 'result.json').read_text())
    parsed = retrain_chooser.get_args_parser().parse_args(['--task_folder', str(folder)])
    assert retrain_chooser.main(parsed) == 0
    return result


def test_a_worse_retrain_leaves_the_pruned_checkpoint_bytewise(toy_data, task2_model, tmp_path):
    goals, t2 = task2_model
    folder, chosen, promoted = _task_folder(tmp_path, t2, pruned_accuracy=1.01)
    before = promoted.read_bytes()
    # a retrain checkpoint left by an earlier, interrupted attempt must not be promoted either
    stale = folder / 'retrain' / 'checkpoint.pth.tar'
    save_checkpoint(str(stale), model_from_checkpoint(load_checkpoint(t2)), 'custom_vgg_cifar100')
    result = _retrain_and_choose(toy_data, goals, folder, chosen)
    assert result['improved'] is False and result['accuracy'] == 1.01
    assert promoted.read_bytes() == before
    assert json.loads((folder / 'retrain' / 'promoted.json').read_text())['retrained_model_kept'] is False


def test_a_better_retrain_replaces_the_pruned_checkpoint(toy_data, task2_model, tmp_path):
    goals, t2 = task2_model
    folder, chosen, promoted = _task_folder(tmp_path, t2, pruned_accuracy=0.0)
    before = promoted.read_bytes()
    result = _retrain_and_choose(toy_data, goals, folder, chosen)
    # better: strictly above the pruned model's recorded 0.0, and the best epoch the retrain ran
    assert result['improved'] is True and result['accuracy'] > 0.0
    logged = [json.loads(line)['val']['accuracy']
              for line in (folder / 'retrain' / 'log.jsonl').read_text().splitlines()]
    assert len(logged) == 2 and result['accuracy'] == max(logged)
    retrained = folder / 'retrain' / 'checkpoint.pth.tar'
    assert promoted.read_bytes() == retrained.read_bytes() != before
    kept = load_checkpoint(str(promoted))
    assert kept['tasks'][-1]['accuracy'] == result['accuracy']
    # and the promoted model really scores it: task 2 evaluated here on its test split
    assert _test_accuracy(toy_data, str(promoted)) == result['accuracy']
    assert json.loads((folder / 'retrain' / 'promoted.json').read_text())['retrained_model_kept'] is True
    assert os.path.isfile(chosen)  # the retrain's input (the chosen stage) stays
