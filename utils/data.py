"""Data plumbing shared by every experiment: per-epoch seeding, loader workers by core count, the
honest validation split, keyed datasets and their samplers, and reproducible loaders. The task
providers built on them (FolderTasks) and the folder-discovery rules: utils/folder_tasks.py.

Data-order guarantee: after `seed_loader_epoch(loader, seed, epoch)` the next pass over a train
loader depends only on (seed, epoch), and under DDP on the rank, never on the epochs this process
ran before or on the number of loader workers. So a run resumed at epoch e sees exactly the
batches an uninterrupted run sees, and one process sees exactly the union of the ranks' batches:

  * shuffle order: the sampler (DistributedSampler.set_epoch) or the loader's generator;
  * augmentation of keyed datasets (EpochKeyedDataset: both providers' datasets): sample i of an
    epoch draws from a torch.Generator seeded from (epoch seed, i) alone. The train sampler yields
    (epoch seed, i) keys (EpochKeyedSampler), so the seed reaches the workers with every index and
    train workers can be PERSISTENT (started once per loader, not once per epoch);
  * any other dataset: with workers == 0 the global torch RNG of the main process; with workers
    > 0 worker w of rank r seeds python/numpy/torch from (seed, epoch, r, w) (WorkerSeeder), so
    such train loaders restart their workers every epoch (make_loader).
"""

import copy
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from .errors import CPGError

# seed * EPOCH_SEED_STRIDE + epoch: the per-epoch seed (a prime larger than any epoch count)
EPOCH_SEED_STRIDE = 100003
# epoch_seed * SAMPLE_SEED_STRIDE + index: the seed of one sample's augmentation in one epoch
SAMPLE_SEED_STRIDE = 1_000_003
# odd 64-bit constant (golden ratio) that spreads per-rank seeds apart
_SEED_STRIDE = 0x9E3779B97F4A7C15
# most loader workers a rank starts by default for datasets decoded from files
MAX_DECODE_WORKERS = 16


