"""Progressive Neural Networks (models/progressive.py) on the CPG engine: earlier columns never
change (bitwise-equal logits and tensors), only the newest column trains, checkpoints and the real
Phase A keep every task, pretrained loading matches torchvision and works for every column, the
adapters hold the parameters of Rusu et al.'s reduced adapter, nothing strays off the device."""
import json

import pytest
import torch

import CPG_imagenet_main as cli
from cpg_testlib import (DEVICE, TensorTasks, fixed_inputs, one_line_error, snapshot, task_logits,
                         to_device, torchvision_resnet50, train_steps)
from models import MODELS, build_model, read_pretrained_state
from models.progressive import POINTS, ProgressiveNet, progressive_resnet50
from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from utils.grower import assign_free_capacity, owns_any
from utils.manager import build_weight_optimizer, task_parameters

ARCH = 'progressive_resnet50'
TINY = 0.0625   # columns of 4..128 channels: a training step in milliseconds
TASKS = 3
# ResNet-50's widths at the 5 lateral points (stem, layer1..layer4 outputs) and the adapters'
# projection widths c // 32, written out rather than read from the module under test
WIDTHS = (64, 256, 512, 1024, 2048)
REDUCED = (2, 8, 16, 32, 64)
RESNET50_BACKBONE = 23_508_032   # torchvision resnet50's parameters less fc (2048 * 1000 + 1000)


def _tiny(tasks=0, seed=0):
    torch.manual_seed(seed)
    model = build_model(ARCH, base_width=TINY).to(DEVICE)
    for k in range(1, tasks + 1):
        model.add_task(f't{k}', 5)
    return model


def _column_state(model, task):
    return {k: v.detach().clone() for k, v in model.columns.per_task[str(task)].state_dict().items()}


@pytest.fixture(scope='module')
def learned():
    """Three tasks learned one after another (3 SGD steps each, train mode), with every task's
    eval logits and the whole state dict recorded right after each task."""
    model, x = _tiny(), fixed_inputs()
    logits, states, fresh = {}, {}, {}
    for task in range(1, TASKS + 1):
        model.add_task(f't{task}', 5)
        fresh[task] = _column_state(model, task)
        sgd = build_weight_optimizer(model, task, lr=0.05)
        train_steps(model, task, [sgd], 3, torch.Generator().manual_seed(task))
        logits[task], states[task] = task_logits(model, x), snapshot(model)
    return {'model': model, 'x': x, 'logits': logits, 'states': states, 'fresh': fresh}


def test_earlier_tasks_stay_bitwise_identical(learned):
    logits, states, fresh = learned['logits'], learned['states'], learned['fresh']
    for later in range(2, TASKS + 1):
        for task in range(1, later):
            assert torch.equal(logits[later][task], logits[task][task]), (task, later)
        # the state after task t holds exactly tasks 1..t: columns, adapters, BN buffers, heads
        for task in range(1, later):
            for key, value in states[task].items():
                assert torch.equal(states[later][key], value), (key, later)
    for task in range(1, TASKS + 1):   # ... and the newest column did learn, its BN statistics too
        prefix = f'columns.per_task.{task}.'
        assert not torch.equal(states[task][prefix + 'conv1.weight'], fresh[task]['conv1.weight'])
        assert not torch.equal(states[task][prefix + 'bn1.running_mean'], fresh[task]['bn1.running_mean'])
        assert int(states[task][prefix + 'layer4.2.bn3.num_batches_tracked']) == 3
        assert torch.isfinite(logits[task][task]).all() and logits[task][task].shape == (4, 5)


