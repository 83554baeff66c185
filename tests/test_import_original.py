"""tools/import_original_checkpoint.py: the original CPG code's checkpoints compute here exactly what
they computed there.

The tests write checkpoints in the original's format (spec §2, §4.1: its dictionary keys, layer
names, owner masks, float piggymasks, per-task stores) for 2-3 tasks of each architecture at
reduced width with random values, by simulating the original's life cycle (a task takes the free
entries of its block, prunes some of them, earlier owners never change). The expected outputs come
from a reference forward written here straight from the spec's formulas:
    W_eff = W * ( [M == j] + [1 <= M < j] * [P_j > 5e-3] )     (no P_j: every earlier weight)
with task j's own BN / biases / PReLU / head; the imported model must give them bit for bit
(torch.equal, CPU). A real file written by the original's own code (tests/fixtures/original) is
compared with the logits its own inference path produced.
"""
import hashlib
import json
import math
import os
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpg_testlib import DEVICE, REPO, learn_task, load_tool, run_main_block, subprocess_env
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.errors import CPGError
from utils.original_format import OriginalCheckpoint, raw_multiplier, read_original

tool = load_tool('import_original_checkpoint')
FIXTURE = os.path.join(REPO, 'tests', 'fixtures', 'original', 'vgg_2tasks')
THRESHOLD = 5e-3
BW = 1 / 16   # reduced width: the paper's channels / 16

# ----- the original's networks at reduced width (spec §5; widths int(c * sqrt(m)), §3.6) ---------
VGG_CFG = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']


def vgg_layers(s, bw=BW):
    """[(name, out, in, kernel, bias, norm)] of custom_vgg_cifar100 at square-rooted width s."""
    layers, idx, cin = [], 0, 3
    for v in VGG_CFG:
        if v == 'M':
            idx += 1
            continue
        out = int(v * bw * s)
        layers.append((f'features.{idx}', out, cin, 3, False, f'features.{idx + 1}'))
        idx, cin = idx + 3, out
    fc = int(4096 * bw * s)
    return layers + [('features.45', fc, cin, None, True, None), ('features.47', fc, fc, None, True, None)]


def resnet_layers(s, bw=BW):
    stem = int(64 * bw * s)
    layers, cin = [('conv1', stem, 3, 7, False, 'bn1')], stem
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), 1):
        planes_f = s * planes * bw
        inner, out = int(planes_f), int(planes_f * 4)
        for b in range(blocks):
            p = f'layer{stage}.{b}.'
            layers += [(p + 'conv1', inner, cin, 1, False, p + 'bn1'), (p + 'conv2', inner, inner, 3, False, p + 'bn2'),
                       (p + 'conv3', out, inner, 1, False, p + 'bn3')]
            if b == 0:
                layers.append((p + 'downsample.0', out, cin, 1, False, p + 'downsample.1'))
            cin = out
    return layers


def sphere_layers(s, bw=BW):
    layers, cin = [], 3
    for stage, (channels, units) in enumerate(((64, 1), (128, 2), (256, 4), (512, 1)), 1):
        out = int(channels * bw * s)
        for i in range(1, 2 + 2 * units):
            layers.append((f'conv{stage}_{i}', out, cin if i == 1 else out, 3, True, f'relu{stage}_{i}'))
        cin = out
    return layers


# (layers, per-task module kind, head input at root s; SphereNet: flat = side^2, 7 x 7 in the original)
ARCHS = {'vgg': (vgg_layers, 'bn', lambda s, flat: int(4096 * BW * s)),
         'resnet': (resnet_layers, 'bn', lambda s, flat: int(s * 512 * BW * 4)),
         'sphere': (sphere_layers, 'prelu', lambda s, flat: int(512 * BW * s) * flat)}


# ----- writing a checkpoint as the original's code does -------------------------------------------
def _pad(t, shape, fill):
    out = fill(shape)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def original_checkpoint(arch, tasks, engine='CPG', seed=0, picks='learned', prune=0.4, flat=49):
    """The original's checkpoint dict for `tasks` = [(name, classes, raw m, head kind)] in order."""
    layers_at, norm_kind, head_in = ARCHS[arch]
    gen = torch.Generator().manual_seed(seed)
    weights, masks, stores, heads = {}, {}, OrderedDict(), []
    for k, (name, classes, m, head) in enumerate(tasks, 1):
        s = math.sqrt(m)
        for lname, out, cin, ks, bias, _ in layers_at(s):
            shape = (out, cin) + ((ks, ks) if ks else ())
            if lname in weights:   # growing: old entries in the leading block, the rest free (spec §3.6)
                weights[lname] = _pad(weights[lname], shape, torch.zeros)
                masks[lname] = _pad(masks[lname], shape, lambda sh: torch.zeros(sh, dtype=torch.uint8))
            else:
                weights[lname], masks[lname] = torch.zeros(shape), torch.zeros(shape, dtype=torch.uint8)
            mask = masks[lname]
            mask[mask == 0] = k                       # Phase A: the task takes every free entry
            own = mask == k
            weights[lname][own] = torch.randn(int(own.sum()), generator=gen) * 0.3
            released = own & (torch.rand(shape, generator=gen) < prune)   # pruning frees some
            mask[released] = 0
            weights[lname][released] = 0.0
        stores[name] = _store(engine, k, s, layers_at(s), masks, norm_kind, gen, picks)
        if head == 'angle':
            heads.append({'0.weight': torch.randn(512, head_in(s, flat), generator=gen) * 0.05,
                          '0.bias': torch.randn(512, generator=gen) * 0.1,
                          '1.weight': torch.randn(512, classes, generator=gen) * 0.05})
        else:
            heads.append({'weight': torch.randn(classes, head_in(s, flat), generator=gen) * 0.05,
                          'bias': torch.randn(classes, generator=gen) * 0.1})
    return _assemble(tasks, weights, masks, stores, heads)


