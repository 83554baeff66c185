"""Generic, reproducible DataLoader construction, per-epoch seeding and global seeding.

Data-order guarantee: after `seed_loader_epoch(loader, seed, epoch)` the next pass over a train
loader depends only on (seed, epoch), and under DDP on the rank, never on the epochs this process
ran before. So a run resumed at epoch e sees exactly the batches an uninterrupted run sees:

  * shuffle order: the loader's generator (RandomSampler), or DistributedSampler.set_epoch;
  * augmentation with workers == 0: the global torch RNG of the main process;
  * augmentation with workers > 0: worker w of rank r seeds python/numpy/torch from
    (seed, epoch, r, w) (WorkerSeeder). Train workers are therefore started anew each epoch
    (persistent workers would carry their RNG state over from the epochs before).
"""

import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader

# seed * EPOCH_SEED_STRIDE + epoch: the per-epoch seed (a prime larger than any epoch count)
EPOCH_SEED_STRIDE = 100003


def seed_everything(seed):
    """Seed python, numpy and torch (CPU and, when present, all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def default_workers():
    """Return a sensible number of loader workers for this machine (0 on 1-2 cores)."""
    cpus = os.cpu_count() or 1
    # On tiny machines worker processes only add fork/IPC overhead next to the training process.
    if cpus <= 2:
        return 0
    return max(0, min(4, cpus - 1))


def epoch_seed(seed, epoch):
    """Seed of epoch `epoch` of a run seeded with `seed`: shuffle order and main-process RNG."""
    return seed * EPOCH_SEED_STRIDE + epoch


class WorkerSeeder:
    """worker_init_fn: seed python, numpy and torch of loader worker w (picklable).

    After seed_loader_epoch, worker w of rank r draws from SeedSequence([seed, epoch, r, w]).
    A loader never reseeded (evaluation) falls back to the seed torch gives the worker (the
    loader generator's draw + w), mixed with the rank.
    """

    def __init__(self, rank=0):
        self.rank = rank
        self.epoch_key = None  # (seed, epoch); read when the workers start, i.e. at iter(loader)

    def worker_seed(self, worker_id):
        """64-bit seed of worker `worker_id` (call inside the worker for the fallback)."""
        if self.epoch_key is None:
            entropy = [torch.initial_seed(), self.rank]
        else:
            seed, epoch = self.epoch_key
            entropy = [seed % 2**64, epoch, self.rank, worker_id]
        return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])

    def __call__(self, worker_id):
        seed = self.worker_seed(worker_id)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


def make_loader(dataset, batch_size, shuffle, workers, device, seed, drop_last=False,
                sampler=None, rank=0):
    """Build a DataLoader whose order and augmentation are fixed by `seed` (and seed_loader_epoch).

    A loader that shuffles, or takes a `sampler`, is a train loader: its workers are started anew
    each epoch so that seed_loader_epoch can seed them. An ordered loader (evaluation) keeps its
    workers alive between passes; it draws no random numbers.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    train = shuffle or sampler is not None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        pin_memory=(torch.device(device).type == 'cuda'),
        persistent_workers=workers > 0 and not train,
        worker_init_fn=WorkerSeeder(rank),
        generator=generator,
        drop_last=drop_last,
    )


def seed_loader_epoch(loader, seed, epoch):
    """Make the next pass over `loader` depend only on (seed, epoch) (and the rank under DDP)."""
    if loader.num_workers > 0 and loader.persistent_workers:
        # A persistent worker's RNG continues from the epochs this process ran before.
        raise ValueError('seed_loader_epoch needs a loader without persistent workers; '
                         'build train loaders with utils.data.make_loader')
    if loader.num_workers > 0 and not isinstance(loader.worker_init_fn, WorkerSeeder):
        raise ValueError('seed_loader_epoch needs worker_init_fn=WorkerSeeder(rank) when workers > 0; '
                         'build train loaders with utils.data.make_loader')
    this_epoch = epoch_seed(seed, epoch)
    if hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)  # DistributedSampler: shuffles by its seed + epoch
    if loader.generator is not None:
        loader.generator.manual_seed(this_epoch)  # RandomSampler's order
    # Main-process RNG: augmentation when workers == 0 (RankSeededSampler moves ranks > 0 onto
    # their own stream), and anything the model draws.
    torch.manual_seed(this_epoch)
    if isinstance(loader.worker_init_fn, WorkerSeeder):
        loader.worker_init_fn.epoch_key = (seed, epoch)
    if hasattr(loader.dataset, 'set_epoch_seed'):
        # per-sample augmentation from (seed, epoch, index): the same crop and flip for a sample
        # in one process, on any rank and in any worker (workers copy the dataset at iter())
        loader.dataset.set_epoch_seed(this_epoch)
