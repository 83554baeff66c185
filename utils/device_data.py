"""Small image tasks held whole on the training device and augmented a batch at a time.

A CIFAR task is 2,500 images of 3x32x32: 7.7 MB as uint8. Decoded once, it stays on the GPU (or
in memory on the CPU), and each batch is gathered, cropped, flipped and normalised there in a few
tensor operations, instead of one Python call and one host-to-device copy per image. The loop is
the same on the CPU, so the tests exercise it.

What stays as with the loaders (utils/data.py's guarantee): the order of an epoch is the
RankSeededSampler's, batched by TrainBatchSampler (no batch of one), and an image's crop and flip
are a pure function of (seed, epoch, image index), computed by crop_flip (below) also for the
per-image path of datasets too large for the device. So a resumed run, a run under DDP and a run
that does not keep its data on the device all see the same batches.
"""
import torch
import torch.nn.functional as F

from .data import RankSeededSampler, TrainBatchSampler, epoch_seed

# Keep a task on the device when its decoded train + test images take at most this many bytes.
DEVICE_DATA_LIMIT = 1 << 30
_PRIME = 2147483647   # 2^31 - 1: every product below stays under 2^62, exact in int64 on any device


def crop_flip(this_epoch_seed, index, pad):
    """(top, left, flip) of the random crop (offsets 0..2*pad) and horizontal flip of image
    `index` (int64 tensor, any device) in the epoch seeded `this_epoch_seed`: a fixed hash of the
    two, the same on every device, rank and loader."""
    seed = int(this_epoch_seed)
    h = index.to(torch.int64) % _PRIME
    for salt in (seed % _PRIME, (seed // _PRIME) % _PRIME + 12345):
        h = (h * 48271 + salt) % _PRIME
        h = h ^ (h >> 15)            # mixes the high bits down: not a linear function of the index
    h = (h * 16807 + 2654435) % _PRIME
    span = 2 * pad + 1
    return h % span, (h // span) % span, (h // (span * span)) % 2 == 1


def crop_flip_batch(images, top, left, flip, pad):
    """Zero-pad uint8 images (B, C, H, W) by `pad`, then crop H x W at (top, left) and flip
    where `flip`: one gather over the batch."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))                      # (B, C, H+2p, W+2p)
    rows = top.view(-1, 1) + torch.arange(height, device=images.device)              # (B, H)
    columns = torch.arange(width, device=images.device).expand(batch, width)
    columns = left.view(-1, 1) + torch.where(flip.view(-1, 1), width - 1 - columns, columns)  # (B, W)
    flat = (rows.unsqueeze(2) * (width + 2 * pad) + columns.unsqueeze(1)).view(batch, 1, -1)
    out = padded.reshape(batch, channels, -1).gather(2, flat.expand(batch, channels, -1))
    return out.view(batch, channels, height, width)


def normalize(images, mean, std):
    """uint8 images -> float32 in [0, 1], then (x - mean) / std per channel (when given)."""
    images = images.float() / 255.0
    return images if mean is None else (images - mean) / std


class _Count:
    """What a sampler needs of a dataset: its length."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class DeviceBatches:
    """Batches (images float (B, C, H, W), labels (B,)) of a task kept on `device` as uint8.

    train=True: this rank's shard of a shuffled epoch, cropped and flipped (call seed_epoch before
    each epoch, as utils.data.seed_loader_epoch does); train=False: every image in order.
    `len()` is the number of batches, as a DataLoader's.
    """

    def __init__(self, images, labels, batch_size, device, mean=None, std=None, train=False, pad=4,
                 seed=0, dist=None):
        self.images = images.to(device)                       # uint8 (N, C, H, W)
        self.labels = labels.to(device)                       # int64 (N,)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.batch_size, self.train, self.pad, self.device = batch_size, train, pad, torch.device(device)
        self.epoch_seed = None
        n = int(labels.numel())
        if train:
            world, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
            self.sampler = RankSeededSampler(_Count(n), num_replicas=world, rank=rank, shuffle=True,
                                             seed=seed, drop_last=False)
            self.batches = TrainBatchSampler(self.sampler, batch_size)
        else:
            self.sampler = range(n)
            self.batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]

    def seed_epoch(self, seed, epoch):
        """The next pass is epoch `epoch` of a run seeded `seed` (order, crops and flips)."""
        self.sampler.set_epoch(epoch)
        self.epoch_seed = epoch_seed(seed, epoch)

    def epoch_rows(self):
        """The image indices of the next pass, in order (one host-to-device copy per epoch)."""
        return torch.tensor([i for batch in self.batches for i in batch], dtype=torch.int64).to(self.device)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        sizes = [len(batch) for batch in self.batches]
        rows = self.epoch_rows()
        if self.train and self.epoch_seed is not None:   # every draw of the epoch at once
            top, left, flip = crop_flip(self.epoch_seed, rows, self.pad)
        elif self.train:   # never seeded (outside the engine): the global torch RNG, as a DataLoader
            top, left = torch.randint(0, 2 * self.pad + 1, (2, rows.numel())).to(self.device)
            flip = (torch.rand(rows.numel()) < 0.5).to(self.device)
        start = 0
        for size in sizes:
            index = rows[start:start + size]
            images = self.images[index]
            if self.train:
                images = crop_flip_batch(images, top[start:start + size], left[start:start + size],
                                         flip[start:start + size], self.pad)
            yield normalize(images, self.mean, self.std), self.labels[index]
            start += size