# ----- seeding ------------------------------------------------------------------------------------
def seed_everything(seed):
    """Seed python, numpy and torch (CPU and, when present, all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def epoch_seed(seed, epoch):
    """Seed of epoch `epoch` of a run seeded with `seed`: shuffle order and main-process RNG."""
    return seed * EPOCH_SEED_STRIDE + epoch


def sample_generator(this_epoch_seed, index):
    """The generator every random draw of sample `index` in the epoch seeded `this_epoch_seed`
    comes from: the same on any rank, in any worker, in any order, after any resume."""
    return torch.Generator().manual_seed((this_epoch_seed * SAMPLE_SEED_STRIDE + index) % 2 ** 63)


# ----- workers --------------------------------------------------------------------------------------
def available_cpus():
    """CPU cores this process may run on (its affinity mask: Slurm / container limits count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(decode=False):
    """Loader workers per rank when --workers is not given.

    The cores are shared by the ranks of this node (LOCAL_WORLD_SIZE, set by torchrun): each
    rank gets cpus // ranks of them, one of which runs the rank's training loop.

    decode=False (in-memory datasets, experiment 1): a worker only crops and flips a decoded
    32x32 tensor, so up to 4 workers, and 0 on 1-2 cores, where worker processes only add
    fork/IPC overhead next to the training process.

    decode=True (JPEG/PNG files decoded per sample, experiment 2): decoding, resizing and
    cropping is the bottleneck: about 4.5 ms per ImageNet-sized JPEG (sides 260-525 px) and core,
    i.e. ~220 images/s per worker, against one GPU that trains a ResNet-50 at 2000-3000 images/s.
    So every core of the rank's share but the one of the training loop, capped at
    MAX_DECODE_WORKERS = 16 (~3500 images/s): beyond that one GPU rather than decoding limits,
    and every worker costs memory (its prefetched batches, its interpreter). At least one worker
    whenever the share has 2 cores, so that decoding overlaps the training step.
    """
    ranks = max(1, int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1))
    cpus = max(1, available_cpus() // ranks)
    if decode:
        return max(0, min(MAX_DECODE_WORKERS, cpus - 1))
    if cpus <= 2:
        return 0
    return max(0, min(4, cpus - 1))


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


# ----- the honest validation split ---------------------------------------------------------------
def stratified_split(targets, fraction, seed):
    """Split sample positions 0..N-1 into (train_indices, val_indices), two sorted int lists.

    Per class c with n_c samples, round(fraction * n_c) (half up) are held out for validation,
    at least 1 when fraction > 0 and n_c >= 2, and never all of a class (a class with a single
    sample stays in training). Which ones depends only on (seed, c, n_c): deterministic for a
    seed, the same on every rank and in every stage of a run. The lists are disjoint and their
    union is every position.
    """
    if not 0 <= fraction < 1:
        raise CPGError(f'validation fraction must be in [0, 1), got {fraction}; '
                       'set VAL_FRACTION/--val_fraction to e.g. 0.1 (or 0 for the test split)')
    labels = torch.as_tensor(targets, dtype=torch.int64).reshape(-1).numpy()
    order = np.argsort(labels, kind='stable')  # positions grouped by class, ascending within
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    held_out = np.zeros(labels.shape[0], dtype=bool)
    for label, start, count in zip(classes.tolist(), starts.tolist(), counts.tolist()):
        take = int(fraction * count + 0.5)
        if fraction > 0 and count >= 2:
            take = max(take, 1)
        take = min(take, count - 1)
        if take <= 0:
            continue
        members = order[start:start + count]
        rng = np.random.default_rng([seed % 2**63, label % 2**63, count])
        held_out[members[rng.permutation(count)[:take]]] = True
    return np.flatnonzero(~held_out).tolist(), np.flatnonzero(held_out).tolist()


# ----- keyed datasets and samplers ---------------------------------------------------------------
class EpochKeyedDataset(Dataset):
    """Base of the image datasets: items by index or by (epoch seed, index) key, row views.

    Subclasses set `classes`, `row_targets` (int64 tensor, one label per row of the folder) and
    `train_transform`, and implement `load(row, generator)`.

    An item's random draws come from sample_generator(epoch seed, index), where the epoch seed
    is the key's (EpochKeyedSampler: works with persistent workers) or the one set_epoch_seed
    stored (a worker's copy sees it only if set before the workers started). With no epoch seed
    the global torch RNG is used (plain indexing outside a seeded loader).
    """

    accepts_epoch_keys = True  # build_train_loader may wrap its sampler in an EpochKeyedSampler

    def __init__(self):
        self.epoch_seed = None
        self.rows = None  # None: every row of the folder; else a view's rows (int64 tensor)
        self.train_transform = False

    def set_epoch_seed(self, seed):
        """Augment sample i of this epoch from (seed, i) alone: the draw does not depend on which
        rank or worker loads it, or in which order, so DDP sees what one process sees."""
        self.epoch_seed = seed

    @property
    def targets(self):
        """Labels of this dataset's samples, in index order (int64 tensor)."""
        return self.row_targets if self.rows is None else self.row_targets[self.rows]

    def view(self, indices, train_transform):
        """A dataset of samples `indices` of this one, sharing its decoded data / file list
        (nothing is copied or decoded again), with or without the train transform."""
        view = copy.copy(self)
        indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        view.rows = indices if self.rows is None else self.rows[indices]
        view.train_transform = train_transform
        view.epoch_seed = None
        return view

    def num_rows(self):
        """Rows of the whole folder."""
        return int(self.row_targets.numel())

    def __len__(self):
        return self.num_rows() if self.rows is None else int(self.rows.numel())

    def __getitem__(self, key):
        """Item `key`: an index, or an (epoch seed, index) pair from an EpochKeyedSampler."""
        if isinstance(key, tuple):
            seed, index = key
        else:
            seed, index = self.epoch_seed, key
        index = int(index)
        row = index if self.rows is None else int(self.rows[index])
        generator = None
        if self.train_transform and seed is not None:
            generator = sample_generator(seed, index)
        return self.load(row, generator)

    def load(self, row, generator):
        """(image tensor, int label) of folder row `row`; random draws from `generator`
        (None: the global torch RNG)."""
        raise NotImplementedError


class RankSeededSampler(DistributedSampler):
    """DistributedSampler that also gives each rank its own global-RNG stream.

    The image datasets augment each sample from (seed, epoch, index) (EpochKeyedDataset), so
    their crops do not depend on the rank. Anything else drawn from the global torch RNG, which
    seed_loader_epoch seeds identically on every rank at each epoch, would repeat across ranks
    (perm[2i] and perm[2i+1] getting the same draw); this gives rank r its own stream. With
    loader workers, WorkerSeeder(rank) mixes the rank into each worker's seed.
    """

    def __iter__(self):
        if self.rank and get_worker_info() is None:
            torch.manual_seed(_rank_seed(torch.initial_seed(), self.rank, 2 ** 63))
        return super().__iter__()


def _rank_seed(seed, rank, modulo):
    return (seed + rank * _SEED_STRIDE) % modulo


class EpochKeyedSampler(Sampler):
    """Wraps a sampler: yields (epoch seed, index) keys for an EpochKeyedDataset.

    The epoch seed travels with every index into whichever worker loads it, so workers need not
    be restarted (reseeded) each epoch: train loaders keep persistent workers and stay exact.
    seed_loader_epoch sets the seed (set_epoch_seed) and the inner sampler's epoch (set_epoch).
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch_seed = None

    def set_epoch(self, epoch):
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def set_epoch_seed(self, seed):
        self.epoch_seed = seed

    def __iter__(self):
        seed = self.epoch_seed
        return ((seed, index) for index in self.sampler)

    def __len__(self):
        return len(self.sampler)


# ----- loaders ---------------------------------------------------------------------------------------
class TrainBatchSampler(Sampler):
    """Batches of `batch_size` indices (or keys) of `sampler`, in its order, never a batch of one.

    BatchNorm cannot normalise one sample in training once a feature map is 1x1 ("Expected more
    than 1 value per channel"). Dropping such a last sample would lose a different image every
    epoch; instead a last batch of ONE joins the batch before it (batch_size + 1 samples), so every
    image is seen in every epoch. Under DDP every rank's shard has the same length
    (DistributedSampler pads), so all ranks merge alike and take the same number of steps.
    """

    def __init__(self, sampler, batch_size):
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self):
        full, batch = None, []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                if full is not None:
                    yield full
                full, batch = batch, []
        if len(batch) == 1 and full is not None:
            full, batch = full + batch, []
        if full is not None:
            yield full
        if batch:
            yield batch

    def __len__(self):
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full if (rest == 1 and full) else full + (rest > 0)


def train_sampler(loader):
    """The sampler that orders a train loader's samples (inside its TrainBatchSampler)."""
    batches = getattr(loader, 'batch_sampler', None)
    return batches.sampler if isinstance(batches, TrainBatchSampler) else loader.sampler


def make_loader(dataset, batch_size, shuffle, workers, device, seed, sampler=None, rank=0):
    """Build a DataLoader whose order and augmentation are fixed by `seed` (and seed_loader_epoch).

    A loader that shuffles, or takes a `sampler`, is a train loader: its batches never hold a
    single sample (TrainBatchSampler), and its workers are started anew each epoch so that
    seed_loader_epoch can seed them (any dataset; build_train_loader makes persistent ones for
    keyed datasets). An ordered loader (evaluation) keeps its workers alive between passes; it
    draws no random numbers. Pinned memory on CUDA.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    train = shuffle or sampler is not None
    common = dict(num_workers=workers, pin_memory=(torch.device(device).type == 'cuda'),
                  worker_init_fn=WorkerSeeder(rank), generator=generator)
    if not train:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                          persistent_workers=workers > 0, **common)
    if sampler is None:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    return DataLoader(dataset, batch_sampler=TrainBatchSampler(sampler, batch_size),
                      persistent_workers=False, **common)


def per_rank_batch(batch_size, dist=None):
    """The per-rank share of the global `batch_size`; CPGError when it does not divide, or when
    it leaves a rank one sample per batch (BatchNorm cannot train on that)."""
    world = dist.world_size if dist is not None else 1
    if batch_size < 1:
        raise CPGError(f'--batch_size must be at least 1, got {batch_size}')
    if batch_size % world:
        raise CPGError(f'--batch_size {batch_size} (the global batch) is not divisible by the '
                       f'{world} ranks; use a multiple of {world} (--nproc_per_node / NPROC)')
    if batch_size // world < 2:
        raise CPGError(f'--batch_size {batch_size} over {world} rank(s) trains on batches of one image, '
                       f'which BatchNorm cannot normalise; use BATCH_SIZE >= {2 * world}')
    return batch_size // world


def build_train_loader(dataset, batch_size, workers, device, seed, dist=None):
    """The train loader of this process: `batch_size` is the GLOBAL batch.

    Single process: a 1-replica DistributedSampler order. Under DDP (dist given): this rank's
    shard of the same permutation (rank r's i-th sample is global position world * i + r), in
    batches of batch_size // world, so the ranks' k-th batches together are exactly the k-th
    batch of one process (augmentation included, see EpochKeyedDataset). Shards are padded to
    equal length (DistributedSampler, drop_last=False). A last batch of one sample joins the
    batch before it (TrainBatchSampler): no batch of one, no image left out of an epoch.

    An EpochKeyedDataset gets an EpochKeyedSampler and persistent workers (the epoch seed
    travels with every index; the datasets draw nothing from a worker's global RNG once a
    loader is seeded). Any other dataset gets workers restarted every epoch (WorkerSeeder).
    """
    world, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
    per_rank = per_rank_batch(batch_size, dist)
    sampler = RankSeededSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                drop_last=False)
    if len(sampler) < 2:
        raise CPGError(f'{len(dataset)} training image(s) over {world} rank(s) leave each rank a '
                       f'batch of one, which BatchNorm cannot normalise; add images or use fewer ranks')
    if not getattr(dataset, 'accepts_epoch_keys', False):
        return make_loader(dataset, per_rank, shuffle=False, workers=workers, device=device,
                           seed=seed, sampler=sampler, rank=rank)
    return DataLoader(
        dataset,
        batch_sampler=TrainBatchSampler(EpochKeyedSampler(sampler), per_rank),
        num_workers=workers,
        pin_memory=(torch.device(device).type == 'cuda'),
        persistent_workers=workers > 0,
        worker_init_fn=WorkerSeeder(rank),
        generator=torch.Generator().manual_seed(seed),
    )


def build_eval_loader(dataset, batch_size, workers, device):
    """An ordered evaluation loader over the whole dataset (every rank runs all of it), with
    persistent workers and pinned memory on CUDA."""
    return make_loader(dataset, batch_size, shuffle=False, workers=workers, device=device, seed=0)


def seed_loader_epoch(loader, seed, epoch):
    """Make the next pass over `loader` depend only on (seed, epoch) (and the rank under DDP)."""
    if hasattr(loader, 'seed_epoch'):   # utils.device_data.DeviceBatches: order and draws on the device
        loader.seed_epoch(seed, epoch)
        torch.manual_seed(epoch_seed(seed, epoch))   # anything the model draws
        return
    sampler = train_sampler(loader)
    keyed = isinstance(sampler, EpochKeyedSampler)
    if loader.num_workers > 0 and loader.persistent_workers and not keyed:
        # A persistent worker's RNG continues from the epochs this process ran before.
        raise ValueError('seed_loader_epoch needs a loader without persistent workers; '
                         'build train loaders with utils.data.make_loader or build_train_loader')
    if loader.num_workers > 0 and not isinstance(loader.worker_init_fn, WorkerSeeder):
        raise ValueError('seed_loader_epoch needs worker_init_fn=WorkerSeeder(rank) when workers > 0; '
                         'build train loaders with utils.data.make_loader or build_train_loader')
    this_epoch = epoch_seed(seed, epoch)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)  # DistributedSampler: shuffles by its seed + epoch
    if keyed:
        sampler.set_epoch_seed(this_epoch)  # travels with every index into the workers
    if loader.generator is not None:
        loader.generator.manual_seed(this_epoch)  # RandomSampler's order
    # Main-process RNG: augmentation of other datasets when workers == 0 (RankSeededSampler moves
    # ranks > 0 onto their own stream), and anything the model draws.
    torch.manual_seed(this_epoch)
    if isinstance(loader.worker_init_fn, WorkerSeeder):
        loader.worker_init_fn.epoch_key = (seed, epoch)
    if hasattr(loader.dataset, 'set_epoch_seed'):
        # per-sample augmentation from (seed, epoch, index) for plain indices too (workers copy
        # the dataset when they start)
        loader.dataset.set_epoch_seed(this_epoch)
