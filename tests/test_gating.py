"""Gradient gating, picking and releasing (spec §2.3, §2.7, §3.2): who may change what."""
import pytest
import torch
import torch.nn.functional as F

from cpg_testlib import (DEVICE, begin_all, end_all, learn_task, momentum_of, prune_all, tiny_model,
                         to_device, train_steps)
from models.layers import PICK_INIT, PICK_THRESHOLD, MaskedConv2d, MaskedLinear
from utils.grower import assign_free_capacity
from utils.manager import build_weight_optimizer
from utils.picker import build_pick_optimizer


def _two_task_model(seed=0):
    """Task 1 learned and pruned to 50 % (so task 2 gets free capacity), task 2 added and assigned."""
    model = tiny_model(seed)
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.5, seed=1)
    model.add_task('t2', 5)
    assign_free_capacity(model, 2)
    return model


def _layer_input(layer, gen):
    if isinstance(layer, MaskedConv2d):
        return to_device(torch.randn(2, layer.weight.shape[1], 5, 5, generator=gen))
    return to_device(torch.randn(2, layer.weight.shape[1], generator=gen))


def _assert_train_path_equals_eval_path(model, task):
    """The gated train-mode forward of every layer equals the frozen effective-weight forward."""
    gen = torch.Generator().manual_seed(7)
    model.set_task(task)
    for name, layer in model.masked_layers():
        x = _layer_input(layer, gen)
        layer.train()
        assert layer._phase is not None and layer._phase['task'] == task
        with torch.no_grad():
            train_out = layer(x)
        layer.eval()
        with torch.no_grad():
            eval_out = layer(x)
        layer.train()
        assert torch.equal(train_out, eval_out), name


def test_training_changes_only_the_tasks_own_weights():
    model = _two_task_model()
    begin_all(model, 2, learn_pick=True)
    frozen = {k: v.detach().clone() for k, v in model.state_dict().items()
              if '.per_task.1.' in k or k.startswith('heads.1.') or k.endswith('biases.1')}
    assert {'per_task', 'heads', 'biases'} <= {kind for kind in ('per_task', 'heads', 'biases')
                                               if any(kind in k for k in frozen)}
    layers = model.masked_layers()
    weights = {n: l.weight.detach().clone() for n, l in layers}
    owners = {n: l.owner.clone() for n, l in layers}
    sgd = build_weight_optimizer(model, 2, lr=0.05)
    adam = build_pick_optimizer(model, lr_mask=0.01)
    train_steps(model, 2, [sgd, adam], 3, torch.Generator().manual_seed(3))

    changed_own = total_own = 0
    for name, layer in layers:
        own = owners[name] == 2
        assert own.any() and (~own).any(), name  # both kinds must exist for the test to mean anything
        assert torch.equal(layer.owner, owners[name]), f'{name}: training changed ownership'
        w = layer.weight.detach()
        assert torch.equal(w[~own], weights[name][~own]), f'{name}: a weight not owned by task 2 moved'
        diff = w[own] != weights[name][own]
        assert diff.any(), f'{name}: none of task 2 own weights moved'
        changed_own += int(diff.sum())
        total_own += int(own.sum())
        # pick scores over task 2's own entries stay at their init (always pass the threshold)
        if layer.pick_score is not None:
            old = (owners[name] >= 1) & (owners[name] < 2)
            assert torch.all(layer.pick_score.detach()[~old] == PICK_INIT), name
    assert changed_own / total_own > 0.5
    state = model.state_dict()
    for key, value in frozen.items():
        assert torch.equal(state[key], value), f'{key} of task 1 changed while training task 2'


def test_pick_gradient_only_on_earlier_tasks_entries_in_the_model():
    model = _two_task_model(seed=1)
    begin_all(model, 2, learn_pick=True)
    model.set_task(2)
    model.train()
    model.zero_grad(set_to_none=True)  # drop task 1's last gradients
    gen = torch.Generator().manual_seed(0)
    x, y = to_device(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 5, (4,), generator=gen))
    F.cross_entropy(model(x), y).backward()
    with_signal = 0
    for name, layer in model.masked_layers():
        assert layer.pick_score is not None, name
        old = (layer.owner >= 1) & (layer.owner < 2)
        grad = layer.pick_score.grad
        assert grad is not None, name
        assert not (grad[~old] != 0).any(), f'{name}: pick gradient outside task 1 entries'
        with_signal += int((grad[old] != 0).sum())
        wgrad = layer.weight.grad
        assert not (wgrad[layer.owner != 2] != 0).any(), f'{name}: weight gradient on frozen entries'
    assert with_signal > 0


