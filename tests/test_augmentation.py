"""Experiment 1's augmentation through the provider's train loader (spec §6.1: 4-pixel zero-padded
random crop, random horizontal flip): each image gets a new crop/flip every epoch, and exactly the
same one whenever (seed, epoch) repeats, whatever ran before (utils/data.py's guarantee).

Each loaded item is matched to the crop offset and flip that produce it from its own stored image,
so the test sees the draws themselves, not just a changed sample order.
"""
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from cpg_testlib import make_toy_data
from utils.cifar100_dataset import DEVICE_DATA_LIMIT, CifarTasks
from utils.data import seed_loader_epoch

SEED, TASK, PAD = 3, 'toy_task_1', 4


def _loader(root, on_device):
    """The provider's train loader: the task kept on the device (batch-wise draws) or loaded
    image by image (a task over the device limit)."""
    args = SimpleNamespace(data_root=root, batch_size=16, val_batch_size=50, workers=0, seed=SEED,
                           val_fraction=0.0, num_classes=None)
    with mock.patch('utils.cifar100_dataset.DEVICE_DATA_LIMIT', DEVICE_DATA_LIMIT if on_device else -1):
        return CifarTasks(args, 'cpu').loaders(TASK)[0]


def _epoch_items(loader, epoch):
    """{folder row: augmented image} of one epoch of `loader`, as the loader yields them."""
    dataset = loader.dataset
    seed_loader_epoch(loader, SEED, epoch)
    if hasattr(loader, 'epoch_rows'):   # on the device: the epoch's order is known up front
        rows = loader.epoch_rows().tolist()
    else:                               # image by image: the sampler's order (no workers)
        rows = [index for _, index in loader.batch_sampler.sampler]
    images = torch.cat([images for images, _ in loader])
    assert len(rows) == len(images) == len(dataset)
    return {row: image for row, image in zip(rows, images)}


def _draw(dataset, row, image):
    """(top, left, flipped) of the crop that turns stored row `row` into `image`."""
    padded = F.pad(dataset.images[row], (PAD, PAD, PAD, PAD)).float() / 255.0   # (3, 40, 40)
    mean, std = dataset.mean.view(3, 1, 1), dataset.std.view(3, 1, 1)
    for flipped in (False, True):
        for top in range(2 * PAD + 1):
            for left in range(2 * PAD + 1):
                crop = padded[:, top:top + 32, left:left + 32]
                crop = crop.flip(-1) if flipped else crop
                if torch.equal((crop - mean) / std, image):
                    return top, left, flipped
    raise AssertionError(f'row {row}: the loaded image is no padded crop (or flip) of its own image')


@pytest.mark.parametrize('on_device', [True, False])
def test_crops_and_flips_change_every_epoch_and_repeat_for_seed_and_epoch(tmp_path, on_device):
    root = make_toy_data(tmp_path / 'toy', tasks=1, train=12, test=2)   # 60 train images
    loader = _loader(root, on_device)
    dataset = loader.dataset
    epochs = [_epoch_items(loader, epoch) for epoch in range(3)]
    draws = [{row: _draw(dataset, row, image) for row, image in items.items()} for items in epochs]
    rows = sorted(draws[0])

    for e in range(3):   # both flips and several offsets occur within one epoch
        assert {d[2] for d in draws[e].values()} == {False, True}
        assert len({d[:2] for d in draws[e].values()}) > 10
    for a, b in ((0, 1), (1, 2), (0, 2)):   # one image, two epochs: another draw (1/162 alike by chance)
        same = [row for row in rows if draws[a][row] == draws[b][row]]
        assert len(same) <= 3, f'epochs {a} and {b}: {len(same)} of {len(rows)} images drew the same crop/flip'

    # the same (seed, epoch) in a fresh loader, after other draws of the global RNG: the same images
    torch.manual_seed(12345)
    torch.rand(7)
    again = _epoch_items(_loader(root, on_device), 1)
    assert again.keys() == epochs[1].keys()
    for row in rows:
        assert torch.equal(again[row], epochs[1][row]), row