def test_only_the_newest_column_its_adapters_and_head_train():
    model = _tiny(TASKS)
    assert MODELS[ARCH] is progressive_resnet50 and isinstance(model, ProgressiveNet)
    column = model.columns.per_task['3']
    # one adapter per point, reading both earlier columns (4w channels at the stem: 2 x 4 in)
    assert set(column.laterals) == set(POINTS) and column.laterals['layer1'].project.in_channels == 8
    assert len(model.columns.per_task['1'].laterals) == 0
    params = task_parameters(model, 3)
    expected = list(column.parameters()) + list(model.heads['3'].parameters())
    assert {id(p) for p in params} == {id(p) for p in expected} and len(params) == len(expected)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(('columns.per_task.3.', 'heads.3.'))}
    # one step: no gradient reaches an earlier column, adapter or head
    train_steps(model, 3, [torch.optim.SGD(params, lr=0.01)], 1, torch.Generator().manual_seed(0))
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert all(model.columns.per_task[str(k)].training for k in (1, 2, 3))   # modes restored
    # no masked layer: the engine's capacity steps are no-ops, Phase A reports "owns nothing"
    assert model.masked_layers() == [] and model.layer_shapes(1.0) == {}
    assign_free_capacity(model, 3)
    assert not owns_any(model, 3)
    # growth is meaningless: one-line errors, the model untouched
    assert 'max_allowed_network_width_multiplier 1.0' in one_line_error(lambda: model.add_task('t4', 5, 1.5))
    assert len(model.tasks) == TASKS and '4' not in model.heads
    assert 'cannot change its width' in one_line_error(lambda: model.widen(2.0))
    assert 'no width multiplier' in one_line_error(lambda: progressive_resnet50(multiplier=1.5))


def test_checkpoint_round_trip_keeps_every_task(learned, tmp_path):
    model, x = learned['model'], learned['x']
    before = task_logits(model, x)
    path = str(tmp_path / 'progressive.pth.tar')
    save_checkpoint(path, model, ARCH)
    loaded = model_from_checkpoint(load_checkpoint(path), DEVICE)
    assert isinstance(loaded, ProgressiveNet) and loaded.tasks == model.tasks
    after = task_logits(loaded, x)
    for task in range(1, TASKS + 1):
        assert torch.equal(after[task], before[task]), task


def _phase_a(tmp_path, dataset, load_folder=None):
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'t1': '0.0', 't2': '0.0'}))
    argv = ['--mode', 'finetune', '--arch', ARCH, '--dataset', dataset, '--base_width', str(TINY),
            '--save_folder', str(tmp_path / dataset), '--baseline_acc_file', str(goals),
            '--device', DEVICE, '--batch_size', '16', '--val_batch_size', '20', '--workers', '0',
            '--image_size', '32', '--epochs', '1', '--lr', '0.01', '--no-learn_pick',
            '--max_allowed_network_width_multiplier', '1.0', '--resume_every_minutes', '0',
            '--pruning_ratio_to_acc_record_file', str(tmp_path / dataset / 'record.txt')]
    if load_folder:
        argv += ['--load_folder', load_folder]
    parser = cli.get_args_parser()
    args = parser.parse_args(argv)
    cli.check_args(parser, args)
    return args


def test_real_phase_a_keeps_task_1(tmp_path, monkeypatch):
    """CPG_imagenet_main's Phase A, task 1 from scratch, then task 2 on task 1's checkpoint. A
    progressive net owns no shared weight, so Phase A ends with status 5 (owns nothing: the
    scripts skip pruning)."""
    monkeypatch.setattr(cli, 'FineGrainedTasks', TensorTasks)
    first = _phase_a(tmp_path, 't1')
    assert cli.main(first) == 5
    second = _phase_a(tmp_path, 't2', load_folder=first.save_folder)
    assert cli.main(second) == 5
    one, two = load_checkpoint(first.save_folder), load_checkpoint(second.save_folder)
    assert [t['name'] for t in two['tasks']] == ['t1', 't2'] and two['arch'] == ARCH
    for key, value in one['model'].items():   # every tensor of task 1 (column, BN buffers, head)
        assert torch.equal(two['model'][key], value), key
    x = fixed_inputs()
    logits_one = task_logits(model_from_checkpoint(one, DEVICE), x)
    logits_two = task_logits(model_from_checkpoint(two, DEVICE), x)
    assert torch.equal(logits_two[1], logits_one[1])
    assert torch.isfinite(logits_two[2]).all()


