"""Data order guarantee: after seed_loader_epoch(loader, seed, epoch) a pass over a train loader
depends only on (seed, epoch) (and the rank), with or without loader workers, so a resumed run
sees the batches of an uninterrupted one (docs/experiment1.md "Run")."""
import importlib.util
import json
import os
import random
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from utils.cifar100_dataset import DEVICE_DATA_LIMIT, CifarTasks
from utils.data import EpochKeyedSampler, WorkerSeeder, make_loader, seed_loader_epoch, train_sampler
from utils.device_data import DeviceBatches
from utils.distributed import Distributed, RankSeededSampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = 'toy_task_1'
SEED = 3


@pytest.fixture(scope='module')
def small_toy(tmp_path_factory):
    """One toy task, 5 classes x 8 train / 2 test images (generated in-process: fast)."""
    spec = importlib.util.spec_from_file_location('make_toy_data', os.path.join(REPO, 'tools', 'make_toy_data.py'))
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    root = tmp_path_factory.mktemp('order_toy')
    args = toy.get_args_parser().parse_args(['--out', str(root), '--tasks', '1', '--train', '8', '--test', '2'])
    assert toy.main(args) == 0
    return str(root)


def _epoch(loader, epoch):
    """All (images, labels) batches of one epoch, after seeding it."""
    seed_loader_epoch(loader, SEED, epoch)
    return [(images.clone(), labels.clone()) for images, labels in loader]


def _same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(batches_a, batches_b))


def _train_loader(root, workers, dist=None, on_device=False):
    """The provider's train loader, global batch 8 (under 2 ranks: 4 per rank): the DataLoader of
    a task too large for the device, or (on_device) the batches of one kept there."""
    args = SimpleNamespace(data_root=root, batch_size=8, val_batch_size=10, workers=workers,
                           seed=SEED, val_fraction=0.0, num_classes=None)
    with mock.patch('utils.cifar100_dataset.DEVICE_DATA_LIMIT', DEVICE_DATA_LIMIT if on_device else -1):
        return CifarTasks(args, 'cpu', dist).loaders(TASK)[0]


@pytest.mark.parametrize('workers', [0, pytest.param(2, marks=pytest.mark.slow), 'device'])  # 2: worker processes
def test_epoch_batches_depend_only_on_seed_and_epoch(small_toy, workers):
    """Epochs 0..3 in one loader, then epoch 3 alone in a fresh one: bitwise the same batches."""
    on_device = workers == 'device'
    workers = 0 if on_device else workers
    loader = _train_loader(small_toy, workers, on_device=on_device)
    if on_device:
        assert isinstance(loader, DeviceBatches)
    else:
        assert loader.num_workers == workers
        # keyed samples: train workers live across epochs and stay exact
        assert isinstance(train_sampler(loader), EpochKeyedSampler) and loader.persistent_workers == (workers > 0)
    continued = [_epoch(loader, epoch) for epoch in range(4)]
    torch.manual_seed(12345)  # another process's history of the global RNG
    resumed = _epoch(_train_loader(small_toy, workers, on_device=on_device), 3)
    assert _same(continued[3], resumed)
    # and the epochs differ from each other (here: their order of samples)
    for a, b in zip(continued, continued[1:]):
        assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in b]))


@pytest.mark.parametrize('rank', [None, 0, 1])
def test_a_task_on_the_device_gives_the_loaders_batches(small_toy, rank):
    """A task kept on the device (DeviceBatches: batch-wise crops and flips) and the same task
    loaded image by image give bitwise the same batches, epoch after epoch, alone or as a rank."""
    dist = None if rank is None else Distributed(rank=rank, local_rank=rank, world_size=2, device='cpu', backend='gloo')
    on_device, loaded = _train_loader(small_toy, 0, dist, on_device=True), _train_loader(small_toy, 0, dist)
    assert isinstance(on_device, DeviceBatches) and not isinstance(loaded, DeviceBatches)
    for epoch in range(3):
        assert _same(_epoch(on_device, epoch), _epoch(loaded, epoch)), epoch


@pytest.mark.slow  # starts processes
def test_distributed_rank_loader_resumes_exactly(small_toy):
    """A rank's loader (DistributedSampler shard, workers) repeats epoch 3 alone as well."""
    dist = Distributed(rank=1, local_rank=1, world_size=2, device='cpu', backend='gloo')
    loader = _train_loader(small_toy, 2, dist)
    continued = [_epoch(loader, epoch) for epoch in range(4)]
    assert _same(continued[3], _epoch(_train_loader(small_toy, 2, dist), 3))
    assert not _same(continued[2], continued[3])


