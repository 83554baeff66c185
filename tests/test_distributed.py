"""Distributed training (utils/distributed.py, models/dist_norm.py) on CPU with the gloo backend.

Two ranks (subprocesses with torchrun's environment, loopback only) train a tiny VGG on toy tensors
with per-rank batch 8; a single process trains the same model with batch 16 from the same seed.
Task 1 is trained while being gradually pruned (owner masks broadcast from rank 0), task 2 learns
a pick mask over task 1's weights. The ranks must agree exactly; the single process must agree
on weights (float tolerance), masks (all but a handful of entries at a cutoff) and accuracy.

This file is also the worker script: `python tests/test_distributed.py OUT` (env: RANK, ...).
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests import `models` / `utils` whatever directory pytest was started from.
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from models import build_model  # noqa: E402
from models.dist_norm import BatchNorm2d  # noqa: E402
from utils.distributed import Distributed, RankSeededSampler  # noqa: E402

GLOBAL_BATCH = 16
SAMPLES = 64
CLASSES = 5
EPOCHS = 2               # 4 steps an epoch
BN_ROWS = 12             # rows of the BatchNorm check, split unevenly over 2 ranks (5 + 7)
TIMEOUT = 240


# ---------------------------------------------------------------------------------------------------
# worker (runs in a subprocess: one per rank, or one single process with WORLD_SIZE=1)
# ---------------------------------------------------------------------------------------------------
def _toy_data():
    g = torch.Generator().manual_seed(123)
    images = torch.randn(SAMPLES, 3, 32, 32, generator=g)
    targets = torch.randint(0, CLASSES, (SAMPLES,), generator=g)
    # a learnable signal: class-dependent shift of the mean of one channel
    images[:, 0] += targets.view(-1, 1, 1).float() * 0.5
    return images, targets


def _bn_inputs():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(BN_ROWS, 4, 3, 3, generator=g) * 3.0 + 2.0   # non-zero mean and scale
    coef = torch.randn(BN_ROWS, 4, 3, 3, generator=g)             # loss = sum(y * coef)
    return x, coef


def _bn_rows(rank, world):
    if world == 1:
        return slice(0, BN_ROWS)
    return slice(0, 5) if rank == 0 else slice(5, BN_ROWS)


def _bn_check(dist, rank, world):
    """Two training forwards/backwards of the cross-rank BatchNorm on this rank's rows."""
    x_all, coef_all = _bn_inputs()
    rows = _bn_rows(rank, world)
    bn = BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 4))
        bn.bias.copy_(torch.linspace(-0.2, 0.2, 4))
    out = {}
    for it in range(2):
        x = x_all[rows].clone().requires_grad_(True)
        y = bn(x)
        (y * coef_all[rows]).sum().backward()
        out[f'y{it}'], out[f'xgrad{it}'] = y.detach(), x.grad
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    if dist is not None:
        dist.all_reduce_sum(grads)  # the parameter gradient of the summed loss
    out['param_grad'] = grads
    out['state'] = {k: v.clone() for k, v in bn.state_dict().items()}
    return out


def _diverged_pruning(dist, rank):
    """broadcast_owners when a rank pruned differently: everything becomes rank 0's."""
    from types import SimpleNamespace

    from models.layers import MaskedLinear
    torch.manual_seed(11)
    layer = MaskedLinear(6, 4)
    layer.add_task(1, 4, 6)
    layer.owner.fill_(1)
    layer.begin_phase(1, learn_pick=False, fixed_pick=False, weight_decay=0.0)
    sgd = torch.optim.SGD([layer.weight], lr=0.1, momentum=0.9)
    layer.weight.grad = torch.ones_like(layer.weight)
    sgd.step()  # creates the momentum buffer
    released = [(0, 0), (1, 2)] if rank == 0 else [(0, 0), (3, 5)]
    with torch.no_grad():
        for i, j in released:
            layer.owner[i, j] = 0
            layer.weight[i, j] = 0.0
            sgd.state[layer.weight]['momentum_buffer'][i, j] = 0.0
        if rank == 1:
            layer.weight[2, 2] += 1.0
    before = dist.owner_mismatches
    dist.broadcast_owners(SimpleNamespace(layers=[layer], task=1, optimizer=sgd))
    return {'owner': layer.owner.clone(), 'weight': layer.weight.detach().clone(),
            'momentum': sgd.state[layer.weight]['momentum_buffer'].clone(),
            'own': layer._phase['own'].clone(), 'mismatches': dist.owner_mismatches - before}