def test_pretrained_first_column_equals_torchvision():
    net = torchvision_resnet50()
    model = progressive_resnet50()
    model.add_task('imagenet', 1000)
    assert model.load_pretrained(net.state_dict(), 1) == {'copied': 320, 'head_from_fc': True}
    net, model = net.to(DEVICE).eval(), model.to(DEVICE).eval()
    model.set_task(1)
    x = to_device(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        ours, theirs = model(x), net(x)
    assert theirs.abs().max() > 1.0 and torch.equal(ours, theirs), (ours - theirs).abs().max()
    # only the newest column may take weights: later columns read earlier ones through laterals
    model.add_task('birds', 200)
    state = net.state_dict()
    assert 'load them into the newest task' in one_line_error(lambda: model.load_pretrained(state, 1))
    assert 'BASE_WIDTH 1.0' in one_line_error(lambda: _tiny(1).load_pretrained(state, 1))


@pytest.mark.filterwarnings('ignore:for .*meta parameter')
def test_meta_device_builds_and_runs_task_2(learned, tmp_path):
    path = str(tmp_path / 'progressive.pth.tar')
    save_checkpoint(path, learned['model'], ARCH)
    model = model_from_checkpoint(load_checkpoint(path), 'meta')
    model.add_task('t4', 7)   # a new column and head go where the model is
    stray = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
             if t.device.type != 'meta']
    assert stray == [], f'left off the model device: {stray}'
    x = torch.empty(2, 3, 32, 32, device='meta')
    for task, classes in ((2, 5), (4, 7)):
        model.set_task(task)
        model.train()   # earlier columns switch to eval inside the forward, on meta too
        out = model(x)
        assert out.device.type == 'meta' and out.shape == (2, classes)


def _adapter_parameters(k):
    """Column k's adapters: per point V ((k-1) c -> r, 1x1), BN on r (weight, bias), U (r -> c), alpha."""
    if k == 1:
        return 0
    return sum((k - 1) * c * r + 2 * r + r * c + 1 for c, r in zip(WIDTHS, REDUCED))


@pytest.mark.filterwarnings('ignore:for .*meta parameter')
def test_adapter_parameters_follow_rusu_reduced_adapter():
    with torch.device('meta'):   # six full-size columns, nothing allocated
        model = progressive_resnet50()
        for k in range(1, 7):
            model.add_task(f't{k}', 10)
    assert all(p.device.type == 'meta' for p in model.parameters())
    adapters = {n: p.numel() for n, p in model.named_parameters() if '.laterals.' in n}
    for k in range(1, 7):
        got = sum(v for n, v in adapters.items() if n.startswith(f'columns.per_task.{k}.'))
        assert got == _adapter_parameters(k), k
    # 20 * sum(c * r) = 20 * 174,208, BN 2 * (2+8+16+32+64) = 244 per column, 5 alphas per column
    assert sum(adapters.values()) == 20 * 174_208 + 5 * 244 + 25 == 3_485_405
    columns = sum(p.numel() for n, p in model.named_parameters()
                  if n.startswith('columns.') and '.laterals.' not in n)
    assert columns == 6 * RESNET50_BACKBONE   # every column is a torchvision ResNet-50 backbone
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes['columns.per_task.6.laterals.head.project.weight'] == (64, 5 * 2048, 1, 1)
    assert shapes['columns.per_task.6.laterals.head.expand.weight'] == (2048, 64, 1, 1)
    assert shapes['columns.per_task.2.laterals.layer1.alpha'] == (1,)


@pytest.fixture(scope='module')
def pretrained_file(tmp_path_factory):
    """A random torchvision ResNet-50 (BN tensors that matter) saved as a user saves the
    IMAGENET1K_V1 file, and its state dict."""
    net = torchvision_resnet50()
    path = tmp_path_factory.mktemp('pretrained') / 'resnet50.pth'
    torch.save(net.state_dict(), path)
    return str(path), net.state_dict()


