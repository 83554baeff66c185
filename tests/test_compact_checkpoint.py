"""Compact checkpoints (spec §12 item 4): packed picks, small owner ids, the export tool, file size."""

import io
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import models  # noqa: E402
from models import build_model  # noqa: E402
from models.layers import owner_dtype  # noqa: E402
from models.vgg import VGGCifar  # noqa: E402
from cpg_testlib import load_tool, subprocess_env  # noqa: E402
from utils.checkpoint import (checkpoint_metadata, load_checkpoint, model_from_checkpoint,  # noqa: E402
                              save_checkpoint)
from utils.compact import (expand_compact_state, owner_bits, pack_owner_ids,  # noqa: E402
                           unpack_owner_ids)
from utils.grower import assign_free_capacity  # noqa: E402
from utils.manager import build_weight_optimizer  # noqa: E402
from utils.picker import build_pick_optimizer  # noqa: E402


export_tool = load_tool('export')
bench = load_tool('bench_lib')

ARCH = 'custom_vgg_cifar100'
WIDTH = 0.0625


def _train(model, task, steps=2, seed=0):
    """Phase A of `task` for a few steps on random data (picks learned for task >= 2)."""
    gen = torch.Generator().manual_seed(seed)
    bench.begin_all(model, task, learn_pick=task >= 2)
    sgd = build_weight_optimizer(model, task, lr=0.05)
    adam = build_pick_optimizer(model, lr_mask=0.01)  # big enough that some picks flip
    model.set_task(task)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32, generator=gen)
        y = torch.randint(0, 5, (8,), generator=gen)
        for opt in (sgd, adam):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for opt in (sgd, adam):
            if opt is not None:
                opt.step()
    return sgd, adam


def _three_tasks():
    """Tasks 1 and 2 trained, pruned to 50% and finished; task 3 still training (float picks)."""
    torch.manual_seed(0)
    model = build_model(ARCH, base_width=WIDTH)
    for task in (1, 2, 3):
        model.add_task(f't{task}', 5)
        assign_free_capacity(model, task)
        sgd, adam = _train(model, task, seed=task)
        if task < 3:
            bench.release_all(model, task, 0.5)
            bench.end_all(model)
    return model, sgd, adam


@torch.no_grad()
def _logits(model, x, tasks=None):
    model.eval()
    out = []
    for task in tasks or range(1, len(model.tasks) + 1):
        model.set_task(task)
        out.append(model(x))
    return out


@pytest.fixture(scope='module')
def three_tasks():
    return _three_tasks()


def test_frozen_checkpoint_packs_picks_and_uses_uint8_owner(tmp_path, three_tasks):
    model, _, _ = three_tasks
    path = str(tmp_path / 'frozen.pth.tar')
    save_checkpoint(path, model, ARCH, frozen=True)
    state = load_checkpoint(path)['model']
    assert not any('pick_score' in key for key in state)
    for name, layer in model.masked_layers():
        assert state[f'{name}.owner'].dtype == torch.uint8
        for task in (2, 3):
            out_f, in_f = layer.task_shapes[task]
            owner = layer.owner[:out_f, :in_f]
            n_old = int(((owner >= 1) & (owner < task)).sum())
            bits = state[f'{name}.pick_bits_{task}']
            assert bits.dtype == torch.uint8
            assert bits.numel() == math.ceil(n_old / 8)
        assert f'{name}.pick_bits_1' not in state  # task 1 does not pick


def test_owner_dtype_grows_with_task_count():
    assert owner_dtype(20) == torch.uint8
    assert owner_dtype(255) == torch.uint8
    assert owner_dtype(300) == torch.int16


def test_owner_bits_is_the_fewest_that_hold_the_task_count():
    assert [owner_bits(t) for t in (0, 1, 2, 3, 4, 7, 8, 20, 255, 256, 511, 512)] == \
        [1, 1, 2, 2, 3, 3, 4, 5, 8, 9, 9, 10]


@pytest.mark.parametrize('bits', range(1, 17))
def test_owner_ids_pack_and_unpack_at_every_width(bits):
    gen = torch.Generator().manual_seed(bits)
    dtype = torch.uint8 if bits <= 8 else torch.int16
    high = min(1 << bits, torch.iinfo(dtype).max + 1)
    owner = torch.randint(0, high, (5, 3, 3, 3), generator=gen).to(dtype)  # 135 entries: not a whole byte
    owner.view(-1)[:2] = torch.tensor([0, high - 1], dtype=dtype)          # both ends of the range
    packed = pack_owner_ids(owner, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(owner.numel() * bits / 8),)
    back = unpack_owner_ids(packed, owner.shape, bits, dtype)
    assert back.dtype == dtype and torch.equal(back, owner)
    with pytest.raises(ValueError):
        pack_owner_ids(owner.to(torch.int32) + (1 << bits) - int(owner.max()), bits)  # one id too big