@pytest.mark.slow  # starts processes
def test_batches_do_not_depend_on_the_worker_count(small_toy):
    """Per-sample keys: 0, 1 or 2 workers give bitwise the same batches, epoch after epoch, and
    under DDP the ranks' batches together are one process's (persistent workers included)."""
    by_workers = {w: [_epoch(loader, e) for e in range(3)]
                  for w, loader in ((w, _train_loader(small_toy, w)) for w in (0, 1, 2))}
    assert all(_same(a, b) for a, b in zip(by_workers[0], by_workers[1]))
    assert all(_same(a, b) for a, b in zip(by_workers[0], by_workers[2]))
    ranks = [_train_loader(small_toy, 2 - rank, Distributed(rank, rank, 2, 'cpu', 'gloo'))
             for rank in (0, 1)]
    for epoch in range(3):
        shards = [_epoch(loader, epoch) for loader in ranks]
        for k, (images, labels) in enumerate(by_workers[0][epoch]):
            (x0, y0), (x1, y1) = shards[0][k], shards[1][k]
            assert torch.equal(labels, torch.stack([y0, y1], dim=1).flatten())
            assert torch.equal(images, torch.stack([x0, x1], dim=1).flatten(0, 1))


class _Draws(Dataset):
    """Items are fresh draws from the torch, numpy and python RNGs of the loading process."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return torch.tensor([float(torch.rand(1)), np.random.rand(), random.random()])


@pytest.mark.slow  # starts processes
def test_worker_streams_follow_seed_epoch_rank_and_worker():
    """Each (epoch, rank, worker) has its own stream in every RNG, and it is reproducible."""
    def draws(rank, epoch):
        data = _Draws(8)
        sampler = RankSeededSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=1)
        loader = make_loader(data, 1, shuffle=False, workers=2, device='cpu', seed=1, sampler=sampler,
                             rank=rank)
        seed_loader_epoch(loader, SEED, epoch)
        return torch.cat(list(loader))  # (4, 3): batches 0/2 from worker 0, 1/3 from worker 1

    rank0, rank1 = draws(0, 5), draws(1, 5)
    assert torch.equal(rank1, draws(1, 5))
    assert (rank0[0] != rank0[1]).all()      # the two workers of a rank
    assert (rank0[0] != rank1[0]).all()      # worker 0 of the two ranks
    assert (rank0[0] != draws(0, 6)[0]).all()  # worker 0 of rank 0 in the next epoch
    seeds = set()
    for rank in range(2):
        for epoch in range(2):
            seeder = WorkerSeeder(rank)
            seeder.epoch_key = (SEED, epoch)  # what seed_loader_epoch sets
            seeds |= {seeder.worker_seed(worker) for worker in range(4)}
    assert len(seeds) == 16


def test_seed_loader_epoch_refuses_persistent_workers():
    """A persistent worker keeps its RNG across epochs: such a loader cannot be reseeded."""
    loader = DataLoader(_Draws(4), num_workers=2, persistent_workers=True)
    with pytest.raises(ValueError, match='persistent'):
        seed_loader_epoch(loader, SEED, 0)
    evaluation = make_loader(_Draws(4), 2, shuffle=False, workers=2, device='cpu', seed=0)
    assert evaluation.persistent_workers  # evaluation loaders keep their workers (no randomness)
    train = make_loader(_Draws(4), 2, shuffle=True, workers=2, device='cpu', seed=0)
    assert not train.persistent_workers


# ----- run level: Phase A with loader workers, interrupted and resumed -------------------------------
def _phase_a_args(root, goals, save_folder):
    import CPG_cifar100_main as cli
    argv = ['--mode', 'finetune', '--dataset', TASK, '--data_root', root, '--save_folder', save_folder,
            '--epochs', '2', '--base_width', '0.0625', '--workers', '2', '--device', 'cpu',
            '--batch_size', '16', '--baseline_acc_file', goals, '--train_acc_gate', '0',
            '--resume_every_minutes', '0']
    parser = cli.get_args_parser()
    args = parser.parse_args(argv)
    cli.check_args(parser, args)
    return args


@pytest.mark.slow
def test_phase_a_with_workers_resumes_bitwise(small_toy, tmp_path, monkeypatch):
    """Phase A, 2 epochs, 2 workers: interrupted after epoch 1 and rerun == uninterrupted, bitwise."""
    import CPG_cifar100_main as cli
    from utils.manager import Manager
    goals = str(tmp_path / 'goals.json')
    with open(goals, 'w') as f:
        json.dump({TASK: '0.0000'}, f)
    whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
    assert cli.main(_phase_a_args(small_toy, goals, whole)) == 0

    original, interrupted = Manager.train_epoch, []

    def interrupt_second_epoch(self, epoch, *args, **kwargs):
        if epoch == 1 and not interrupted:
            interrupted.append(epoch)
            raise KeyboardInterrupt
        return original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Manager, 'train_epoch', interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_phase_a_args(small_toy, goals, resumed))
    resume_file = os.path.join(resumed, 'resume.pth.tar')
    assert torch.load(resume_file, weights_only=True)['epoch'] == 1
    assert cli.main(_phase_a_args(small_toy, goals, resumed)) == 0
    assert interrupted == [1]

    a = torch.load(os.path.join(whole, 'checkpoint.pth.tar'), weights_only=True)['model']
    b = torch.load(os.path.join(resumed, 'checkpoint.pth.tar'), weights_only=True)['model']
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
