"""Generic, reproducible DataLoader construction and global seeding."""

import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader


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


def _seed_worker(worker_id):
    """Seed python/numpy/torch in a worker from the per-worker seed torch already derived."""
    # torch.initial_seed() inside a worker = loader base seed + worker_id, so streams differ
    # per worker but are fixed by the loader's generator.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(dataset, batch_size, shuffle, workers, device, seed, drop_last=False):
    """Build a DataLoader whose shuffling and worker augmentation are fixed by `seed`."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=(torch.device(device).type == 'cuda'),
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=drop_last,
    )