def test_more_than_255_tasks(tmp_path, monkeypatch):
    """257 tasks: ids past 255 need int16 owners and 9-bit packing. The model is the VGG of this
    repository cut to one conv (plus its two FC layers), so 257 tasks' norms, biases and heads
    load in seconds. Tasks 1..256 are registered and handed owner ids directly (training them
    would take minutes); task 257 is a real picking task over them: trained, pruned, frozen."""
    arch = 'vgg_one_conv_test'
    monkeypatch.setitem(models.MODELS, arch, lambda base_width=1.0, multiplier=1.0:
                        VGGCifar([64, 'M', 'M', 'M', 'M', 'M'], base_width, multiplier))
    torch.manual_seed(0)
    model = models.build_model(arch, base_width=WIDTH)
    for task in range(1, 257):
        model.add_task(f't{task}', 5)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in model.masked_layers():
            assert layer.owner.dtype == torch.int16  # widened when task 256 was added
            layer.owner.copy_(torch.randint(0, 257, layer.owner.shape, generator=gen))  # 0 = free
    task = model.add_task('t257', 5)
    assign_free_capacity(model, task)
    _train(model, task, seed=task)
    bench.release_all(model, task, 0.5)
    bench.end_all(model)
    owners = {name: layer.owner.clone() for name, layer in model.masked_layers()}
    assert max(int(o.max()) for o in owners.values()) == 257
    assert all(hasattr(layer, 'pick_bits_257') for _, layer in model.masked_layers())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    checked = (1, 200, 255, 256, 257)  # 256, 257: ids a uint8 would wrap to 0 (free) and 1
    expected = _logits(model, x, checked)

    path = str(tmp_path / 'tasks257.pth.tar')
    save_checkpoint(path, model, arch, frozen=True)
    state = load_checkpoint(path)['model']
    for name, owner in owners.items():  # the training checkpoint keeps whole int16 ids
        assert state[f'{name}.owner'].dtype == torch.int16 and torch.equal(state[f'{name}.owner'], owner)

    out = str(tmp_path / 'deploy.pth.tar')
    export_tool.export(path, out)
    ckpt = load_checkpoint(out)
    assert ckpt['owner_bits'] == 9
    for name, owner in owners.items():
        assert ckpt['model'][f'{name}.owner_packed'].numel() == math.ceil(owner.numel() * 9 / 8)
    exported = model_from_checkpoint(ckpt)
    for name, layer in exported.masked_layers():
        assert layer.owner.dtype == torch.int16 and torch.equal(layer.owner, owners[name]), name
    for task, want, got in zip(checked, expected, _logits(exported, x, checked)):
        assert torch.equal(want, got), f'task {task} differs after the 9-bit export'


def test_export_of_resume_file_strips_extras_and_reproduces_every_task(tmp_path, three_tasks):
    model, sgd, adam = three_tasks
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    expected = _logits(model, x)
    resume = str(tmp_path / 'resume.pth.tar')
    save_checkpoint(resume, model, ARCH, frozen=False, sgd=sgd.state_dict(), adam=adam.state_dict(), epoch=3)
    assert any('pick_score' in key for key in load_checkpoint(resume)['model'])
    out = str(tmp_path / 'deploy' / 'model.pth.tar')
    assert export_tool.main(export_tool.get_args_parser().parse_args(['--checkpoint', resume, '--out', out])) == 0
    ckpt = load_checkpoint(out)
    # no sgd/adam/epoch
    assert set(ckpt) == set(checkpoint_metadata(model, ARCH)) | {'model', 'owner_bits', 'checkpoint_id'}
    assert not any('pick_score' in key for key in ckpt['model'])
    assert os.path.getsize(out) < os.path.getsize(resume)
    exported = model_from_checkpoint(ckpt)
    assert all(layer.pick_score is None for _, layer in exported.masked_layers())
    for task, (want, got) in enumerate(zip(expected, _logits(exported, x)), start=1):
        assert torch.equal(want, got), f'task {task} differs after export'


def test_export_of_folder_with_frozen_checkpoint(tmp_path, three_tasks):
    model, _, _ = three_tasks
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    expected = _logits(model, x)
    folder = tmp_path / 'gradual_prune'
    save_checkpoint(str(folder / 'checkpoint.pth.tar'), model, ARCH, frozen=True)
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    args = export_tool.get_args_parser().parse_args(['--checkpoint', str(folder), '--out', str(out_dir)])
    assert export_tool.main(args) == 0
    exported = model_from_checkpoint(load_checkpoint(str(out_dir)))
    for want, got in zip(expected, _logits(exported, x)):
        assert torch.equal(want, got)


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize('kind', ['missing', 'corrupt'])
def test_export_bad_input_is_one_line_and_exit_1(tmp_path, kind):
    source = tmp_path / 'checkpoint.pth.tar'
    if kind == 'corrupt':
        source.write_bytes(b'not a checkpoint at all')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'export.py'), '--checkpoint',
                           str(source), '--out', str(tmp_path / 'out.pth.tar')],
                          capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and str(source) in lines[0]
    assert not (tmp_path / 'out.pth.tar').exists()