def _masks(model, task):
    return {name: layer.task_keep_mask(task).clone() for name, layer in model.masked_layers()}


@torch.no_grad()
def _evaluate(model, task, images, targets):
    model.set_task(task)
    model.eval()
    logits = model(images)
    return logits, float((logits.argmax(1) == targets).float().mean())


def run_worker(out_path):
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from utils.grower import assign_free_capacity
    from utils.manager import Manager, build_weight_optimizer
    from utils.picker import build_pick_optimizer
    from utils.pruner import GradualPruner

    torch.set_num_threads(1)
    dist = Distributed.from_env('cpu')
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    result = {'rank': rank, 'world': world, 'bn': _bn_check(dist, rank, world)}

    images, targets = _toy_data()
    dataset = TensorDataset(images, targets)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)
    reduce = dist.all_reduce_sum if dist is not None else None

    torch.manual_seed(0)  # identical init everywhere (DDP also broadcasts rank 0's at wrap)
    model = build_model('custom_vgg_cifar100', base_width=0.0625)

    # task 1: train on all capacity while pruning it gradually to 50%
    task = model.add_task('t1', CLASSES)
    assign_free_capacity(model, task)
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=False, fixed_pick=False, weight_decay=4e-5)
    sgd = build_weight_optimizer(model, task, lr=0.05)
    net = dist.wrap(model) if dist is not None else model
    pruner = GradualPruner(model, task, 0.0, 0.5, begin_step=0, end_step=6, frequency=2,
                           optimizer=sgd)
    if dist is not None:
        pruner.after_update = dist.broadcast_owners
    manager = Manager(model, task, 'cpu', loader, None, None, net=net, reduce=reduce,
                      show_progress=False)
    step, train1 = 0, []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        metrics, step = manager.train_epoch(epoch, [sgd], pruner=pruner, step=step)
        train1.append(metrics)
    pruner.finalize()
    for _, layer in model.masked_layers():
        layer.end_phase()
    del net, manager

    # task 2: learn a pick mask over task 1's surviving weights and train the freed capacity
    task = model.add_task('t2', CLASSES)
    assign_free_capacity(model, task)
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=True, fixed_pick=False, weight_decay=4e-5)
    sgd = build_weight_optimizer(model, task, lr=0.05)
    adam = build_pick_optimizer(model, lr_mask=2e-3)
    net = dist.wrap(model) if dist is not None else model
    manager = Manager(model, task, 'cpu', loader, None, None, net=net, reduce=reduce,
                      show_progress=False)
    train2 = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        metrics, _ = manager.train_epoch(epoch, [sgd, adam])
        train2.append(metrics)
    picks_live = _masks(model, task)  # from the float pick scores
    for _, layer in model.masked_layers():
        layer.end_phase()
    del net, manager

    result.update(
        owner={name: layer.owner.clone() for name, layer in model.masked_layers()},
        pick_bits={name: layer.pick_bits_2.clone() for name, layer in model.masked_layers()
                   if hasattr(layer, 'pick_bits_2')},
        keep1=_masks(model, 1), keep2=_masks(model, 2), picks_live=picks_live,
        state={k: v.clone() for k, v in model.state_dict().items()},
        train1=train1, train2=train2,
        owner_mismatches=dist.owner_mismatches if dist is not None else 0)
    for t in (1, 2):
        result[f'logits{t}'], result[f'acc{t}'] = _evaluate(model, t, images, targets)
    if dist is not None:
        result['diverged'] = _diverged_pruning(dist, rank)
    torch.save(result, out_path)
    if dist is not None:
        dist.barrier()
        dist.close()


# ---------------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------------
def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR',
                        'MASTER_PORT', 'TORCHELASTIC_RUN_ID')}
    env.update({k: str(v) for k, v in extra.items()})
    env['CUDA_VISIBLE_DEVICES'] = ''   # CPU / gloo even on a machine with GPUs
    env['OMP_NUM_THREADS'] = '1'
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    return env