def test_gated_backward_matches_reference_formula():
    """dW = (g + wd W) [M == k],  dP = g W [1 <= M < k]  with g the gradient of W_eff = W B(P)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    for layer, x in ((MaskedConv2d(3, 6, 3, padding=1), torch.randn(2, 3, 6, 6, generator=gen)),
                     (MaskedLinear(7, 5, std=0.5), torch.randn(3, 7, generator=gen))):
        layer, x = layer.to(DEVICE), to_device(x)
        out_f, in_f = layer.weight.shape[:2]
        layer.add_task(1, out_f, in_f)
        layer.add_task(2, out_f, in_f)
        with torch.no_grad():
            layer.owner.copy_(to_device(torch.randint(0, 3, layer.owner.shape, generator=gen).to(torch.uint8)))
        wd = 0.01
        layer.begin_phase(2, learn_pick=True, fixed_pick=False, weight_decay=wd)
        own = layer.owner == 2
        old = layer.owner == 1
        assert torch.all(layer.weight.detach()[layer.owner == 0] == 0)  # free entries hold zeros
        with torch.no_grad():  # scores on old entries spread around the threshold
            layer.pick_score[old] = to_device(torch.rand(int(old.sum()), generator=gen)) * 2 * PICK_THRESHOLD
        picked = layer.pick_score.detach() > PICK_THRESHOLD
        assert (old & picked).any() and (old & ~picked).any()
        layer.active_task = 2
        layer.train()
        r = to_device(torch.randn(layer(x).shape, generator=gen))
        (layer(x) * r).sum().backward()

        weight = layer.weight.detach()
        w_eff = (weight * picked).requires_grad_()
        (layer._op(x, w_eff, layer.biases['2'] if layer.has_bias else None) * r).sum().backward()
        g = w_eff.grad
        torch.testing.assert_close(layer.weight.grad, (g + wd * weight) * own, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(layer.pick_score.grad, g * weight * old, rtol=1e-5, atol=1e-7)
        assert not (layer.weight.grad[~own] != 0).any()
        assert not (layer.pick_score.grad[~old] != 0).any()
        assert (layer.pick_score.grad[old] != 0).any()

        # the gated train-mode forward equals the eval-mode effective weight forward
        with torch.no_grad():
            train_out = layer(x)
            layer.eval()
            eval_out = layer(x)
        assert torch.equal(train_out, eval_out)
        assert torch.equal(layer.effective_weight(2), weight * picked)


@pytest.mark.parametrize('weight_format', [torch.contiguous_format, torch.channels_last])
def test_the_gate_holds_for_a_gradient_laid_out_unlike_the_weight(weight_format):
    """CHANNELS_LAST=1 can hand backward a gradient whose layout differs from the weight's (the
    weight is copied then): dW is still exactly 0 on every entry the task does not own, even where
    the gradient is NaN, and g + wd W on its own entries."""
    gen = torch.Generator().manual_seed(4)
    layer = MaskedConv2d(3, 6, 3, padding=1).to(DEVICE)
    layer.add_task(1, 6, 3)
    layer.add_task(2, 6, 3)
    with torch.no_grad():
        layer.owner.copy_(to_device(torch.randint(0, 3, layer.owner.shape, generator=gen).to(torch.uint8)))
        layer.weight.mul_((layer.owner != 0).float())   # free entries hold zeros
    layer.weight.data = layer.weight.data.contiguous(memory_format=weight_format)
    wd = 0.01
    layer.begin_phase(2, learn_pick=True, fixed_pick=False, weight_decay=wd)
    layer.active_task = 2
    layer.train()
    seen, op = {}, layer._op

    def spy(x, w_eff, bias):   # the effective weight the gated forward hands the convolution
        seen['w_eff'] = w_eff
        return op(x, w_eff, bias)
    layer._op = spy
    layer(to_device(torch.randn(2, 3, 5, 5, generator=gen)))
    other = torch.channels_last if weight_format == torch.contiguous_format else torch.contiguous_format
    g = to_device(torch.randn(layer.weight.shape, generator=gen)).contiguous(memory_format=other)
    own = layer.owner == 2
    g[~own & (layer.owner == 1)] = float('nan')   # a diverging step's gradient on earlier tasks' entries
    assert g.stride() != layer.weight.stride()
    (dw,) = torch.autograd.grad(seen['w_eff'], layer.weight, g)
    weight = layer.weight.detach()
    assert torch.equal(dw[~own], torch.zeros_like(dw[~own]))
    torch.testing.assert_close(dw[own], (g + wd * weight)[own])


def test_gated_forward_equals_effective_weight_in_every_phase():
    model = tiny_model(seed=2)
    model.add_task('t1', 5)
    assign_free_capacity(model, 1)
    begin_all(model, 1)  # task 1: owns everything, no pick
    sgd = build_weight_optimizer(model, 1, lr=0.05)
    train_steps(model, 1, [sgd], 2, torch.Generator().manual_seed(0))
    _assert_train_path_equals_eval_path(model, 1)
    end_all(model)
    prune_all(model, 1, 0.5)  # frees half of every layer for task 2

    model.add_task('t2', 5)
    assign_free_capacity(model, 2)
    begin_all(model, 2, learn_pick=True)  # Phase A with a learned pick
    sgd = build_weight_optimizer(model, 2, lr=0.05)
    adam = build_pick_optimizer(model, lr_mask=0.01)
    train_steps(model, 2, [sgd, adam], 3, torch.Generator().manual_seed(1))
    unpicked = sum(int(((l.pick_score <= PICK_THRESHOLD) & (l.owner == 1)).sum())
                   for _, l in model.masked_layers())
    assert unpicked > 0  # some picks flipped off, so the mask really matters
    _assert_train_path_equals_eval_path(model, 2)
    end_all(model)

    begin_all(model, 2, fixed_pick=True)  # Phase B: stored binary pick, weights released
    sgd = build_weight_optimizer(model, 2, lr=0.05)
    train_steps(model, 2, [sgd], 1, torch.Generator().manual_seed(2))
    prune_all(model, 2, 0.5, sgd)
    _assert_train_path_equals_eval_path(model, 2)


def test_released_weights_leave_the_forward_pass_and_become_free_for_the_next_task():
    model = _two_task_model(seed=3)
    begin_all(model, 2, learn_pick=True)
    sgd = build_weight_optimizer(model, 2, lr=0.05)
    train_steps(model, 2, [sgd, build_pick_optimizer(model, 0.01)], 2, torch.Generator().manual_seed(0))
    end_all(model)
    begin_all(model, 2, fixed_pick=True)
    sgd = build_weight_optimizer(model, 2, lr=0.05)
    train_steps(model, 2, [sgd], 2, torch.Generator().manual_seed(1))  # momentum buffers now nonzero
    layers = model.masked_layers()
    before_w = {n: l.weight.detach().clone() for n, l in layers}
    before_o = {n: l.owner.clone() for n, l in layers}
    for name, layer in layers:
        assert momentum_of(sgd, layer.weight).abs().sum() > 0, name

    prune_all(model, 2, 0.5, sgd)
    released = {}
    for name, layer in layers:
        rel = (before_o[name] == 2) & (layer.owner == 0)
        survivors = layer.owner == 2
        assert rel.any() and survivors.any(), name
        released[name] = rel
        # only task 2 entries were released; nothing else changed owner
        assert torch.equal(layer.owner[~rel], before_o[name][~rel]), name
        # the smallest magnitudes went
        assert before_w[name][rel].abs().max() <= before_w[name][survivors].abs().min(), name
        assert not (layer.weight.detach()[rel] != 0).any(), f'{name}: released weight not zeroed'
        assert not (momentum_of(sgd, layer.weight)[rel] != 0).any(), f'{name}: momentum kept'
        layer.eval()
        assert not (layer.effective_weight(2)[rel] != 0).any(), name
        layer.train()

    # the released entries stay exactly 0 while the stage goes on (no gradient, no momentum)
    train_steps(model, 2, [sgd], 2, torch.Generator().manual_seed(2))
    for name, layer in layers:
        assert not (layer.weight.detach()[released[name]] != 0).any(), name
        assert torch.equal(layer.owner == 0, released[name] | (before_o[name] == 0)), name
    end_all(model)

    model.add_task('t3', 5)
    owners_12 = {n: l.owner.clone() for n, l in layers}
    assign_free_capacity(model, 3)
    for name, layer in layers:
        assert torch.all(layer.owner[released[name]] == 3), name
        assert not (layer.owner == 0).any(), name
        kept = owners_12[name] != 0
        assert torch.equal(layer.owner[kept], owners_12[name][kept]), name
