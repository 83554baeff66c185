"""SphereNet20 (spec §5.3): the original's modules and names, per-task biases and PReLUs,
unforgetting with angle and linear heads, growth, face_weight.pth loading, the meta device."""
import pytest
import torch

from cpg_testlib import DEVICE, begin_all, end_all, learn_task, one_line_error, prune_all, to_device
from models import MODELS, build_model, build_model_with_tasks, read_pretrained_state
from models.angle import AngleHead, angle_lambda, angle_loss
from models.layers import MaskedConv2d, scaled_width
from models.spherenet import SphereNetMT, spherenet20
from utils.grower import assign_free_capacity
from utils.manager import build_weight_optimizer
from utils.picker import build_pick_optimizer

SMALL = 0.0625   # channels 4, 8, 16, 32
SIZE = 32        # cpg_testlib's learn_task draws 32x32 images
IDENTITIES = 10
LR = 0.01        # no BatchNorm: 0.05 on random images can diverge to NaN
ORIGINAL_CONVS = (['conv1_1', 'conv1_2', 'conv1_3'] + [f'conv2_{i}' for i in range(1, 6)]
                  + [f'conv3_{i}' for i in range(1, 10)] + ['conv4_1', 'conv4_2', 'conv4_3'])


def _model(seed=0, base_width=SMALL, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault('image_size', SIZE)
    return build_model('spherenet20', base_width=base_width, **kwargs).to(DEVICE)


def _inputs(n=4, size=SIZE, seed=123):
    return to_device(torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))


@torch.no_grad()
def _outputs(model, x, task):
    """Everything task `task` computes in eval mode: (logits,) or (embedding, cos θ·|x|, φ·|x|)."""
    model.eval()
    model.set_task(task)
    if isinstance(model.heads[str(task)], AngleHead):
        out = (model.embed(x),) + tuple(model(x))
    else:
        out = (model(x),)
    assert all(bool(torch.isfinite(t).all()) for t in out)   # a meaningful comparison
    return out


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b), (a - b).abs().max()


def _learn_angle_task(model, task, steps=3, seed=0, lr=LR, lr_mask=0.01, sparsity=None):
    """learn_task's Phase A for an angle-head task (AngleLoss), then an optional one-shot prune."""
    gen = torch.Generator().manual_seed(2000 + seed)
    learn_pick = task >= 2
    assign_free_capacity(model, task)
    begin_all(model, task, learn_pick=learn_pick)
    optimizers = [build_weight_optimizer(model, task, lr)]
    if learn_pick:
        optimizers.append(build_pick_optimizer(model, lr_mask))
    classes = model.tasks[task - 1]['num_classes']
    model.set_task(task)
    model.train()
    for step in range(steps):
        x = torch.randn(4, 3, model.image_size, model.image_size, generator=gen)
        y = torch.randint(0, classes, (4,), generator=gen)
        x, y = to_device(x, y)
        for opt in optimizers:
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        angle_loss(model(x), y, angle_lambda(step)).backward()
        for opt in optimizers:
            if opt is not None:
                opt.step()
    end_all(model)
    if sparsity:
        prune_all(model, task, sparsity)