def _store(engine, k, s, layers, masks, norm_kind, gen, picks):
    """shared_layer_info[task] as the CPG (or PackNet) engine saves it (spec §2.4)."""
    P = nn.Parameter
    if engine == 'CPG':
        store = {'bias': {}, 'bn_layer_running_mean': {}, 'bn_layer_running_var': {}, 'bn_layer_weight': {},
                 'bn_layer_bias': {}, 'piggymask': {}, 'network_width_multiplier': s}
    else:
        store = {'conv_bias': {}, 'bn_layer_running_mean': {}, 'bn_layer_running_var': {},
                 'bn_layer_weight': {}, 'bn_layer_bias': {}, 'fc_bias': {}}
    if norm_kind == 'prelu':
        store['prelu_layer_weight'] = {}
    for lname, out, cin, ks, bias, norm in layers:
        if bias:
            key = 'bias' if engine == 'CPG' else ('fc_bias' if ks is None else 'conv_bias')
            store[key][lname] = P(torch.randn(out, generator=gen) * 0.1)
        if norm_kind == 'prelu':
            store['prelu_layer_weight'][norm] = P(torch.rand(out, generator=gen) * 0.5)
        elif norm:
            store['bn_layer_weight'][norm] = P(1 + 0.2 * torch.randn(out, generator=gen))
            store['bn_layer_bias'][norm] = P(0.1 * torch.randn(out, generator=gen))
            store['bn_layer_running_mean'][norm] = 0.1 * torch.randn(out, generator=gen)
            store['bn_layer_running_var'][norm] = 0.5 + torch.rand(out, generator=gen)
        if engine == 'CPG' and k > 1:
            store['piggymask'][lname] = P(_piggymask(masks[lname][:out, :cin], k, gen, picks))
    return store


def _piggymask(block, k, gen, picks):
    """Task k's float pick over its block: 0.01 everywhere (the init, spec §2.3) except on earlier
    tasks' entries, which it learned (threshold edge values included); on free / later entries the
    values do not matter, so random ones go there too."""
    edge = torch.tensor([5e-3], dtype=torch.float32)
    values = torch.tensor([0.0, 1e-3, 4.9e-3, float(edge), float(torch.nextafter(edge, torch.ones(1))),
                           6e-3, 0.01, 0.05])
    pick = torch.full(block.shape, 0.01)
    old = (block >= 1) & (block < k)
    if picks == 'learned':
        pick[old] = values[torch.randint(len(values), (int(old.sum()),), generator=gen)]
    elif picks == 'none':          # picked no earlier weight at all
        pick[old] = 1e-3
    other = (block == 0) | (block > k)
    pick[other] = values[torch.randint(len(values), (int(other.sum()),), generator=gen)]
    return pick


def _assemble(tasks, weights, masks, stores, heads):
    last = stores[tasks[-1][0]]
    state = OrderedDict()
    for lname, w in weights.items():
        state[lname + '.weight'] = w
        if lname in last.get('piggymask', {}):
            state[lname + '.piggymask'] = last['piggymask'][lname]
        for key in ('bias', 'conv_bias', 'fc_bias'):
            if lname in last.get(key, {}):
                state[lname + '.bias'] = last[key][lname]
    for key, suffix in (('bn_layer_weight', 'weight'), ('bn_layer_bias', 'bias'),
                        ('bn_layer_running_mean', 'running_mean'), ('bn_layer_running_var', 'running_var'),
                        ('prelu_layer_weight', 'weight')):
        for norm, t in last.get(key, {}).items():
            state[f'{norm}.{suffix}'] = t
            if key == 'bn_layer_weight':
                state[f'{norm}.num_batches_tracked'] = torch.tensor(123)
    for i, head in enumerate(heads):
        for key, t in head.items():
            state[f'classifiers.{i}.{key}'] = nn.Parameter(t)
    for key, t in heads[-1].items():   # the active head's alias (spec §2.5)
        state[f'classifier.{key}'] = t
    return {'model_state_dict': state, 'dataset_history': [t[0] for t in tasks],
            'dataset2num_classes': {t[0]: t[1] for t in tasks},
            'masks': {'module.' + k: v for k, v in masks.items()}, 'shared_layer_info': dict(stores)}


