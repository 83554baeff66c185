"""ResNet-50 (spec §5.2): torchvision-exact forward, pretrained loading, §3.6 widths, growth, init."""
import pytest
import torch

from cpg_testlib import DEVICE, learn_task, one_line_error, task_logits, to_device, torchvision_resnet50
from models import MODELS, build_model
from models.layers import MaskedConv2d
from models.resnet import ResNetMT, read_torchvision_state, resnet50
from utils.grower import assign_free_capacity

SMALL = 0.125  # channels 8..256: a whole task in well under a second


def _inputs(n=2, size=64, seed=123):
    return to_device(torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope='module')
def torchvision_net():
    """Seeded random-init torchvision ResNet-50 (eval) with distinctive BN state, and its state dict."""
    net = torchvision_resnet50()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    return net.to(DEVICE).eval(), state


def _pretrained(state, num_classes=1000):
    model = resnet50()
    model.add_task('imagenet', num_classes)
    assign_free_capacity(model, 1)
    info = model.load_pretrained(state, 1)
    model.to(DEVICE).eval()
    model.set_task(1)
    return model, info


def _assert_matches_torchvision(model, net):
    x = _inputs()
    with torch.no_grad():
        ours, theirs = model(x), net(x)
    # Same kernels on the same values in the same order: bit-exact on the CPU. On CUDA the suite
    # makes cuDNN deterministic (conftest) and both nets present identical shapes and weight
    # values, so the same algorithms run; expected exact there too (not yet run on a GPU).
    assert torch.isfinite(theirs).all() and theirs.abs().max() > 1.0  # a non-trivial comparison
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()


def test_logits_equal_torchvision_given_the_same_state_dict(torchvision_net):
    net, state = torchvision_net
    model, info = _pretrained(state)
    assert info == {'copied': 320, 'head_from_fc': True}  # every tensor of torchvision's state dict
    _assert_matches_torchvision(model, net)
    # the first task owns every entry, so nothing it loaded is zeroed when a phase begins
    assert all(bool((layer.owner == 1).all()) for _, layer in model.masked_layers())


def test_read_torchvision_state_plain_wrapped_and_module_prefixed(tmp_path, torchvision_net):
    net, state = torchvision_net
    variants = {'plain.pth': state,
                'wrapped.pth': {'state_dict': state, 'epoch': 3},
                'ddp.pth': {'model': {'module.' + k: v for k, v in state.items()}}}
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        read = read_torchvision_state(str(tmp_path / name))
        assert list(read) == list(state), name
        assert all(torch.equal(read[k], state[k]) for k in state), name
    model, _ = _pretrained(read_torchvision_state(str(tmp_path / 'ddp.pth')))
    _assert_matches_torchvision(model, net)


def test_head_from_fc_only_when_the_task_has_fc_shape(torchvision_net):
    _, state = torchvision_net
    torch.manual_seed(3)
    model = resnet50()
    model.add_task('birds', 200)
    fresh = {k: v.clone() for k, v in model.heads['1'].state_dict().items()}
    info = model.load_pretrained(state, 1)
    assert info == {'copied': 318, 'head_from_fc': False}
    for k, v in model.heads['1'].state_dict().items():
        assert torch.equal(v, fresh[k]), k  # the fresh head is kept
    assert torch.equal(model.conv1.weight.detach(), state['conv1.weight'])
    bn = model.layer3[0].downsample[1]
    assert torch.equal(bn.per_task['1'].running_var, state['layer3.0.downsample.1.running_var'])
    assert int(model.layer1[0].bn2.per_task['1'].num_batches_tracked) == 7