def test_twenty_masked_convs_with_biases_named_as_the_original():
    model = _model()
    model.add_task('face', IDENTITIES, head='angle')
    convs = dict(model.masked_layers())
    assert list(convs) == ORIGINAL_CONVS
    relus = dict(model.per_task_modules())
    assert list(relus) == [n.replace('conv', 'relu') for n in ORIGINAL_CONVS]
    for name, conv in convs.items():
        assert isinstance(conv, MaskedConv2d) and conv.has_bias, name
        assert conv.kernel_size == (3, 3) and conv.padding == 1, name
        assert conv.stride == (2 if name.endswith('_1') else 1), name
        assert torch.all(conv.biases['1'] == 0), name
        prelu = relus[name.replace('conv', 'relu')].per_task['1']
        assert isinstance(prelu, torch.nn.PReLU) and torch.all(prelu.weight == 0.25), name
        assert prelu.num_parameters == conv.weight.shape[0], name
    w = convs['conv3_2'].weight.detach()   # Kaiming normal, fan-out (16 * 9), gain sqrt(2)
    assert abs(w.std().item() - (2 / (16 * 9)) ** 0.5) < 0.05 * (2 / (16 * 9)) ** 0.5
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_widths_and_registry():
    full = spherenet20()   # the paper's width (0.1 s to build on the CPU)
    shapes = full.layer_shapes(1.0)
    assert [shapes[f'conv{s}_1'] for s in range(1, 5)] == [(64, 3), (128, 64), (256, 128), (512, 256)]
    assert shapes['conv3_9'] == (256, 256) and full.per_task_widths(1.0)['relu4_3'] == 512
    assert full.head_in_features(1.0) == 512 * 7 * 7 and full.model_kwargs() == {'image_size': 112}
    assert full.layer_shapes(1.5)['conv1_2'] == (78, 78) and full.head_in_features(1.5) == 627 * 49

    assert MODELS['spherenet20'] is spherenet20
    model = build_model('spherenet20', base_width=SMALL, multiplier=1.5, image_size=48)
    assert isinstance(model, SphereNetMT) and model.multiplier == 1.5 and model.image_size == 48
    assert model.model_kwargs() == {'image_size': 48}
    with pytest.raises(ValueError, match='image_size'):
        build_model('resnet50', image_size=48)
    tasks = [{'name': 'face', 'num_classes': 7, 'multiplier': 1.0, 'head': 'angle'},
             {'name': 'gender', 'num_classes': 3, 'multiplier': 1.5, 'head': 'linear'}]
    rebuilt = build_model_with_tasks('spherenet20', SMALL, tasks, image_size=16)
    assert rebuilt.image_size == 16 and rebuilt.multiplier == 1.5
    assert isinstance(rebuilt.heads['1'], AngleHead) and isinstance(rebuilt.heads['2'], torch.nn.Linear)