# ----- the reference forward (spec §2.6, §5) ------------------------------------------------------
def effective(ckpt, lname, j, block):
    W = ckpt['model_state_dict'][lname + '.weight'][tuple(slice(0, n) for n in block)]
    M = ckpt['masks']['module.' + lname][tuple(slice(0, n) for n in block)]
    name = ckpt['dataset_history'][j - 1]
    P = ckpt['shared_layer_info'][name].get('piggymask', {}).get(lname)
    chosen = (P.detach() > THRESHOLD).float() if P is not None else 1.0
    return W * ((M == j).float() + ((M >= 1) & (M < j)).float() * chosen)


def reference(ckpt, arch, j, x, bw=BW):
    name = ckpt['dataset_history'][j - 1]
    store = ckpt['shared_layer_info'][name]
    s = store.get('network_width_multiplier', 1.0)
    layers = {lname: (out, cin, ks, bias, norm) for lname, out, cin, ks, bias, norm in ARCHS[arch][0](s, bw)}

    def bias(lname):
        for key in ('bias', 'conv_bias', 'fc_bias'):
            if lname in store.get(key, {}):
                return store[key][lname].detach()
        return None

    def layer(lname, x, stride=1, pad=None):
        out, cin, ks, _, norm = layers[lname]
        if ks is None:
            return F.linear(x, effective(ckpt, lname, j, (out, cin)), bias(lname))
        y = F.conv2d(x, effective(ckpt, lname, j, (out, cin, ks, ks)), bias(lname), stride,
                     ks // 2 if pad is None else pad)
        if arch == 'sphere':
            return F.prelu(y, store['prelu_layer_weight'][norm].detach())
        return F.batch_norm(y, store['bn_layer_running_mean'][norm], store['bn_layer_running_var'][norm],
                            store['bn_layer_weight'][norm].detach(), store['bn_layer_bias'][norm].detach(),
                            False, 0.1, 1e-5)

    if arch == 'vgg':
        idx = 0
        for v in VGG_CFG:
            if v == 'M':
                x, idx = F.max_pool2d(x, 2, 2), idx + 1
            else:
                x, idx = F.relu(layer(f'features.{idx}', x)), idx + 3
        x = F.relu(layer('features.47', F.relu(layer('features.45', x.flatten(1)))))
    elif arch == 'resnet':
        x = F.max_pool2d(F.relu(layer('conv1', x, 2, 3)), 3, 2, 1)
        for stage, blocks in enumerate((3, 4, 6, 3), 1):
            for b in range(blocks):
                p, stride = f'layer{stage}.{b}.', (2 if stage > 1 and b == 0 else 1)
                y = F.relu(layer(p + 'conv2', F.relu(layer(p + 'conv1', x)), stride))
                y = layer(p + 'conv3', y)
                x = F.relu(y + (layer(p + 'downsample.0', x, stride) if b == 0 else x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    else:
        for stage, units in enumerate((1, 2, 4, 1), 1):
            x = layer(f'conv{stage}_1', x, 2)
            for a in range(2, 2 + 2 * units, 2):
                x = x + layer(f'conv{stage}_{a + 1}', layer(f'conv{stage}_{a}', x))
        x = x.flatten(1)
    head = {k[len(f'classifiers.{j - 1}.'):]: v.detach() for k, v in ckpt['model_state_dict'].items()
            if k.startswith(f'classifiers.{j - 1}.')}
    if 'weight' in head:
        return F.linear(x, head['weight'], head['bias'])
    embedding = F.linear(x, head['0.weight'], head['0.bias'])
    return embedding, angle_linear(embedding, head['1.weight'])


def angle_linear(x, weight):
    """AngleLinear, m = 4 (spec §5.4): (cos θ·|x|, φ·|x|)."""
    w = weight.renorm(2, 1, 1e-5).mul(1e5)
    x_len = x.pow(2).sum(1).pow(0.5).view(-1, 1)
    cos = (x.mm(w) / x_len / w.pow(2).sum(0).pow(0.5).view(1, -1)).clamp(-1, 1)
    k = (4 * cos.acos() / 3.14159265).floor()
    phi = (-1.0) ** k * (8 * cos ** 4 - 8 * cos ** 2 + 1) - 2 * k
    return cos * x_len, phi * x_len


# ----- helpers ------------------------------------------------------------------------------------
def imported(ckpt, tmp_path, name='checkpoint-20.pth.tar'):
    src = tmp_path / 'original' / name
    src.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, src)
    out = tmp_path / 'ours' / 'checkpoint.pth.tar'
    tool.import_original(str(src), str(out), log=lambda *_: None)
    return model_from_checkpoint(load_checkpoint(str(out))).eval()


def assert_same_function(model, ckpt, arch, x):
    with torch.no_grad():
        for j in range(1, len(ckpt['dataset_history']) + 1):
            model.set_task(j)
            want = reference(ckpt, arch, j, x)
            if isinstance(want, tuple):   # face verification: embedding, then AngleLinear's pair
                assert torch.equal(model.embed(x), want[0]), f'task {j} embedding'
                got = model(x)
                assert torch.equal(got[0], want[1][0]) and torch.equal(got[1], want[1][1]), f'task {j}'
            else:
                assert torch.equal(model(x), want), f'task {j}'


def inputs(n, size, seed=3):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----- every architecture, both engines -----------------------------------------------------------
def test_vgg_three_tasks_widened_with_learned_picks(tmp_path):
    # task 2 grew the network (raw m 1.0 -> 1.5, stored as its square root); task 3 stays there
    ckpt = original_checkpoint('vgg', [('t1', 5, 1.0, 'linear'), ('t2', 5, 1.5, 'linear'), ('t3', 3, 1.5, 'linear')])
    model = imported(ckpt, tmp_path)
    assert [t['multiplier'] for t in model.tasks] == [1.0, 1.5, 1.5]   # raw, not the stored sqrt
    assert model.base_width == BW
    assert model.features_seq[0].task_shapes == {1: (4, 3), 2: (4, 3), 3: (4, 3)}
    assert model.features_seq[34].task_shapes[1] == (32, 32) and model.features_seq[34].task_shapes[2] == (39, 39)
    assert_same_function(model, ckpt, 'vgg', inputs(3, 32))


def test_resnet50_two_tasks(tmp_path):
    ckpt = original_checkpoint('resnet', [('imagenet', 10, 1.0, 'linear'), ('cubs_cropped', 7, 1.0, 'linear')])
    assert_same_function(imported(ckpt, tmp_path), ckpt, 'resnet', inputs(2, 32))


def test_spherenet_face_verification_head(tmp_path):
    ckpt = original_checkpoint('sphere', [('face_verification', 9, 1.0, 'angle'), ('gender', 3, 1.0, 'linear'),
                                          ('emotion', 7, 1.0, 'linear')], seed=1)
    model = imported(ckpt, tmp_path)
    assert [t['head'] for t in model.tasks] == ['angle', 'linear', 'linear']
    assert model.image_size == 112   # the original flattens 512w x 7 x 7
    assert_same_function(model, ckpt, 'sphere', inputs(2, 112))


@pytest.mark.parametrize('arch,heads', [('vgg', ('linear', 'linear')), ('sphere', ('angle', 'linear'))])
def test_packnet_engine_file(tmp_path, arch, heads):
    # the original's baselines: conv_bias / fc_bias, no piggymask, no multiplier: every earlier weight used
    ckpt = original_checkpoint(arch, [('a', 4, 1.0, heads[0]), ('b', 3, 1.0, heads[1])], engine='PackNet')
    model = imported(ckpt, tmp_path)
    assert [t['picks'] for t in model.tasks] == [False, False]
    assert_same_function(model, ckpt, arch, inputs(2, 32 if arch == 'vgg' else 112))


@pytest.mark.parametrize('picks', ['initial', 'none'])
def test_task_that_never_picked(tmp_path, picks):
    # 'initial': the pick stayed at its 0.01 init (PAE: mask LR 0), every earlier weight used;
    # 'none': the task dropped every earlier weight
    ckpt = original_checkpoint('vgg', [('a', 5, 1.0, 'linear'), ('b', 5, 1.0, 'linear')], picks=picks)
    model = imported(ckpt, tmp_path)
    layer = model.features_seq[3]
    old = (layer.owner >= 1) & (layer.owner < 2)
    assert bool(((layer.task_keep_mask(2) & old) == (old if picks == 'initial' else torch.zeros_like(old))).all())
    assert_same_function(model, ckpt, 'vgg', inputs(2, 32))


def test_file_written_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    ckpt = original_checkpoint('vgg', [('a', 5, 1.0, 'linear'), ('b', 5, 1.0, 'linear')])
    src = tmp_path / 'checkpoint-3.pth.tar'
    with monkeypatch.context() as patch:   # tag every storage as CUDA, as the original's files are
        patch.setattr(torch.serialization, 'location_tag', lambda storage: 'cuda:0')
        torch.save(ckpt, src)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA'):
            torch.load(src, weights_only=True)
    tool.import_original(str(src), str(tmp_path / 'out.pth.tar'), log=lambda *_: None)
    model = model_from_checkpoint(load_checkpoint(str(tmp_path / 'out.pth.tar'))).eval()
    assert_same_function(model, ckpt, 'vgg', inputs(2, 32))


# ----- the real file written by the original's code -----------------------------------------------
def fixture_inputs(expected):
    spec = expected['inputs']
    rs = np.random.RandomState(spec['seed'])
    levels = np.array(spec['levels'])[:, None, None, None]
    return torch.from_numpy((levels + spec['noise'] * rs.standard_normal(spec['shape'])).astype(np.float32))


def test_real_file_of_the_original_gives_its_own_logits(tmp_path):
    with open(os.path.join(FIXTURE, 'expected.json')) as f:
        expected = json.load(f)
    ckpt = read_original(os.path.join(FIXTURE, 'checkpoint-2.pth.tar'))
    out = tmp_path / 'checkpoint.pth.tar'
    tool.import_original(os.path.join(FIXTURE, 'checkpoint-2.pth.tar'), str(out), log=lambda *_: None)
    model = model_from_checkpoint(load_checkpoint(str(out))).eval()
    # the original stored sqrt(m) = 1/64 and sqrt(1.5)/64: here base width 1/64, raw m 1 and 1.5
    assert (model.base_width, [t['multiplier'] for t in model.tasks]) == (1 / 64, [1.0, 1.5])
    x = fixture_inputs(expected)
    with torch.no_grad():
        for j, name in enumerate(ckpt['dataset_history'], 1):
            model.set_task(j)
            got = model(x)
            # the original's code wrote these on another torch build: kernels may order their sums
            # differently there, so to float rounding (a wrong key or mask is off by whole units)
            torch.testing.assert_close(got, torch.tensor(expected['tasks'][name]['logits']), rtol=1e-5, atol=1e-5,
                                       msg=name)
            # and the spec's formula on the file's own tensors says the same (base width 1 here)
            assert torch.equal(got, reference(ckpt, 'vgg', j, x, bw=1.0)), name


# ----- further use of an imported model -----------------------------------------------------------
def test_imported_model_learns_a_new_task_and_exports(tmp_path):
    """An imported model is an ordinary one: a third task learns on top (Phase A with picks,
    pruning, retrain) and the imported tasks keep the original's outputs, also after export."""
    ckpt = original_checkpoint('vgg', [('a', 5, 1.0, 'linear'), ('b', 5, 1.5, 'linear')])
    model = imported(ckpt, tmp_path).to(DEVICE)
    x = inputs(2, 32).to(DEVICE)
    before = []
    with torch.no_grad():
        for j in (1, 2):
            model.set_task(j)
            before.append(model(x))
            want = reference(ckpt, 'vgg', j, x.cpu())   # the original's function, before anything else
            if DEVICE == 'cpu':
                assert torch.equal(before[-1], want), f'task {j}'
            else:
                torch.testing.assert_close(before[-1].cpu(), want)
    learn_task(model, model.add_task('c', 5), steps=3, sparsity=0.5, retrain=True)
    model.eval()
    with torch.no_grad():
        for j in (1, 2):
            model.set_task(j)
            assert torch.equal(model(x), before[j - 1]), f'task {j} changed while a new task learned'
    export = load_tool('export')
    _, out, _, _, _ = export.export(str(tmp_path / 'ours'), str(tmp_path / 'exported.pth.tar'))
    exported = model_from_checkpoint(load_checkpoint(out), DEVICE).eval()
    with torch.no_grad():
        for j in (1, 2):
            exported.set_task(j)
            assert torch.equal(exported(x), before[j - 1])


def test_if_needed_imports_once_and_again_when_the_source_changes(tmp_path, capsys):
    folder = tmp_path / 'gradual_prune'
    folder.mkdir()
    ckpt = original_checkpoint('vgg', [('a', 5, 1.0, 'linear'), ('b', 5, 1.0, 'linear')])
    torch.save(ckpt, folder / 'checkpoint-7.pth.tar')
    torch.save({'not': 'taken'}, folder / 'checkpoint-12x.pth.tar')   # not the original's name pattern
    argv = [os.path.join(REPO, 'tools', 'import_original_checkpoint.py'), '--source', str(folder), '--if_needed']
    assert run_main_block(argv, capsys)[0] == 0
    out = folder / 'checkpoint.pth.tar'
    first = json.loads((folder / 'checkpoint.pth.tar.json').read_text())
    assert first['imported_from']['path'] == str(folder / 'checkpoint-7.pth.tar')
    assert run_main_block(argv, capsys)[0] == 0   # up to date: nothing rewritten
    assert json.loads((folder / 'checkpoint.pth.tar.json').read_text())['checkpoint_id'] == first['checkpoint_id']
    torch.save(ckpt, folder / 'checkpoint-9.pth.tar')   # a newer epoch: the original takes the highest
    assert run_main_block(argv, capsys)[0] == 0
    meta = json.loads((folder / 'checkpoint.pth.tar.json').read_text())
    assert meta['imported_from']['path'].endswith('checkpoint-9.pth.tar')
    # a checkpoint trained here is never replaced
    meta.pop('imported_from')
    (folder / 'checkpoint.pth.tar.json').write_text(json.dumps(meta))
    stamp = out.stat().st_mtime_ns
    assert run_main_block(argv, capsys)[0] == 0 and out.stat().st_mtime_ns == stamp
    rc, _, err = run_main_block(argv[:-1], capsys)
    assert rc == 1 and err.startswith('error: ') and 'was not imported' in err
    # no original file at all: --if_needed leaves the folder to the caller
    assert run_main_block([argv[0], '--source', str(tmp_path / 'elsewhere'), '--if_needed'], capsys)[0] == 0


# ----- bad input: one line naming the file, the key and what was expected -------------------------
def _one_line(fn):
    with pytest.raises(CPGError) as info:
        fn()
    message = str(info.value)
    assert '\n' not in message, message
    return message


def _convert(ckpt, path='ckpt.pth.tar'):
    return OriginalCheckpoint(ckpt, path).to_model()


def test_truncated_file_gets_one_error_line(tmp_path, capsys):
    src = tmp_path / 'checkpoint-20.pth.tar'
    torch.save(original_checkpoint('vgg', [('a', 5, 1.0, 'linear')]), src)
    data = src.read_bytes()
    src.write_bytes(data[:len(data) // 2])
    rc, out, err = run_main_block([os.path.join(REPO, 'tools', 'import_original_checkpoint.py'),
                                   '--source', str(src)], capsys)
    assert rc == 1 and err.count('\n') == 1 and err.startswith(f'error: cannot read {src} (truncated'), err
    # a pickle that weights_only=True refuses: said exactly why
    import argparse
    torch.save({'args': argparse.Namespace(lr=0.1)}, src)
    message = _one_line(lambda: read_original(str(src)))
    assert message.startswith(f'cannot read {src} with weights_only=True: it pickles GLOBAL argparse.Namespace'), message


def test_unknown_layouts_get_one_error_line():
    good = original_checkpoint('vgg', [('a', 5, 1.0, 'linear'), ('b', 5, 1.0, 'linear')])
    message = _one_line(lambda: _convert({'fc.weight': torch.zeros(2, 2)}))
    assert message.startswith("ckpt.pth.tar: has no key 'model_state_dict'") and 'masks' in message
    message = _one_line(lambda: _convert({'format': 'cpg-checkpoint-v1', 'model': {}}))
    assert 'already a checkpoint of this repository' in message
    renamed = dict(good, model_state_dict=OrderedDict(('body.' + k, v) for k, v in good['model_state_dict'].items()))
    message = _one_line(lambda: _convert(renamed))
    assert "ckpt.pth.tar: model_state_dict keys (body.features.0.weight" in message and 'fit no registered' in message
    # a shape that fits no registered architecture: one conv one channel too wide
    state = OrderedDict(good['model_state_dict'])
    state['features.3.weight'] = torch.zeros(5, 4, 3, 3)
    bad = dict(good, model_state_dict=state,
               masks=dict(good['masks'], **{'module.features.3': torch.zeros(5, 4, 3, 3, dtype=torch.uint8)}))
    message = _one_line(lambda: _convert(bad))
    assert message.startswith("ckpt.pth.tar: model_state_dict['features.3.weight'] has shape (5, 4, 3, 3); "
                              'expected (4, 4, 3, 3)') and 'fit no registered architecture' in message
    store = dict(good['shared_layer_info']['b'], mystery={})
    message = _one_line(lambda: _convert(dict(good, shared_layer_info=dict(good['shared_layer_info'], b=store))))
    assert 'shared_layer_info holds keys mystery' in message


def test_missing_task_state_gets_one_error_line():
    good = original_checkpoint('vgg', [('a', 5, 1.0, 'linear'), ('b', 5, 1.5, 'linear')])
    info = dict(good['shared_layer_info'])
    del info['b']
    message = _one_line(lambda: _convert(dict(good, shared_layer_info=info)))
    assert message == ("ckpt.pth.tar: key 'shared_layer_info' has no entry for task 'b'; expected one per "
                       "task of 'dataset_history' (a, b)")
    picks = dict(good['shared_layer_info']['b']['piggymask'])
    del picks['features.3']
    info = dict(good['shared_layer_info'], b=dict(good['shared_layer_info']['b'], piggymask=picks))
    message = _one_line(lambda: _convert(dict(good, shared_layer_info=info)))
    assert message.startswith("ckpt.pth.tar: shared_layer_info['b']['piggymask'] has no 'features.3'")
    # a task's BN at another width than its stored multiplier says
    bn = dict(good['shared_layer_info']['a']['bn_layer_weight'], **{'features.1': torch.ones(5)})
    info = dict(good['shared_layer_info'], a=dict(good['shared_layer_info']['a'], bn_layer_weight=bn))
    message = _one_line(lambda: _convert(dict(good, shared_layer_info=info)))
    assert ("shared_layer_info['a']['bn_layer_weight']['features.1'] has shape (5,); expected (4,) "
            "(task 'a' at width multiplier 1 x base width 0.0625; the original stored "
            "network_width_multiplier 1.0)") in message
    state = OrderedDict((k, v) for k, v in good['model_state_dict'].items() if not k.startswith('classifiers.1.'))
    message = _one_line(lambda: _convert(dict(good, model_state_dict=state)))
    assert "model_state_dict has no 'classifiers.1.weight'" in message and "task 2 'b'" in message


def test_a_pick_that_drops_the_tasks_own_weights_is_refused():
    good = original_checkpoint('vgg', [('a', 5, 1.0, 'linear'), ('b', 5, 1.0, 'linear')])
    pick = good['shared_layer_info']['b']['piggymask']['features.0']
    own = good['masks']['module.features.0'] == 2
    with torch.no_grad():
        pick[tuple(own.nonzero()[0].tolist())] = 1e-3
    message = _one_line(lambda: _convert(good))
    assert "shared_layer_info['b']['piggymask']['features.0'] is <= 0.005 on 1 weight(s) that task 'b' owns" in message


def test_raw_multiplier_inverts_the_stored_square_root():
    for m in (1.0, 1.5, 2.0, 2.5, 3.0, 1 / 4096, 1.5 / 4096, 0.0009765625):
        assert raw_multiplier(math.sqrt(m), 'x') == m
    with pytest.raises(CPGError, match='expected a positive number'):
        raw_multiplier(-1.0, 'x')


# ----- the inference script on the original's released layout (end to end) -----------------------
def toy_images(task_index, split, label, n):
    """The fixture's toy images (tests/fixtures/original/README.md), uint8 (n, 32, 32, 3)."""
    rs = np.random.RandomState(1000 * task_index + 10 * (split == 'test') + label)
    if split == 'train':
        levels = np.full(n, (40.0, 215.0)[label])
    else:
        levels = rs.uniform(*((40.0, 150.0), (105.0, 215.0))[label], size=n)
    noise = rs.normal(0.0, 15.0, (n, 32, 32, 3))
    return np.clip(levels[:, None, None, None] + noise, 0, 255).round().astype(np.uint8)


@pytest.mark.slow
def test_inference_script_on_the_originals_layout(tmp_path):
    """experiment1/inference_CPG_cifar100.sh with SETTING=all_max_mul_1.5 on the real file, placed
    as the original's README places its release: the same accuracies as the original's own
    inference on the same test images; then a third task learns on top of it."""
    import subprocess
    from PIL import Image
    with open(os.path.join(FIXTURE, 'expected.json')) as f:
        expected = json.load(f)
    tasks = list(expected['tasks'])
    digest = hashlib.sha256()
    for t, task in enumerate(tasks):
        for split, n in (('train', 40), ('test', 20)):
            for label in (0, 1):
                folder = tmp_path / 'data' / split / task / f'class_{label}'
                folder.mkdir(parents=True)
                images = toy_images(t, split, label, n)
                if split == 'test':
                    digest.update(images.tobytes())
                for i, image in enumerate(images):
                    Image.fromarray(image).save(folder / f'{i:03d}.png')
    assert digest.hexdigest() == expected['test_images_sha256'], 'the toy test images changed'
    released = tmp_path / 'checkpoints' / 'CPG' / 'experiment1' / 'all_max_mul_1.5' / 'custom_vgg_cifar100'
    (released / 'fish' / 'gradual_prune').mkdir(parents=True)
    shutil.copy(os.path.join(FIXTURE, 'checkpoint-2.pth.tar'), released / 'fish' / 'gradual_prune')
    env = subprocess_env(SETTING='all_max_mul_1.5', TASKS=' '.join(tasks), NUM_CLASSES=2,
                         DATA_ROOT=tmp_path / 'data', CHECKPOINT_ROOT=tmp_path / 'checkpoints',
                         RESULTS_FILE=tmp_path / 'results.json', WORKERS=0, NPROC=1, VAL_BATCH_SIZE=50)
    proc = subprocess.run(['bash', 'experiment1/inference_CPG_cifar100.sh'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (released / 'fish' / 'gradual_prune' / 'checkpoint.pth.tar').is_file()
    rows = json.loads((tmp_path / 'results.json').read_text())['tasks']
    assert [r['task'] for r in rows] == tasks
    for row in rows:   # 40 test images each: the same count of correct answers
        assert round(row['accuracy'] * 40) == round(expected['tasks'][row['task']]['accuracy'] * 40), row
    assert 'average accuracy' in proc.stdout
    table = subprocess.run(['python', 'tools/benchmark_table.py', str(tmp_path / 'results.json')], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and 'fish' in table.stdout, table.stdout + table.stderr
    # a third task on top of the imported two (Phase A of the CPG entry point), earlier tasks untouched
    (tmp_path / 'goals.json').write_text(json.dumps({'new_task': '0.0'}))
    shutil.copytree(tmp_path / 'data' / 'train' / 'fish', tmp_path / 'data' / 'train' / 'new_task')
    shutil.copytree(tmp_path / 'data' / 'test' / 'fish', tmp_path / 'data' / 'test' / 'new_task')
    width = '1.5'   # imported as base width 1/64, raw multipliers 1 and 1.5
    proc = subprocess.run(['python', 'CPG_cifar100_main.py', '--mode', 'finetune', '--dataset', 'new_task',
                           '--load_folder', str(released / 'fish' / 'gradual_prune'), '--save_folder',
                           str(tmp_path / 'new_task' / 'scratch'), '--data_root', str(tmp_path / 'data'),
                           '--num_classes', '2', '--epochs', '1', '--workers', '0', '--device', 'cpu',
                           '--network_width_multiplier', width, '--max_allowed_network_width_multiplier', width,
                           '--baseline_acc_file', str(tmp_path / 'goals.json')],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grown = model_from_checkpoint(load_checkpoint(str(tmp_path / 'new_task' / 'scratch'))).eval()
    assert [t['name'] for t in grown.tasks] == tasks + ['new_task']
    imported = model_from_checkpoint(load_checkpoint(str(released / 'fish' / 'gradual_prune'))).eval()
    x = fixture_inputs(expected)
    with torch.no_grad():
        for j, task in enumerate(tasks, 1):
            grown.set_task(j)
            imported.set_task(j)
            assert torch.equal(grown(x), imported(x)), task   # bit-exact: nothing forgotten
            # and the original's own logits (written on another torch build: to float rounding)
            torch.testing.assert_close(grown(x), torch.tensor(expected['tasks'][task]['logits']),
                                       rtol=1e-5, atol=1e-5, msg=task)


@pytest.mark.slow
def test_face_inference_scripts_on_the_originals_layout(tmp_path):
    """experiment3/inference_checkpoints_FvGeEmAg.sh on the released spherenet20/ layout (no
    chosen.json; fold 0 at its released ratio 0.2), and the original's four arguments (age0)."""
    import subprocess
    from cpg_testlib import make_toy_data
    tasks = ('face_verification', 'gender', 'emotion', 'age0')
    data = make_toy_data(tmp_path / 'data', train=8, test=6, layout='face', task_names=list(tasks), classes=3,
                         size=16, identities=5, lfw_people=6, lfw_images=2, pairs=12)
    ckpt = original_checkpoint('sphere', [('face_verification', 5, 1.0, 'angle'), ('gender', 3, 1.0, 'linear'),
                                          ('emotion', 3, 1.0, 'linear'), ('age0', 3, 1.0, 'linear')], flat=1)
    stage = tmp_path / 'checkpoints' / 'CPG' / 'experiment3' / 'spherenet20' / 'age0' / 'gradual_prune' / '0.2'
    stage.mkdir(parents=True)
    torch.save(ckpt, stage / 'checkpoint-7.pth.tar')
    env = subprocess_env(DATA_ROOT=data, PAIRS_FILE=os.path.join(data, 'lfw_pairs.txt'), AGE_FOLDS='0',
                         IMAGE_SIZE=16, WORKERS=0, NPROC=1, CHECKPOINT_ROOT=tmp_path / 'checkpoints',
                         RESULTS_FILE=tmp_path / 'logs' / 'results.json', GPU_ID='cpu')
    proc = subprocess.run(['bash', 'experiment3/inference_checkpoints_FvGeEmAg.sh'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (stage / 'checkpoint.pth.tar').is_file()
    fold = json.loads((tmp_path / 'logs' / 'FvGeEmAg0_results.json').read_text())
    assert [r['task'] for r in fold['tasks']] == list(tasks)
    assert fold['tasks'][0].get('accuracy_std') is not None   # LFW: mean +- std over the folds
    assert (tmp_path / 'logs' / 'results.json').is_file()
    log = tmp_path / 'logs' / 'again.log'
    proc = subprocess.run(['bash', 'experiment3/inference_FvGeEmAg.sh', 'cpu', '0.2', 'age0', str(log)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'reading' not in proc.stdout   # imported once: the up-to-date file is used as it is


@pytest.mark.slow
def test_finegrained_inference_script_on_the_originals_layout(tmp_path):
    """experiment2/inference_CPG_imagenet.sh on the released resnet50/ layout (a CPG file of the
    original at reduced width): converted on the fly, both tasks in the table and RESULTS_FILE."""
    import subprocess
    from cpg_testlib import make_toy_data
    data = make_toy_data(tmp_path / 'data', train=8, test=6, layout='finegrained', task_names=['toy_a', 'toy_b'],
                         classes=3, size=36)
    ckpt = original_checkpoint('resnet', [('toy_a', 3, 1.0, 'linear'), ('toy_b', 3, 1.0, 'linear')])
    folder = tmp_path / 'checkpoints' / 'CPG' / 'experiment2' / 'resnet50' / 'toy_b' / 'gradual_prune'
    folder.mkdir(parents=True)
    torch.save(ckpt, folder / 'checkpoint-14.pth.tar')
    env = subprocess_env(DATA_ROOT=data, TASKS='toy_a toy_b', IMAGE_SIZE=32, WORKERS=0, NPROC=1,
                         CHECKPOINT_ROOT=tmp_path / 'checkpoints', RESULTS_FILE=tmp_path / 'results.json')
    proc = subprocess.run(['bash', 'experiment2/inference_CPG_imagenet.sh'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (folder / 'checkpoint.pth.tar').is_file()
    rows = json.loads((tmp_path / 'results.json').read_text())['tasks']
    assert [r['task'] for r in rows] == ['toy_a', 'toy_b'] and all(0 <= r['accuracy'] <= 1 for r in rows)
