"""Every tensor on the model's device after any load (checkpoint, resume file, export).

The `meta` device catches stray CPU tensors without a GPU: a tensor that a loader creates on the
CPU (e.g. with `empty_like(saved_value)`) stays on the CPU while everything else is on `meta`.
"""
import os

import pytest
import torch

from cpg_testlib import DEVICE, begin_all, fixed_inputs, load_tool, learn_task, task_logits, tiny_model
from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

ARCH = 'custom_vgg_cifar100'
export_tool = load_tool('export')


def _tensors(model):
    return list(model.named_parameters()) + list(model.named_buffers())


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """Frozen checkpoints after 1, 2 and 3 tasks (task 2 grown to 1.5, picks learned) + a resume file."""
    folder = tmp_path_factory.mktemp('device')
    model = tiny_model()
    paths = {}
    for task, width in ((1, 1.0), (2, 1.5), (3, 1.5)):
        model.add_task(f't{task}', 5, multiplier=width)
        learn_task(model, task, sparsity=0.5, seed=task)
        paths[task] = str(folder / f'tasks{task}.pth.tar')
        save_checkpoint(paths[task], model, ARCH)
    model.add_task('t4', 5)
    learn_task(model, 4)  # ... then task 4 stopped mid-Phase A: its float pick is in the resume file
    begin_all(model, 4, learn_pick=True)
    paths['resume'] = str(folder / 'resume.pth.tar')
    save_checkpoint(paths['resume'], model, ARCH, frozen=False, epoch=1)
    return paths


@pytest.mark.parametrize('tasks', [1, 2, 3])
@pytest.mark.filterwarnings('ignore:for .*meta parameter')
def test_checkpoint_loads_every_tensor_onto_the_meta_device(checkpoints, tasks):
    model = model_from_checkpoint(load_checkpoint(checkpoints[tasks]), 'meta')
    assert len(model.tasks) == tasks
    stray = [name for name, tensor in _tensors(model) if tensor.device.type != 'meta']
    assert stray == [], f'left off the model device: {stray}'
    if tasks >= 2:  # the packed picks of finished tasks are among the loaded buffers
        assert any('pick_bits_2' in name for name, _ in model.named_buffers())
    assert model.multiplier == (1.0 if tasks == 1 else 1.5)


@pytest.mark.parametrize('source', [3, 'resume'])
def test_loads_and_exports_on_the_test_device_reproduce_every_task(checkpoints, source, tmp_path):
    """On CPG_TEST_DEVICE (cuda on a GPU machine) a checkpoint, a resume file and an exported file
    all load with every tensor there, and every task's logits equal those of the CPU load."""
    path = checkpoints[source]
    exported = str(tmp_path / 'deploy.pth.tar')
    export_tool.export(path, exported)
    x = fixed_inputs()
    reference = task_logits(model_from_checkpoint(load_checkpoint(path), 'cpu'), x)
    for file in (path, exported):
        model = model_from_checkpoint(load_checkpoint(file), DEVICE)
        stray = [name for name, tensor in _tensors(model) if tensor.device.type != torch.device(DEVICE).type]
        assert stray == [], f'{os.path.basename(file)}: left off {DEVICE}: {stray}'
        logits = task_logits(model, x.to(DEVICE))
        for task, expected in reference.items():
            got = logits[task].cpu()
            if torch.device(DEVICE).type == 'cpu':
                assert torch.equal(got, expected), task
            else:  # another device's kernels round differently; the masks and weights are the same
                assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), task


@pytest.mark.filterwarnings('ignore:for .*meta parameter')
def test_resnet50_checkpoint_loads_every_tensor_onto_the_meta_device(tmp_path):
    """The same for experiment 2's ResNet-50 (per-task BN in every bottleneck and downsample):
    two tasks, the second grown to 1.5 and picking, then loaded on `meta`."""
    from models import build_model
    torch.manual_seed(0)
    model = build_model('resnet50', base_width=0.0625).to(DEVICE)
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.5, seed=1)
    model.add_task('t2', 5, multiplier=1.5)
    learn_task(model, 2, seed=2)
    path = str(tmp_path / 'resnet.pth.tar')
    save_checkpoint(path, model, 'resnet50')
    loaded = model_from_checkpoint(load_checkpoint(path), 'meta')
    stray = [name for name, tensor in _tensors(loaded) if tensor.device.type != 'meta']
    assert stray == [], f'left off the model device: {stray}'
    assert any('pick_bits_2' in name for name, _ in loaded.named_buffers())
    assert [t['head'] for t in loaded.tasks] == ['linear', 'linear'] and loaded.multiplier == 1.5