def _launch(out_dir, world):
    """Start `world` ranks (or one plain process when world == 1); returns [(Popen, out file)]."""
    port = _free_port()
    procs = []
    for rank in range(world):
        out = os.path.join(out_dir, f'world{world}_rank{rank}.pt')
        env = (_env(WORLD_SIZE=1) if world == 1 else
               _env(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world, LOCAL_WORLD_SIZE=world,
                    MASTER_ADDR='127.0.0.1', MASTER_PORT=port))
        procs.append((subprocess.Popen([sys.executable, os.path.abspath(__file__), out], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                      out))
    return procs


def _wait(procs):
    deadline = time.monotonic() + TIMEOUT
    logs = []
    for proc, _ in procs:
        try:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p, _ in procs:  # kill only the processes this test started
                p.kill()
            pytest.fail('distributed worker timed out (a rank hung in a collective?)')
        logs.append(output)
    for (proc, _), log in zip(procs, logs):
        assert proc.returncode == 0, f'worker failed (exit {proc.returncode}):\n{log[-4000:]}'
    return [torch.load(out, weights_only=False) for _, out in procs]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp('dist'))
    two = _launch(out_dir, 2)
    one = _launch(out_dir, 1)
    ranks = _wait(two)
    single = _wait(one)[0]
    return ranks, single


def _differing(a, b):
    return sum(int((a[k] != b[k]).sum()) for k in a)


def _total(masks):
    return sum(m.numel() for m in masks.values())


# ---------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------
def test_ranks_agree_exactly(runs):
    (r0, r1), _ = runs
    assert (r0['rank'], r1['rank'], r0['world']) == (0, 1, 2)
    assert r0['owner_mismatches'] == r1['owner_mismatches'] == 0
    for key in ('owner', 'keep1', 'keep2', 'picks_live', 'pick_bits'):
        assert r0[key].keys() == r1[key].keys() and r0[key], key
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), f'{key} {name} differs between ranks'
    assert r0['state'].keys() == r1['state'].keys()
    for name in r0['state']:  # weights, BN running statistics, biases, heads
        assert torch.equal(r0['state'][name], r1['state'][name]), f'{name} differs between ranks'
    assert r0['train1'] == r1['train1'] and r0['train2'] == r1['train2']  # metrics were reduced
    assert r0['acc1'] == r1['acc1'] and r0['acc2'] == r1['acc2']


def test_broadcast_owners_repairs_a_diverged_rank(runs):
    (r0, r1), _ = runs
    d0, d1 = r0['diverged'], r1['diverged']
    assert d0['mismatches'] == d1['mismatches'] == 2   # (1, 2) and (3, 5) were decided differently
    for key in ('owner', 'weight', 'momentum', 'own'):
        assert torch.equal(d0[key], d1[key]), key
    free = d0['owner'] == 0
    assert free.sum() == 2 and bool(free[0, 0]) and bool(free[1, 2])
    assert not d0['weight'][free].any() and not d0['momentum'][free].any()
    assert torch.equal(d0['own'], (d0['owner'] == 1).float())


def test_masks_match_single_process(runs):
    (r0, _), single = runs
    owners = r0['owner']
    # the run really pruned task 1 and gave the freed capacity to task 2
    owned1 = sum(int((o == 1).sum()) for o in owners.values())
    owned2 = sum(int((o == 2).sum()) for o in owners.values())
    assert 0.45 < owned1 / _total(owners) < 0.55 and owned2 > 0
    # task 2 learned a non-trivial pick: some of task 1's weights were dropped
    old = sum(int((o == 1).sum()) for o in owners.values())
    picked = sum(int((r0['keep2'][n] & (owners[n] == 1)).sum()) for n in owners)
    assert 0 < picked < old
    handful = 10
    assert _differing(owners, single['owner']) <= handful
    assert _differing(r0['keep1'], single['keep1']) <= handful
    assert _differing(r0['keep2'], single['keep2']) <= handful


def test_weights_and_accuracy_match_single_process(runs):
    (r0, _), single = runs
    assert r0['state'].keys() == single['state'].keys()
    for name, value in r0['state'].items():
        ref = single['state'][name]
        if value.is_floating_point():
            assert torch.allclose(value, ref, rtol=1e-4, atol=1e-5), \
                f'{name}: max diff {float((value - ref).abs().max()):.3g}'
        else:
            assert torch.equal(value, ref) or name.endswith('owner'), name
    for t in (1, 2):
        assert torch.allclose(r0[f'logits{t}'], single[f'logits{t}'], rtol=1e-4, atol=1e-4)
        assert r0[f'acc{t}'] == single[f'acc{t}']
    for key in ('train1', 'train2'):  # reduced train metrics = the single process's
        for dist_m, one_m in zip(r0[key], single[key]):
            assert dist_m['accuracy'] == one_m['accuracy']
            assert dist_m['loss'] == pytest.approx(one_m['loss'], rel=1e-4, abs=1e-5)