@pytest.mark.parametrize('size', [16, 32, 112])
def test_feature_shape(size):
    model = _model(image_size=size)
    model.add_task('face', IDENTITIES, head='angle')
    model.add_task('gender', 3)
    x = _inputs(2, size)
    width = scaled_width(512, SMALL, 1.0) * (size // 16) ** 2   # 512w·(S/16)²
    assert model.head_in_features(1.0) == width
    model.eval()
    model.set_task(1)
    with torch.no_grad():
        assert model.features(x).shape == (2, width)
        cos_x, phi_x = model(x)
        assert cos_x.shape == phi_x.shape == (2, IDENTITIES) and model.embed(x).shape == (2, 512)
        model.set_task(2)
        assert model(x).shape == (2, 3)


def test_bad_image_sizes():
    for size in (0, -16, 24, 100, 112.0, True):
        with pytest.raises(ValueError, match='multiple of 16'):
            spherenet20(image_size=size)
    model = _model()
    model.add_task('gender', 3)
    model.set_task(1)
    with pytest.raises(ValueError, match='32x32'):
        model(_inputs(1, 64))


def test_embed_needs_an_angle_head():
    model = _model()
    model.add_task('gender', 3)
    model.add_task('face', IDENTITIES, head='angle')
    x = _inputs(2)
    model.eval()
    model.set_task(1)
    with pytest.raises(ValueError, match="'linear' head"):
        model.embed(x)
    model.set_task(2)
    with torch.no_grad():
        assert torch.equal(model.embed(x), model.heads['2'].embed(model.features(x)))


def test_second_task_copies_biases_and_slopes_and_leaves_the_first_unchanged():
    x = _inputs()
    model = _model(seed=1)
    model.add_task('face', IDENTITIES, head='angle')
    _learn_angle_task(model, 1, seed=1, sparsity=0.3)
    before = _outputs(model, x, 1)
    model.add_task('gender', 5)
    for name, conv in model.masked_layers():
        assert torch.equal(conv.biases['2'], conv.biases['1']), name
    slopes = {name: module.per_task['1'].weight.detach().clone() for name, module in model.per_task_modules()}
    for name, module in model.per_task_modules():
        assert torch.equal(module.per_task['2'].weight, slopes[name]), name
    # task 1 really trained them: the copy is not just two fresh inits
    assert any(bool(conv.biases['1'].abs().sum() > 0) for _, conv in model.masked_layers())
    assert any(bool((s != 0.25).any()) for s in slopes.values())

    learn_task(model, 2, sparsity=0.3, retrain=True, seed=2, lr=LR)
    _assert_same(_outputs(model, x, 1), before)
    for name, module in model.per_task_modules():
        assert torch.equal(module.per_task['1'].weight, slopes[name]), name
    assert any(not torch.equal(conv.biases['2'], conv.biases['1']) for _, conv in model.masked_layers())


def test_growth_keeps_earlier_tasks_bitwise_identical():
    x = _inputs()
    model = _model(seed=3, base_width=0.125)   # 8..64 channels: every layer grows at 1.5
    model.add_task('face', IDENTITIES, head='angle')
    _learn_angle_task(model, 1, seed=3, sparsity=0.3)
    face = _outputs(model, x, 1)
    old = {n: layer.weight.detach().clone() for n, layer in model.masked_layers()}

    model.widen(1.5)
    model.add_task('gender', 5, multiplier=1.5)
    shapes, widths = model.layer_shapes(1.5), model.per_task_widths(1.5)
    for name, layer in model.masked_layers():
        out, inp = old[name].shape[:2]
        assert tuple(layer.weight.shape[:2]) == shapes[name] != (out, inp), name
        assert torch.equal(layer.weight.detach()[:out, :inp], old[name]), name
        assert layer.biases['2'].shape == (shapes[name][0],), name
    for name, module in model.per_task_modules():
        assert module.per_task['2'].num_parameters == widths[name], name
    assert model.heads['2'].in_features == model.head_in_features(1.5) > model.heads['1'].embed.in_features
    _assert_same(_outputs(model, x, 1), face)

    learn_task(model, 2, sparsity=0.3, seed=4, lr=LR)
    gender = _outputs(model, x, 2)
    model.add_task('face2', 6, head='angle')
    _learn_angle_task(model, 3, seed=5)
    _assert_same(_outputs(model, x, 1), face)
    _assert_same(_outputs(model, x, 2), gender)


# ----- face_weight.pth ---------------------------------------------------------------------------

def _face_state(model, task):
    """The original's face_weight.pth layout built from task `task` of a model."""
    state = {}
    for name, layer in model.masked_layers():
        out, inp = layer.task_shapes[task]
        state[name + '.weight'] = layer.effective_weight(task).cpu().clone()
        state[name + '.bias'] = layer.biases[str(task)].detach().cpu().clone()
    for name, module in model.per_task_modules():
        state[name + '.weight'] = module.per_task[str(task)].weight.detach().cpu().clone()
    head = model.heads[str(task)]
    state['fc5.weight'] = head.embed.weight.detach().cpu().clone()
    state['fc5.bias'] = head.embed.bias.detach().cpu().clone()
    state['fc6.weight'] = head.angle.weight.detach().cpu().clone()
    return state


@pytest.fixture(scope='module')
def face_source():
    """A trained angle-head task 1 (SMALL, 32x32) and its face_weight.pth-style state dict."""
    model = _model(seed=7)
    model.add_task('face', IDENTITIES, head='angle')
    _learn_angle_task(model, 1, seed=7)
    return model, _face_state(model, 1)


def test_face_weights_reproduce_the_embedding_and_angle_outputs(face_source, tmp_path):
    source, state = face_source
    path = tmp_path / 'face_weight.pth'   # as a DataParallel run would have saved it
    torch.save({'state_dict': {'module.' + k: v for k, v in state.items()}}, path)
    read = read_pretrained_state(str(path))
    assert list(read) == list(state) and all(torch.equal(read[k], state[k]) for k in state)

    model = _model(seed=8)
    model.add_task('face', IDENTITIES, head='angle')
    info = model.load_pretrained(read, 1)
    assert info == {'copied': 20 * 3 + 3, 'head_from_fc': True}
    for name, layer in model.masked_layers():   # free entries handed to the task
        assert torch.all(layer.owner == 1), name
    x = _inputs()
    _assert_same(_outputs(model, x, 1), _outputs(source, x, 1))


def test_other_identity_counts_and_linear_heads_take_only_what_fits(face_source):
    source, state = face_source
    x = _inputs()
    model = _model(seed=9)
    model.add_task('face', 7, head='angle')
    fresh = model.heads['1'].angle.weight.detach().clone()
    assert model.load_pretrained(state, 1) == {'copied': 62, 'head_from_fc': False}
    assert torch.equal(model.heads['1'].angle.weight.detach(), fresh)   # the fresh AngleLinear stays
    assert torch.equal(_outputs(model, x, 1)[0], _outputs(source, x, 1)[0])   # the embedding

    for given in (state, {k: v for k, v in state.items() if not k.startswith('fc')}):
        model = _model(seed=10)
        model.add_task('gender', 3)
        head = {k: v.clone() for k, v in model.heads['1'].state_dict().items()}
        assert model.load_pretrained(given, 1) == {'copied': 60, 'head_from_fc': False}
        assert all(torch.equal(v, head[k]) for k, v in model.heads['1'].state_dict().items())
        model.eval()
        source.eval()
        source.set_task(1)
        model.set_task(1)
        with torch.no_grad():
            assert torch.equal(model.features(x), source.features(x))


def test_face_weight_errors_are_one_line_and_copy_nothing(face_source):
    _, state = face_source
    model = _model(seed=11)
    model.add_task('face', IDENTITIES, head='angle')
    before = {k: v.clone() for k, v in model.state_dict().items()}

    wrong = dict(state, **{'conv3_2.weight': torch.zeros(16, 16, 1, 1)})
    msg = one_line_error(lambda: model.load_pretrained(wrong, 1))
    assert "'conv3_2.weight'" in msg and '(16, 16, 1, 1)' in msg and '(16, 16, 3, 3)' in msg
    missing = {k: v for k, v in state.items() if k != 'relu2_3.weight'}
    assert 'missing' in (msg := one_line_error(lambda: model.load_pretrained(missing, 1)))
    assert 'relu2_3.weight' in msg
    extra = dict(state, **{'conv5_1.weight': torch.zeros(1)})
    assert 'unexpected' in (msg := one_line_error(lambda: model.load_pretrained(extra, 1)))
    assert 'conv5_1.weight' in msg
    no_fc6 = {k: v for k, v in state.items() if k != 'fc6.weight'}
    assert 'fc6.weight' in one_line_error(lambda: model.load_pretrained(no_fc6, 1))
    bad_fc6 = dict(state, **{'fc6.weight': torch.zeros(256, IDENTITIES)})
    msg = one_line_error(lambda: model.load_pretrained(bad_fc6, 1))
    assert "'fc6.weight'" in msg and '(256, 10)' in msg
    assert 'not in the model' in one_line_error(lambda: model.load_pretrained(state, 2))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())   # checked before any copy

    smaller = _model(seed=12, image_size=16)   # same convs, fc5 sized for 16x16 inputs
    smaller.add_task('face', IDENTITIES, head='angle')
    msg = one_line_error(lambda: smaller.load_pretrained(state, 1))
    assert "'fc5.weight'" in msg and '(512, 128)' in msg and '(512, 32)' in msg

    model.load_pretrained(state, 1)
    model.add_task('face2', IDENTITIES, head='angle')   # same width: every entry is task 1's
    assert 'other tasks' in one_line_error(lambda: model.load_pretrained(state, 2))


@pytest.mark.filterwarnings('ignore:for .*meta parameter')
def test_builds_grows_and_runs_on_the_meta_device():
    model = spherenet20(base_width=SMALL, image_size=SIZE).to('meta')
    model.add_task('face', IDENTITIES, head='angle')
    model.add_task('gender', 3, multiplier=1.5)
    stray = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
             if tensor.device.type != 'meta']
    assert stray == [], f'left off the model device: {stray}'
    x = torch.randn(2, 3, SIZE, SIZE, device='meta')
    model.eval()
    model.set_task(1)
    cos_x, phi_x = model(x)
    assert cos_x.device.type == 'meta' and cos_x.shape == phi_x.shape == (2, IDENTITIES)
    assert model.embed(x).shape == (2, 512)
    model.set_task(2)
    assert model(x).shape == (2, 3)