# ----- file size of a simulated 20-task model -----------------------------------------------------
# ~2.1M shared weights. torch.save spends ~330 bytes on every stored tensor, and at T=20 the shared
# part alone is 300 tensors (weights, owners, 19 tasks' picks per layer): 0.05 byte per weight here,
# 0.19 at width 0.125, where it would eat most of the 5% the bound allows for the file format.
SIZE_WIDTH = 0.25


def _on_disk(tensors):
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getbuffer().nbytes


def _size_entry(model_layers, path):
    """Bytes of the file at `path` and its per-task share (norms, biases, heads) per shared weight."""
    state = load_checkpoint(path)['model']
    shared = {f'{n}.{p}' for n in model_layers for p in ('weight', 'owner', 'owner_packed')}
    per_task = {k: v for k, v in state.items() if k not in shared and '.pick_bits_' not in k}
    return {'path': path, 'state': state, 'bytes': os.path.getsize(path), 'per_task': _on_disk(per_task)}


@pytest.fixture(scope='module')
def simulated(tmp_path_factory):
    """A model through 20 simulated tasks; its training (frozen) checkpoints after 2 and 20 tasks
    and their exports: {'model', 'n', 'frozen': {T: entry}, 'exported': {T: entry}}."""
    folder = tmp_path_factory.mktemp('size')
    model = build_model(ARCH, base_width=SIZE_WIDTH)
    names = [name for name, _ in model.masked_layers()]
    frozen, exported = {}, {}

    def snapshot(model, task):
        if task in (2, 20):
            path = str(folder / f'tasks{task}.pth.tar')
            save_checkpoint(path, model, ARCH, frozen=True)
            frozen[task] = _size_entry(names, path)
            out = str(folder / f'export{task}.pth.tar')
            export_tool.export(path, out)
            exported[task] = _size_entry(names, out)

    bench.simulate_tasks(model, 20, torch.Generator().manual_seed(0), snapshot)
    n = sum(layer.weight.numel() for _, layer in model.masked_layers())
    return {'model': model, 'n': n, 'frozen': frozen, 'exported': exported}


def test_twenty_task_file_holds_exactly_weights_owner_and_old_entry_picks(simulated):
    model, n, entry = simulated['model'], simulated['n'], simulated['frozen'][20]
    state = entry['state']
    pick_bytes = 0
    for name, layer in model.masked_layers():
        assert state[f'{name}.owner'].dtype == torch.uint8  # training checkpoints keep whole ids
        for task in range(2, 21):
            out_f, in_f = layer.task_shapes[task]
            owner = layer.owner[:out_f, :in_f]
            n_old = int(((owner >= 1) & (owner < task)).sum())
            assert state[f'{name}.pick_bits_{task}'].numel() == math.ceil(n_old / 8)
            pick_bytes += math.ceil(n_old / 8)
    assert pick_bytes <= 19 * n / 8 + 19 * 15
    # 4 bytes of weight + 1 byte of owner + the packed picks, +5% for the file format
    assert entry['bytes'] / n <= (4 + 1 + pick_bytes / n) * 1.05 + entry['per_task'] / n


@pytest.mark.parametrize('tasks', [2, 20])
def test_exported_file_meets_four_plus_t_over_eight(simulated, tasks):
    n, entry = simulated['n'], simulated['exported'][tasks]
    assert entry['bytes'] / n <= (4 + tasks / 8) * 1.05 + entry['per_task'] / n
    assert entry['bytes'] < simulated['frozen'][tasks]['bytes']


def test_twenty_task_export_packs_owner_ids_in_five_bits_and_round_trips(simulated):
    model, entry = simulated['model'], simulated['exported'][20]
    ckpt = load_checkpoint(entry['path'])
    assert ckpt['owner_bits'] == 5
    state = ckpt['model']
    assert not any(key.endswith('.owner') for key in state)
    for name, layer in model.masked_layers():
        packed = state[f'{name}.owner_packed']
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(layer.owner.numel() * 5 / 8)
    exported = model_from_checkpoint(ckpt)
    for (name, layer), (_, back) in zip(model.masked_layers(), exported.masked_layers()):
        assert back.owner.dtype == torch.uint8 and torch.equal(back.owner, layer.owner), name
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for task, (want, got) in enumerate(zip(_logits(model, x), _logits(exported, x)), start=1):
        assert torch.equal(want, got), f'task {task} differs after export'


def test_exported_file_loads_on_the_meta_device(simulated):
    ckpt = load_checkpoint(simulated['exported'][20]['path'])
    with warnings.catch_warnings():  # torch warns that copying into meta tensors is a no-op
        warnings.simplefilter('ignore')
        model = model_from_checkpoint(ckpt, 'meta')
    tensors = dict(model.named_parameters(), **dict(model.named_buffers()))
    assert tensors and all(t.device.type == 'meta' for t in tensors.values()), \
        [name for name, t in tensors.items() if t.device.type != 'meta']
    expanded = expand_compact_state(ckpt, model)  # the unpacked ids are made on the model's device
    for name, layer in model.masked_layers():
        owner = expanded[f'{name}.owner']
        assert owner.device.type == 'meta' and owner.dtype == torch.uint8
        assert owner.shape == ckpt['model'][f'{name}.weight'].shape
