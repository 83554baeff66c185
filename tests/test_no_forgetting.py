"""Unforgetting, exactly (spec §2.6): learning later tasks never changes an earlier task's outputs."""
import torch

from cpg_testlib import DEVICE, fixed_inputs, learn_task, task_logits, tiny_model
from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from utils.stats import ownership_stats

ARCH = 'custom_vgg_cifar100'


def _assert_same(before, after, tasks):
    for task in tasks:
        assert torch.equal(before[task], after[task]), f'task {task} forgot: outputs changed'


def test_earlier_tasks_bitwise_identical_through_pick_prune_retrain_and_growth(tmp_path):
    x = fixed_inputs()
    model = tiny_model()
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.5, seed=1)
    after1 = task_logits(model, x)

    # task 2: Phase A with picking, prune 60 %, retrain with a fresh pick mask
    model.add_task('t2', 5)
    learn_task(model, 2, sparsity=0.6, retrain=True, seed=2)
    after2 = task_logits(model, x)
    _assert_same(after1, after2, [1])
    stats2 = ownership_stats(model, 2)
    # the scenario must exercise what it claims: task 2 owns weights, picks only part of task 1's
    assert stats2['owned'] > 0 and stats2['free'] > 0
    assert 0 < stats2['picked'] < stats2['earlier']

    # task 3 after growth to 1.5: new capacity, picks over tasks 1 and 2
    model.add_task('t3', 5, multiplier=1.5)
    assert model.multiplier == 1.5
    learn_task(model, 3, sparsity=0.5, retrain=True, seed=3)
    after3 = task_logits(model, x)
    _assert_same(after2, after3, [1, 2])
    assert after3[3].shape == (4, 5)

    # ... and across a checkpoint save/load round trip, for every task
    path = str(tmp_path / 'ckpt.pth.tar')
    save_checkpoint(path, model, ARCH, frozen=True)
    loaded = model_from_checkpoint(load_checkpoint(path), DEVICE)
    _assert_same(after3, task_logits(loaded, x), [1, 2, 3])


def test_later_task_training_in_train_mode_leaves_earlier_task_untouched():
    """Train-mode forwards of the newest task (BN batch statistics) must not touch earlier BN."""
    x = fixed_inputs()
    model = tiny_model(seed=5)
    model.add_task('t1', 5)
    learn_task(model, 1, seed=1)  # no pruning: task 2 gets no free capacity at all
    before = task_logits(model, x)
    bn1 = {k: v.clone() for k, v in model.state_dict().items() if '.per_task.1.' in k}
    model.add_task('t2', 5)
    learn_task(model, 2, seed=2, steps=4)
    assert ownership_stats(model, 2)['owned'] == 0
    for k, v in model.state_dict().items():
        if '.per_task.1.' in k:
            assert torch.equal(v, bn1[k]), k
    _assert_same(before, task_logits(model, x), [1])
