"""Growing (spec §3.6): widening keeps old tasks exact and hands the new capacity to the new task."""
import pytest
import torch

from cpg_testlib import TINY, fixed_inputs, learn_task, task_logits, tiny_model
from models.layers import scaled_width
from models.vgg import FC_WIDTH, VGG16_CFG
from utils.grower import assign_free_capacity, width_for_new_task
from utils.errors import CPGError


@pytest.mark.parametrize('multiplier, expected', [
    (1.0, {64: 64, 128: 128, 256: 256, 512: 512, 4096: 4096}),
    (1.5, {64: 78, 128: 156, 256: 313, 512: 627, 4096: 5016}),
    (2.0, {64: 90, 128: 181, 256: 362, 512: 724, 4096: 5792}),
])
def test_channel_widths_match_the_spec_table(multiplier, expected):
    for channels, width in expected.items():
        assert scaled_width(channels, 1.0, multiplier) == width


def test_layer_shapes_follow_the_multiplier():
    model = tiny_model()
    shapes = model.layer_shapes(1.5)
    convs = [v for v in VGG16_CFG if v != 'M']
    names = [n for n, _ in model.masked_layers()]
    assert len(names) == 15  # 13 convs + 2 FCs
    in_ch = 3
    for name, c in zip(names, convs):
        out = scaled_width(c, TINY, 1.5)
        assert shapes[name] == (out, in_ch)
        in_ch = out
    fc = scaled_width(FC_WIDTH, TINY, 1.5)
    assert shapes[names[13]] == (fc, in_ch)
    assert shapes[names[14]] == (fc, fc)


def test_growth_keeps_old_tasks_and_gives_new_capacity_to_the_new_task():
    x = fixed_inputs()
    model = tiny_model(seed=1)
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.3, seed=1)
    before = task_logits(model, x)
    old = {n: (l.weight.detach().clone(), l.owner.clone()) for n, l in model.masked_layers()}

    task = model.add_task('t2', 5, multiplier=1.5)
    assert task == 2 and model.multiplier == 1.5
    shapes = model.layer_shapes(1.5)
    grown = 0
    for name, layer in model.masked_layers():
        w_old, o_old = old[name]
        out_o, in_o = w_old.shape[:2]
        assert tuple(layer.weight.shape[:2]) == shapes[name]
        grown += tuple(layer.weight.shape[:2]) != (out_o, in_o)
        assert layer.owner.dtype == torch.uint8
        # old block copied exactly, new region free
        assert torch.equal(layer.weight.detach()[:out_o, :in_o], w_old), name
        assert torch.equal(layer.owner[:out_o, :in_o], o_old), name
        outside = torch.ones_like(layer.owner, dtype=torch.bool)
        outside[:out_o, :in_o] = False
        assert not (layer.owner[outside] != 0).any(), name
        assert layer.task_shapes[1] == (out_o, in_o)
        assert layer.task_shapes[2] == shapes[name]
    # int(4 * sqrt(1.5)) == 4: only the 4-channel convs keep their size at this tiny base width
    assert grown == 13
    assert model.masked_layers()[0][1].weight.shape[1] == 3
    assert torch.equal(task_logits(model, x, [1])[1], before[1])

    assign_free_capacity(model, 2)
    for name, layer in model.masked_layers():
        w_old, o_old = old[name]
        out_o, in_o = w_old.shape[:2]
        outside = torch.ones_like(layer.owner, dtype=torch.bool)
        outside[:out_o, :in_o] = False
        assert torch.all(layer.owner[outside] == 2), name
        block = layer.owner[:out_o, :in_o]
        assert torch.equal(block[o_old != 0], o_old[o_old != 0]), name  # old owners unchanged
        assert torch.all(block[o_old == 0] == 2), name                  # released entries -> task 2

    # heads: task 1 keeps its width, task 2's head reads the wider features
    assert model.heads['1'].in_features == scaled_width(FC_WIDTH, TINY, 1.0)
    assert model.heads['2'].in_features == scaled_width(FC_WIDTH, TINY, 1.5)
    learn_task(model, 2, seed=2)
    after = task_logits(model, x)
    assert torch.equal(after[1], before[1])
    assert after[2].shape == (4, 5)


def test_new_task_norms_and_biases_start_from_the_previous_task():
    model = tiny_model(seed=2)
    model.add_task('t1', 5)
    torch.manual_seed(9)
    with torch.no_grad():  # make task 1's per-task state distinctive
        for _, module in model.per_task_modules():
            bn = module.per_task['1']
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        for _, layer in model.masked_layers():
            if layer.has_bias:
                layer.biases['1'].normal_()

    model.add_task('t2', 5)  # same width: exact copies, but independent tensors
    for _, module in model.per_task_modules():
        bn1, bn2 = module.per_task['1'], module.per_task['2']
        for key, value in bn1.state_dict().items():
            assert torch.equal(bn2.state_dict()[key], value), key
        assert bn2.weight.data_ptr() != bn1.weight.data_ptr()
    with torch.no_grad():
        model.per_task_modules()[0][1].per_task['2'].weight.add_(1.0)
    assert not torch.equal(model.per_task_modules()[0][1].per_task['1'].weight,
                           model.per_task_modules()[0][1].per_task['2'].weight)

    model.add_task('t3', 5, multiplier=1.5)  # wider: leading channels copied from task 2, rest fresh
    widths = model.per_task_widths(1.5)
    grown = 0
    for name, module in model.per_task_modules():
        bn2, bn3 = module.per_task['2'], module.per_task['3']
        n2, n3 = bn2.num_features, bn3.num_features
        assert n3 == widths[name] and n3 >= n2
        grown += n3 > n2
        for attr in ('weight', 'bias', 'running_mean', 'running_var'):
            assert torch.equal(getattr(bn3, attr)[:n2], getattr(bn2, attr)), (name, attr)
        assert torch.all(bn3.weight[n2:] == 1) and torch.all(bn3.bias[n2:] == 0)
        assert torch.all(bn3.running_mean[n2:] == 0) and torch.all(bn3.running_var[n2:] == 1)
    assert grown == 11  # all but the two 4-channel BNs (int(4 * sqrt(1.5)) == 4)
    for name, layer in model.masked_layers():
        if layer.has_bias:
            b2, b3 = layer.biases['2'], layer.biases['3']
            assert b3.numel() == layer.weight.shape[0] > b2.numel()
            assert torch.equal(b3[:b2.numel()], b2) and torch.all(b3[b2.numel():] == 0), name


def test_width_only_grows():
    model = tiny_model()
    model.add_task('t1', 5, multiplier=1.5)
    with pytest.raises(ValueError):
        model.widen(1.0)
    # a later task at the default width runs at the (widened) current width
    model.add_task('t2', 5)
    assert model.tasks[1]['multiplier'] == 1.5
    assert width_for_new_task(1.0, 1.5, 1.5) == 1.5  # a rerun restarting at 1.0 continues at 1.5
    assert width_for_new_task(1.5, 1.0, 2.0) == 1.5
    with pytest.raises(CPGError):
        width_for_new_task(2.0, 1.5, 1.5)  # never beyond the maximum