def _loaded_from(column, file_state):
    """Keys of the file (fc aside) whose tensor the column holds exactly."""
    own = column.state_dict()
    return {k for k, v in file_state.items() if not k.startswith('fc.') and torch.equal(own[k].cpu(), v)}


def test_every_column_starts_from_the_pretrained_file(pretrained_file):
    path, file_state = pretrained_file
    state = read_pretrained_state(path)   # as the engine reads --pretrained
    # what the engine reads to allow --pretrained beyond the first task (with --load_folder)
    assert MODELS[ARCH].pretrained_every_task and not getattr(MODELS['resnet50'], 'pretrained_every_task', False)
    backbone = {k for k in file_state if not k.startswith('fc.')}
    torch.manual_seed(0)
    model = progressive_resnet50().to(DEVICE)
    model.add_task('imagenet', 1000)
    assert model.load_pretrained(state, 1) == {'copied': 320, 'head_from_fc': True}
    x = to_device(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    first = task_logits(model, x)[1]

    model.add_task('birds', 200)
    column = model.columns.per_task['2']
    assert _loaded_from(column, file_state) == set()   # a new column starts from random init
    head, laterals = snapshot(model.heads['2']), snapshot(column.laterals)
    # 318 = the file's 320 tensors less fc's 2: 200 classes keep the fresh head
    assert model.load_pretrained(state, 2) == {'copied': 318, 'head_from_fc': False}
    assert _loaded_from(column, file_state) == backbone   # every conv / BN tensor of the file
    assert all(torch.equal(model.heads['2'].state_dict()[k], v) for k, v in head.items())
    assert all(torch.equal(column.laterals.state_dict()[k], v) for k, v in laterals.items())

    # train column 2 (adapters included): column 1 reads nothing of it, its logits stay bit-exact
    sgd = build_weight_optimizer(model, 2, lr=0.01)
    train_steps(model, 2, [sgd], 2, torch.Generator().manual_seed(3), classes=200)
    assert _loaded_from(column, file_state) != backbone   # it did train
    assert torch.equal(task_logits(model, x)[1], first)

    model.add_task('imagenet_again', 1000)   # a 1000-class task: its head is the file's fc
    assert model.load_pretrained(state, 3) == {'copied': 320, 'head_from_fc': True}
    assert _loaded_from(model.columns.per_task['3'], file_state) == backbone
    assert torch.equal(model.heads['3'].weight.cpu(), file_state['fc.weight'])
    assert torch.equal(task_logits(model, x)[1], first)


def test_pretrained_errors_are_one_line_and_change_nothing(pretrained_file):
    _, file_state = pretrained_file
    torch.manual_seed(0)
    model = progressive_resnet50()
    model.add_task('imagenet', 1000)
    model.add_task('birds', 200)
    before = snapshot(model)
    missing = {k: v for k, v in file_state.items() if k != 'layer3.1.conv2.weight'}
    unexpected = dict(file_state, **{'layer5.0.conv1.weight': torch.zeros(1)})
    shape = dict(file_state, **{'layer2.0.conv2.weight': torch.zeros(128, 128, 1, 1)})
    fc = dict(file_state, **{'fc.weight': torch.zeros(1000, 512)})
    cases = [(missing, "is missing key(s) for a torchvision ResNet-50: layer3.1.conv2.weight"),
             (unexpected, "has unexpected key(s) for a torchvision ResNet-50: layer5.0.conv1.weight"),
             (shape, "'layer2.0.conv2.weight' has shape (128, 128, 1, 1) but the model expects "
                     "(128, 128, 3, 3)"),
             (fc, "'fc.weight' has shape (1000, 512) but the model expects (classes, 2048)")]
    for bad, message in cases:
        assert message in one_line_error(lambda: model.load_pretrained(bad, 2))
        after = snapshot(model)   # every check runs before the first copy
        assert all(torch.equal(after[k], v) for k, v in before.items()), message