def test_batchnorm_uses_global_batch_statistics(runs):
    """Cross-rank BatchNorm == nn.BatchNorm2d on the whole batch: output, gradients, running stats."""
    (r0, r1), single = runs
    x_all, coef_all = _bn_inputs()
    ref = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 1.5, 4))
        ref.bias.copy_(torch.linspace(-0.2, 0.2, 4))
    for it in range(2):
        x = x_all.clone().requires_grad_(True)
        y = ref(x)
        (y * coef_all).sum().backward()
        for run in (r0, r1, single):
            rows = _bn_rows(run['rank'], run['world'])
            assert torch.allclose(run['bn'][f'y{it}'], y[rows].detach(), atol=1e-5), it
            assert torch.allclose(run['bn'][f'xgrad{it}'], x.grad[rows], atol=1e-5), it
    param_grad = torch.cat([ref.weight.grad, ref.bias.grad])
    for run in (r0, r1, single):
        assert torch.allclose(run['bn']['param_grad'], param_grad, rtol=1e-5, atol=1e-5)
        for name, value in ref.state_dict().items():
            assert torch.allclose(run['bn']['state'][name].to(value.dtype), value,
                                  rtol=1e-5, atol=1e-6), name
    assert torch.equal(r0['bn']['state']['running_var'], r1['bn']['state']['running_var'])


def test_single_process_batchnorm_is_plain_batchnorm():
    """Without a process group the class is nn.BatchNorm2d: same state-dict keys, same outputs."""
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 6, 5, 5) * 2 + 1
    assert torch.equal(ours(x), ref(x))
    ours.eval(), ref.eval()
    assert torch.equal(ours(x), ref(x))


def test_ranks_draw_different_augmentation():
    """The phases seed the global RNG identically on every rank each epoch; the train sampler
    moves rank r > 0 onto its own (deterministic) augmentation stream."""
    def first_draws(rank):
        sampler = RankSeededSampler(list(range(8)), num_replicas=2, rank=rank, shuffle=True, seed=1)
        torch.manual_seed(5)  # what PhaseContext.seed_epoch does on every rank
        indices = list(iter(sampler))
        return indices, torch.rand(4)
    (idx0, draw0), (idx1, draw1) = first_draws(0), first_draws(1)
    assert sorted(idx0 + idx1) == list(range(8))
    assert torch.equal(draw1, first_draws(1)[1])    # reproducible
    assert not torch.equal(draw0, draw1)            # but not the other rank's crops


def test_cli_under_torchrun(tmp_path):
    """The real entry script, 2 ranks: one checkpoint, one goal entry, one log line per epoch."""
    data = tmp_path / 'data'
    subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'make_toy_data.py'), '--out',
                    str(data), '--tasks', '1', '--train', '50', '--test', '10'], check=True,
                   capture_output=True, timeout=120)
    save = tmp_path / 'ckpt' / 'toy_task_1' / 'scratch'
    goal = tmp_path / 'goal.txt'
    log = tmp_path / 'train.log'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(REPO, 'CPG_cifar100_main.py'), '--mode', 'finetune',
           '--dataset', 'toy_task_1', '--data_root', str(data), '--save_folder', str(save),
           '--save_goal_file', str(goal), '--log_path', str(log), '--base_width', '0.0625',
           '--epochs', '1', '--batch_size', '16', '--val_batch_size', '25', '--workers', '0',
           '--device', 'cpu']
    env = _env()
    env.pop('PYTHONPATH')
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in save.iterdir())
    assert files.count('checkpoint.pth.tar') == 1 and 'resume.pth.tar' not in files, files
    with open(goal) as f:
        assert list(json.load(f)) == ['toy_task_1']
    with open(save / 'log.jsonl') as f:
        assert len(f.read().splitlines()) == 1  # one epoch, written by rank 0 only
    with open(save / 'result.json') as f:
        assert json.load(f)['status'] == 0
    with open(log) as f:
        assert sum('baseline accuracy' in line for line in f) == 1


if __name__ == '__main__':
    run_worker(sys.argv[1])
