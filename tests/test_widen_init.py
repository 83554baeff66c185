"""Growing initializes the new entries of every architecture in the registry (spec §3.6): the wider
layer is drawn from the architecture's own init and the old tensor is copied into its leading
block, so every new entry is a fresh draw (never 0) with the init's spread, and free (owner 0).

The expected spreads are the spec's, written out here (not read from the layers):
  VGG16-BN  convs Kaiming-normal (fan-out, ReLU gain): std sqrt(2 / (out * kh * kw)); FCs N(0, 0.01)
            at the paper's width, 0.01 / sqrt(base_width) at a reduced one (models/vgg.py keeps
            std * sqrt(fan_in) as at full width)
  ResNet-50 convs N(0, 0.001)
  SphereNet convs Kaiming-normal (fan-out): std sqrt(2 / (out * kh * kw))
A progressive network has no shared layers to widen and refuses another width.
"""
import math

import pytest
import torch

from cpg_testlib import DEVICE
from models import MODELS, MaskedConv2d, MaskedLinear, build_model

KAIMING_FAN_OUT = 'kaiming_fan_out'
BASE_WIDTH = 0.25
SPEC_INIT = {  # arch -> {layer type: 'kaiming_fan_out' or a fixed std}
    'custom_vgg_cifar100': {MaskedConv2d: KAIMING_FAN_OUT,
                            MaskedLinear: 0.01 / math.sqrt(BASE_WIDTH)},             # §5.1
    'resnet50': {MaskedConv2d: 0.001},                                              # §5.2
    'spherenet20': {MaskedConv2d: KAIMING_FAN_OUT},                                 # §5.3
}
NO_SHARED_LAYERS = {'progressive_resnet50'}   # a column per task instead of growing
MIN_ENTRIES_FOR_STD = 400   # the sample std of n draws is within 15% of sigma by > 4 sigma of its own


def _expected_std(rule, shape):
    if rule == KAIMING_FAN_OUT:
        fan_out = shape[0] * math.prod(shape[2:])
        return math.sqrt(2.0 / fan_out)
    return rule


def test_every_registry_architecture_is_covered():
    assert set(MODELS) == set(SPEC_INIT) | NO_SHARED_LAYERS, \
        'a new architecture: add its init (spec section) to SPEC_INIT or NO_SHARED_LAYERS'


@pytest.mark.parametrize('arch', sorted(SPEC_INIT))
def test_widened_entries_get_the_architectures_fresh_init(arch):
    torch.manual_seed(0)
    model = build_model(arch, base_width=BASE_WIDTH).to(DEVICE)
    model.add_task('t1', 5)
    old = {name: (layer.weight.detach().clone(), layer.owner.clone()) for name, layer in model.masked_layers()}

    model.add_task('t2', 5, multiplier=1.5)   # growing: the network widens before task 2 starts
    grown = checked_std = 0
    for name, layer in model.masked_layers():
        w_old, o_old = old[name]
        weight = layer.weight.detach()
        block = tuple(slice(0, n) for n in w_old.shape[:2])
        assert torch.equal(weight[block], w_old), f'{arch} {name}: old block not copied'
        assert torch.equal(layer.owner[block], o_old), name
        new = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        new[block] = False
        if not new.any():
            continue
        grown += 1
        fresh = weight[new].double().cpu()
        assert not (layer.owner[new] != 0).any(), f'{arch} {name}: new entries must be free'
        zeros = int((fresh == 0).sum())
        assert zeros == 0, f'{arch} {name}: {zeros} of {fresh.numel()} widened entries start at 0'
        if fresh.numel() >= MIN_ENTRIES_FOR_STD:
            rule = SPEC_INIT[arch][type(layer)]
            want = _expected_std(rule, tuple(weight.shape))
            got = float(fresh.std())
            assert abs(got / want - 1) < 0.15, f'{arch} {name}: std {got:.4g}, spec {want:.4g}'
            assert abs(float(fresh.mean())) < 4 * want / math.sqrt(fresh.numel()), f'{arch} {name}: mean'
            checked_std += 1
    assert grown > 0 and checked_std > 0, (arch, grown, checked_std)


@pytest.mark.parametrize('arch', sorted(NO_SHARED_LAYERS))
def test_architectures_without_shared_layers_refuse_to_widen(arch):
    model = build_model(arch, base_width=0.0625)
    assert model.masked_layers() == []
    model.add_task('t1', 5)
    with pytest.raises(ValueError):
        model.add_task('t2', 5, multiplier=1.5)