def test_clear_errors(tmp_path, torchvision_net):
    _, state = torchvision_net
    small = resnet50(base_width=SMALL)
    small.add_task('t', 1000)
    assert 'need BASE_WIDTH 1.0 and width multiplier 1.0' in one_line_error(lambda: small.load_pretrained(state, 1))
    assert 'not in the model' in one_line_error(lambda: small.load_pretrained(state, 2))
    wide = resnet50(multiplier=1.5)
    wide.add_task('t', 1000)
    assert 'multiplier 1.5' in one_line_error(lambda: wide.load_pretrained(state, 1))

    model = resnet50()
    model.add_task('t', 1000)
    before = model.conv1.weight.detach().clone()
    missing = {k: v for k, v in state.items() if k != 'layer3.2.bn2.running_var'}
    assert 'missing' in (msg := one_line_error(lambda: model.load_pretrained(missing, 1)))
    assert 'layer3.2.bn2.running_var' in msg
    extra = dict(state, **{'layer5.0.conv1.weight': torch.zeros(1)})
    assert 'unexpected' in (msg := one_line_error(lambda: model.load_pretrained(extra, 1)))
    assert 'layer5.0.conv1.weight' in msg
    wrong = dict(state, **{'layer2.0.conv2.weight': torch.zeros(128, 128, 1, 1)})
    msg = one_line_error(lambda: model.load_pretrained(wrong, 1))
    assert "'layer2.0.conv2.weight'" in msg and '(128, 128, 1, 1)' in msg and '(128, 128, 3, 3)' in msg
    # everything is checked before anything is copied
    assert torch.equal(model.conv1.weight.detach(), before)

    nowhere = str(tmp_path / 'nope.pth')
    assert nowhere in one_line_error(lambda: read_torchvision_state(nowhere))
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    assert str(garbage) in one_line_error(lambda: read_torchvision_state(str(garbage)))
    torch.save({'epoch': 3}, tmp_path / 'no_state.pth')
    assert 'no state dict' in one_line_error(lambda: read_torchvision_state(str(tmp_path / 'no_state.pth')))


def test_pretrained_weights_never_overwrite_an_earlier_task(torchvision_net):
    _, state = torchvision_net
    model = resnet50()
    model.add_task('t1', 10)
    assign_free_capacity(model, 1)
    model.add_task('t2', 1000)   # same width: every entry is task 1's
    assert 'other tasks' in one_line_error(lambda: model.load_pretrained(state, 2))


@pytest.mark.parametrize('m, stem, inner1, outs', [
    (1.0, 64, 64, (256, 512, 1024, 2048)),
    (1.5, 78, 78, (313, 627, 1254, 2508)),
    (2.0, 90, 90, (362, 724, 1448, 2896)),
])
def test_channel_widths_match_the_spec(m, stem, inner1, outs):
    model = resnet50()
    shapes, widths = model.layer_shapes(m), model.per_task_widths(m)
    assert len(shapes) == len(widths) == 53  # 1 + 16 * 3 + 4 projections
    assert shapes['conv1'] == (stem, 3) and widths['bn1'] == stem
    assert shapes['layer1.0.conv1'] == (inner1, stem) and shapes['layer1.0.conv3'] == (outs[0], inner1)
    assert shapes['layer1.0.downsample.0'] == (outs[0], stem) and widths['layer1.0.downsample.1'] == outs[0]
    for i, out in enumerate(outs):
        last = f'layer{i + 1}.{(3, 4, 6, 3)[i] - 1}'
        assert shapes[f'{last}.conv3'][0] == widths[f'{last}.bn3'] == out
    assert shapes['layer2.0.conv1'] == (int(128 * m ** 0.5), outs[0])
    assert model.head_in_features(m) == outs[-1]


def test_built_modules_follow_the_shape_methods():
    model = resnet50(base_width=SMALL, multiplier=1.5)
    model.add_task('t', 7)
    shapes, widths = model.layer_shapes(1.5), model.per_task_widths(1.5)
    convs = dict(model.masked_layers())
    assert set(convs) == set(shapes)
    for name, layer in convs.items():
        assert tuple(layer.weight.shape[:2]) == shapes[name], name
        assert not layer.has_bias
    bns = dict(model.per_task_modules())
    assert set(bns) == set(widths)
    for name, module in bns.items():
        assert module.per_task['1'].num_features == widths[name], name
    assert model.heads['1'].in_features == model.head_in_features(1.5)
    assert convs['layer2.0.conv2'].stride == 2 and convs['layer2.0.conv1'].stride == 1  # stride on 3x3
    assert convs['layer2.0.downsample.0'].stride == 2


