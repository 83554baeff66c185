"""The Manager's own guarantees (utils/manager.py): mixed-precision training keeps every earlier
task bit-exact, weight decay included, and validation leaves BatchNorm's running statistics alone.

AMP runs on the test device: bf16 autocast, and fp16 autocast with a GradScaler of the model's
device type (this torch scales on the CPU too; under CPG_TEST_DEVICE=cuda it is CUDA's).
"""
import logging

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cpg_testlib import (DEVICE, begin_all, end_all, fixed_inputs, learn_task, task_logits, tiny_model,
                         to_device)
from utils.grower import assign_free_capacity
from utils.manager import Manager, build_weight_optimizer
from utils.picker import build_pick_optimizer

LOGGER = logging.getLogger('test_manager')


def _loader(n, seed, shift=0.0, batch=8):
    """Random images of 5 learnable classes (CPU tensors: the Manager moves them)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 5
    images = torch.randn(n, 3, 32, 32, generator=gen) + shift
    images[:, 0] += labels.view(-1, 1, 1).float() * 0.5
    return DataLoader(TensorDataset(images, labels), batch_size=batch)


def _two_learned_tasks():
    """Task 1 pruned to 0.5, task 2 (picking over task 1) pruned to 0.5: free room for task 3."""
    model = tiny_model(seed=5)
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.5, seed=1)
    model.add_task('t2', 5)
    learn_task(model, 2, sparsity=0.5, seed=2)
    return model


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_amp_training_keeps_earlier_tasks_bit_exact_with_weight_decay(amp):
    """Task 3 trains a whole epoch under autocast with a large manual L2 (1e-2): tasks 1 and 2
    give the same logits bit for bit and every weight they own is unchanged, while task 3's own
    weights moved (the steps were taken). fp16 defers the decay past the unscale; it must stay
    gated to task 3's entries there too."""
    x = fixed_inputs()
    model = _two_learned_tasks()
    before = task_logits(model, x)
    layers = [layer for _, layer in model.masked_layers()]
    weights = [layer.weight.detach().clone() for layer in layers]
    owners = [layer.owner.clone() for layer in layers]

    task = model.add_task('t3', 5)
    assign_free_capacity(model, task)
    begin_all(model, task, learn_pick=True, weight_decay=1e-2)
    sgd = build_weight_optimizer(model, task, lr=0.05)
    adam = build_pick_optimizer(model, 0.01)
    manager = Manager(model, task, DEVICE, _loader(64, seed=7), _loader(16, seed=8), LOGGER,
                      show_progress=False, amp=amp)
    if amp == 'fp16':  # the scaler really scales on this device (not a disabled stand-in)
        assert manager.scaler is not None and manager.scaler.is_enabled()
        assert manager.scaler.get_scale() > 1.0
    train, steps = manager.train_epoch(0, [sgd, adam])
    end_all(model)
    assert steps == 8 and torch.isfinite(torch.tensor(train['loss']))

    after = task_logits(model, x)
    for earlier in (1, 2):
        assert torch.equal(after[earlier], before[earlier]), f'task {earlier} changed under --amp {amp}'
    moved = 0
    for layer, weight, owner in zip(layers, weights, owners):
        old = (owner >= 1) & (owner <= 2)
        assert torch.equal(layer.owner[old], owner[old])
        assert torch.equal(layer.weight.detach()[old], weight[old]), f'an earlier task\'s weight moved ({amp})'
        own = layer.owner == task
        moved += int((layer.weight.detach()[own] != weight[own]).sum())
    assert moved > 0, f'task 3 took no step under --amp {amp}'


def test_validate_leaves_batchnorm_running_statistics_unchanged():
    """validate() on a model left in train mode, with inputs far from the statistics BN holds:
    every buffer (running mean/var, batch counts) and parameter is bitwise the same afterwards,
    and the accuracy is the eval-mode accuracy computed here."""
    model = tiny_model(seed=6)
    model.add_task('t1', 5)
    learn_task(model, 1, seed=3)
    model.set_task(1)
    model.train()
    loader = _loader(20, seed=9, shift=3.0, batch=10)   # shifted: train-mode BN would move
    manager = Manager(model, 1, DEVICE, loader, loader, LOGGER, show_progress=False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bn_keys = [k for k in state if k.endswith(('running_mean', 'running_var'))]
    assert bn_keys

    result = manager.validate()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f'validate changed {key}'

    model.eval()
    images, labels = loader.dataset.tensors
    with torch.no_grad():
        logits = model(to_device(images))
    correct = int((logits.argmax(1).cpu() == labels).sum())
    assert (result['correct'], result['total']) == (correct, 20)
    assert result['loss'] == pytest.approx(float(F.cross_entropy(logits.cpu(), labels)), rel=1e-5)