def test_growth_keeps_task_1_bitwise_identical():
    x = _inputs(4, 32)
    torch.manual_seed(1)
    model = build_model('resnet50', base_width=SMALL).to(DEVICE)
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.3, seed=1)
    before = task_logits(model, x)
    old = {n: layer.weight.detach().clone() for n, layer in model.masked_layers()}

    assert model.add_task('t2', 5, multiplier=1.5) == 2 and model.multiplier == 1.5
    shapes, widths = model.layer_shapes(1.5), model.per_task_widths(1.5)
    for name, layer in model.masked_layers():
        out, inp = old[name].shape[:2]
        assert tuple(layer.weight.shape[:2]) == shapes[name], name
        assert torch.equal(layer.weight.detach()[:out, :inp], old[name]), name
    for name, module in model.per_task_modules():
        assert module.per_task['2'].num_features == widths[name], name
    assert model.heads['2'].in_features == model.head_in_features(1.5) > model.heads['1'].in_features
    assert torch.equal(task_logits(model, x, [1])[1], before[1])

    learn_task(model, 2, sparsity=0.3, seed=2)
    after = task_logits(model, x)
    assert torch.equal(after[1], before[1])
    assert after[2].shape == (4, 5) and torch.isfinite(after[2]).all()


def test_checkpoint_round_trip(tmp_path):
    from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    x = _inputs(4, 32)
    torch.manual_seed(2)
    model = build_model('resnet50', base_width=SMALL).to(DEVICE)
    model.add_task('t1', 5)
    learn_task(model, 1, steps=2, sparsity=0.3, seed=1)
    model.add_task('t2', 5, multiplier=1.5)
    learn_task(model, 2, steps=2, seed=2)
    before = task_logits(model, x)
    path = str(tmp_path / 'ckpt.pth.tar')
    save_checkpoint(path, model, 'resnet50', frozen=True)
    loaded = model_from_checkpoint(load_checkpoint(path), DEVICE)
    assert isinstance(loaded, ResNetMT)
    after = task_logits(loaded, x)
    for task in (1, 2):
        assert torch.equal(after[task], before[task]), task


def test_init_statistics():
    torch.manual_seed(4)
    model = resnet50()
    model.add_task('t', 10)
    for name, layer in model.masked_layers():
        assert isinstance(layer, MaskedConv2d)
        w = layer.weight.detach()
        assert abs(w.std().item() - 0.001) < 0.05 * 0.001, name   # >= 9408 entries: ~1 % error
        assert abs(w.mean().item()) < 1e-4, name
    for name, module in model.per_task_modules():
        bn = module.per_task['1']
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0), name  # no zero-init residual
    head = model.heads['1']
    assert abs(head.weight.std().item() - 0.01) < 0.001 and torch.all(head.bias == 0)
    # widening draws the new entries from the same N(0, 0.001)
    conv = model.layer4[0].conv2
    conv.widen(conv.weight.shape[0] + 64, conv.weight.shape[1] + 64)
    new = conv.weight.detach()[512:]
    assert abs(new.std().item() - 0.001) < 0.05 * 0.001


def test_registry():
    assert MODELS['resnet50'] is resnet50
    model = build_model('resnet50', base_width=SMALL, multiplier=1.5)
    assert isinstance(model, ResNetMT) and model.base_width == SMALL and model.multiplier == 1.5
    model.add_task('t', 3)
    model.to(DEVICE).eval()
    model.set_task(1)
    with torch.no_grad():
        assert model(_inputs(2, 32)).shape == (2, 3)
