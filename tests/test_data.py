"""Tests of the toy-data generator and the experiment-1 task dataset, loaders and validation split."""

import os
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests import `utils` whatever directory pytest was started from.
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from cpg_testlib import load_tool, spy_on_paths, tree_bytes  # noqa: E402
from utils.cifar100_config import CIFAR100_TASKS, NORM_STATS  # noqa: E402
from utils.cifar100_dataset import (CifarTasks, TaskImageFolder, channel_stats,  # noqa: E402
                                    task_normalization)
from utils.data import make_loader  # noqa: E402
from utils.errors import CPGError  # noqa: E402


toy = load_tool('make_toy_data')


def _make_toy(out, **overrides):
    """Run the toy generator with small defaults; returns its exit status."""
    argv = ['--out', str(out), '--tasks', '2', '--classes', '3', '--train', '4', '--test', '2']
    for key, value in overrides.items():
        argv += [f'--{key}', str(value)]
    return toy.main(toy.get_args_parser().parse_args(argv))


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    """A small toy data folder shared by the dataset tests (2 tasks x 3 classes, 4/2 images)."""
    root = tmp_path_factory.mktemp('toy')
    assert _make_toy(root) == 0
    return str(root)


# (a) toy generator ---------------------------------------------------------------------------

def test_toy_layout_and_counts(tmp_path):
    """Every task/class folder exists in both splits with the requested image counts."""
    assert _make_toy(tmp_path, size=16) == 0
    for split, count in (('train', 4), ('test', 2)):
        assert sorted(os.listdir(tmp_path / split)) == ['toy_task_1', 'toy_task_2']
        for task in ('toy_task_1', 'toy_task_2'):
            classes = sorted(os.listdir(tmp_path / split / task))
            assert classes == ['class_0', 'class_1', 'class_2']
            for name in classes:
                files = sorted(os.listdir(tmp_path / split / task / name))
                assert len(files) == count and all(f.endswith('.png') for f in files)
                with Image.open(tmp_path / split / task / name / files[0]) as img:
                    assert img.size == (16, 16) and img.mode == 'RGB'


def test_toy_task_names_override(tmp_path):
    """--task_names replaces the numbered task names."""
    args = toy.get_args_parser().parse_args(
        ['--out', str(tmp_path), '--task_names', 'alpha', 'beta', '--classes', '2',
         '--train', '1', '--test', '1'])
    assert toy.main(args) == 0
    assert sorted(os.listdir(tmp_path / 'train')) == ['alpha', 'beta']


def test_toy_deterministic(tmp_path):
    """Same seed -> byte-identical files; another seed -> different bytes."""
    _make_toy(tmp_path / 'a', seed=3)
    _make_toy(tmp_path / 'b', seed=3)
    _make_toy(tmp_path / 'c', seed=4)
    first, second, other = (tree_bytes(tmp_path / n) for n in 'abc')
    assert first == second
    assert first.keys() == other.keys() and first != other


def test_toy_rewrite_removes_stale_files(tmp_path):
    """A rerun with fewer images leaves no files of the earlier run behind."""
    _make_toy(tmp_path, train=6)
    _make_toy(tmp_path, train=3)
    assert len(os.listdir(tmp_path / 'train' / 'toy_task_1' / 'class_0')) == 3


# (b) the CIFAR-100 converter: tests/test_cifar_converter.py -----------------------------------


def test_labels_follow_sorted_class_folders(tmp_path):
    """Class folders created out of order get labels in sorted-name order."""
    colours = {'zebra': 200, 'ant': 10, 'mole': 100}
    for name, value in colours.items():
        folder = tmp_path / 'train' / 'animals' / name
        folder.mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(folder / '0.png')
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(folder / '1.jpg', quality=100)
    data = TaskImageFolder(str(tmp_path), 'train', 'animals')
    assert data.classes == ['ant', 'mole', 'zebra']
    assert data.images.shape == (6, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.targets.tolist() == [0, 0, 1, 1, 2, 2] and data.targets.dtype == torch.int64
    for index in range(len(data)):
        image, label = data[index]
        expected = colours[data.classes[label]] / 255.0
        assert abs(float(image.mean()) - expected) < 2 / 255.0


def test_test_items_are_normalized(toy_root):
    """Test split items are (3, 32, 32) floats equal to (x/255 - mean)/std."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    data = TaskImageFolder(toy_root, 'test', 'toy_task_1', mean=mean, std=std)
    assert len(data) == 6 and data.classes == ['class_0', 'class_1', 'class_2']
    image, label = data[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    raw = data.images[3].float() / 255.0
    expected = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(image, expected, atol=1e-6)


def test_train_transform_is_padded_crop_flip_and_seeded(toy_root):
    """Augmented items are a zero-padded 32x32 crop (maybe flipped) and repeat under a seed."""
    data = TaskImageFolder(toy_root, 'train', 'toy_task_1', train_transform=True)
    padded = F.pad(data.images[0].float() / 255.0, (4, 4, 4, 4))  # (3, 40, 40)
    candidates = [padded[:, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
    candidates += [c.flip(-1) for c in candidates]
    torch.manual_seed(11)
    first = [data[0][0] for _ in range(20)]
    torch.manual_seed(11)
    second = [data[0][0] for _ in range(20)]
    for a, b in zip(first, second):
        assert a.shape == (3, 32, 32) and torch.equal(a, b)
        assert any(torch.equal(a, c) for c in candidates)
    assert any(not torch.equal(first[0], other) for other in first[1:])


def test_missing_data_root_names_path(tmp_path):
    """A missing data folder raises CPGError naming the folder and the preparation tools."""
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(CPGError) as info:
        TaskImageFolder(missing, 'train', 'fish')
    message = str(info.value)
    assert missing in message and 'make_toy_data.py' in message and '\n' not in message


def test_unknown_task_lists_available(toy_root):
    """An unknown task raises CPGError naming it and listing the tasks that exist."""
    with pytest.raises(CPGError) as info:
        TaskImageFolder(toy_root, 'train', 'no_such_task')
    message = str(info.value)
    assert 'no_such_task' in message and 'toy_task_1' in message and '\n' not in message


def test_empty_task_folders_raise(tmp_path):
    """A task without class folders, or a class without images, raises CPGError."""
    (tmp_path / 'train' / 'empty').mkdir(parents=True)
    with pytest.raises(CPGError, match='no class subfolders'):
        TaskImageFolder(str(tmp_path), 'train', 'empty')
    (tmp_path / 'train' / 'empty' / 'c0').mkdir()
    with pytest.raises(CPGError, match='no images'):
        TaskImageFolder(str(tmp_path), 'train', 'empty')


# (d) normalization ---------------------------------------------------------------------------

def test_config_tables():
    """20 tasks in the paper's order, each with a normalization row."""
    assert len(CIFAR100_TASKS) == 20 and CIFAR100_TASKS == sorted(CIFAR100_TASKS)
    assert CIFAR100_TASKS[0] == 'aquatic_mammals' and CIFAR100_TASKS[-1] == 'vehicles_2'
    assert set(CIFAR100_TASKS) | {'cifar100', 'two_class'} == set(NORM_STATS)


def test_task_normalization_table_and_computed(toy_root):
    """Known tasks use the table; unknown ones match a numpy computation over train pixels."""
    assert task_normalization('/does/not/matter', 'fish') == (
        (0.4162, 0.4626, 0.4577), (0.2857, 0.2574, 0.2705))
    mean, std = task_normalization(toy_root, 'toy_task_2')
    pixels = []
    task_dir = os.path.join(toy_root, 'train', 'toy_task_2')
    for name in sorted(os.listdir(task_dir)):
        for file in sorted(os.listdir(os.path.join(task_dir, name))):
            with Image.open(os.path.join(task_dir, name, file)) as img:
                pixels.append(np.asarray(img.convert('RGB'), dtype=np.float64) / 255.0)
    stacked = np.stack(pixels).reshape(-1, 3)  # (N*H*W, 3)
    assert np.allclose(mean, stacked.mean(axis=0), atol=1e-4)
    assert np.allclose(std, stacked.std(axis=0), atol=1e-4)
    assert all(isinstance(v, float) for v in mean + std)


# (e) loaders ---------------------------------------------------------------------------------

def _first_batch(dataset, seed):
    """Labels and pixels of the first batch of a shuffled loader seeded with `seed`."""
    torch.manual_seed(seed)  # augmentation in the main process (workers=0) uses the global RNG
    images, labels = next(iter(make_loader(dataset, 5, shuffle=True, workers=0,
                                           device='cpu', seed=seed)))
    return images, labels


def test_make_loader_seeded_order(toy_root):
    """The same seed gives the same first batch; the loader settings follow the device."""
    data = TaskImageFolder(toy_root, 'train', 'toy_task_1', train_transform=True)
    images_a, labels_a = _first_batch(data, 7)
    images_b, labels_b = _first_batch(data, 7)
    assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)
    orders = {tuple(_first_batch(data, s)[0].flatten()[:50].tolist()) for s in range(5)}
    assert len(orders) > 1
    loader = make_loader(data, 4, shuffle=False, workers=0, device='cpu', seed=0)
    assert not loader.pin_memory and not loader.persistent_workers


class _RandomDraws(torch.utils.data.Dataset):
    """Items are fresh draws from the torch, numpy and python RNGs of the loading process."""

    def __len__(self):
        """Four items, so two workers each load two."""
        return 4

    def __getitem__(self, index):
        """Return one draw from each global RNG."""
        return torch.tensor([float(torch.rand(1)), np.random.rand(), random.random()])


@pytest.mark.slow  # starts processes
def test_make_loader_workers_seeded_and_distinct():
    """With workers, all three RNGs repeat under one seed and differ between workers."""
    def draws(seed):
        loader = make_loader(_RandomDraws(), 1, shuffle=False, workers=2, device='cpu', seed=seed)
        return torch.cat(list(loader))  # (4, 3); items 0/2 from worker 0, 1/3 from worker 1

    first, again, other = draws(5), draws(5), draws(6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first[0] != first[1]).all()  # every RNG differs between the two workers


def _normalized(images, mean, std):
    """(x / 255 - mean) / std of uint8 images (N, 3, H, W), computed as the dataset does."""
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _augmented_candidates(images, mean, std):
    """Every padded crop and flip of uint8 images (N, 3, 32, 32), normalized: (N * 162, 3, 32, 32)."""
    padded = F.pad(images, (4, 4, 4, 4))  # (N, 3, 40, 40), zero border
    crops = torch.cat([padded[:, :, y:y + 32, x:x + 32] for y in range(9) for x in range(9)])
    return _normalized(torch.cat([crops, crops.flip(-1)]), mean, std)


def _assert_loaders_normalize_with(train_loader, val_loader, mean, std):
    """Every batch of both loaders is exactly the raw pixels normalized with (mean, std)."""
    val_images = torch.cat([x for x, _ in val_loader])  # ordered: the dataset's order
    assert torch.equal(val_images, _normalized(val_loader.dataset.images, mean, std))
    candidates = _augmented_candidates(train_loader.dataset.images, mean, std)
    for images, _ in train_loader:
        for image in images:
            assert (candidates == image).flatten(1).all(dim=1).any()


def test_provider_loaders(toy_root):
    """CifarTasks.loaders returns shuffled train / ordered test loaders and the class count."""
    args = _provider_args(toy_root, batch_size=4, val_batch_size=3, seed=0)
    train_loader, val_loader, num_classes = CifarTasks(args, 'cpu').loaders('toy_task_1')
    assert num_classes == 3
    assert len(train_loader.dataset) == 12 and len(val_loader.dataset) == 6
    assert train_loader.dataset.train_transform and not val_loader.dataset.train_transform
    images, labels = next(iter(val_loader))
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 0, 1]
    # Normalized with the statistics of this task's own train images (not another task's, not none).
    mean, std = task_normalization(toy_root, 'toy_task_1')
    assert (mean, std) != task_normalization(toy_root, 'toy_task_2')
    _assert_loaders_normalize_with(train_loader, val_loader, mean, std)


def test_provider_loaders_use_the_table_for_known_tasks(tmp_path):
    """A task of the paper's table is normalized with the table's row, not its own statistics."""
    args = toy.get_args_parser().parse_args(
        ['--out', str(tmp_path), '--task_names', 'fish', '--classes', '2', '--train', '3', '--test', '2'])
    assert toy.main(args) == 0
    args = _provider_args(tmp_path, batch_size=3, val_batch_size=2, seed=0)
    train_loader, val_loader, _ = CifarTasks(args, 'cpu').loaders('fish')
    assert NORM_STATS['fish'] != channel_stats(train_loader.dataset.images)
    _assert_loaders_normalize_with(train_loader, val_loader, *NORM_STATS['fish'])


# (f) the honest validation split -------------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from utils.data import stratified_split  # noqa: E402


def test_stratified_split_is_disjoint_stratified_and_deterministic():
    """round(fraction * n_c) (half up) per class, at least 1, never all; sorted, disjoint, complete."""
    # class sizes 10, 5, 2, 1, 3 (interleaved, so positions != classes)
    targets = [0] * 10 + [1] * 5 + [2] * 2 + [3] + [4] * 3
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    targets = torch.tensor(targets)[order]
    train, val = stratified_split(targets, 0.25, seed=7)
    assert train == sorted(train) and val == sorted(val)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(len(targets)))
    held = {c: int((targets[val] == c).sum()) for c in range(5)}
    # 10 * .25 = 2.5 -> 3; 5 * .25 = 1.25 -> 1; 2 * .25 = .5 -> 1; a single sample stays; 3 -> 1
    assert held == {0: 3, 1: 1, 2: 1, 3: 0, 4: 1}
    assert stratified_split(targets, 0.25, seed=7) == (train, val)
    assert stratified_split(targets.tolist(), 0.25, seed=7) == (train, val)  # list or tensor
    assert stratified_split(targets, 0.25, seed=8)[1] != val
    # small classes keep at least one training sample, even at a high fraction
    train_hi, val_hi = stratified_split(targets, 0.9, seed=7)
    assert all(int((targets[train_hi] == c).sum()) >= 1 for c in range(5))
    assert stratified_split(targets, 0.0, seed=7) == (list(range(len(targets))), [])
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(CPGError, match='val_fraction'):
            stratified_split(targets, bad, seed=7)


def _provider_args(root, **overrides):
    args = dict(data_root=str(root), batch_size=4, val_batch_size=5, workers=0, seed=3,
                val_fraction=0.0, num_classes=None)
    args.update(overrides)
    return SimpleNamespace(**args)


def forbid_paths(monkeypatch, prefix):
    """Record every stat / listing / open of a path under `prefix` (a list, filled as they happen)."""
    return spy_on_paths(monkeypatch, [prefix])


def test_val_fraction_never_touches_the_test_split(tmp_path, monkeypatch):
    """val_fraction > 0: selection on held-out train images; the test folder is not opened,
    listed or stat'ed (here: absent, and spied on); test_loader then fails clearly."""
    root = tmp_path / 'data'
    assert _make_toy(root, train=6) == 0  # 3 classes x 6 train images
    test_dir = root / 'test'
    import shutil
    shutil.rmtree(test_dir)
    touched = forbid_paths(monkeypatch, str(test_dir))
    provider = CifarTasks(_provider_args(root, val_fraction=0.34), 'cpu')
    train, select, num_classes = provider.loaders('toy_task_1')
    assert touched == [] and num_classes == 3
    # 6 per class: round(2.04) = 2 held out per class
    assert len(select.dataset) == 6 and len(train.dataset) == 12
    assert not select.dataset.train_transform and train.dataset.train_transform
    assert select.dataset.images is train.dataset.images  # a view: decoded once, shared
    rows = torch.cat([train.dataset.rows, select.dataset.rows]).sort().values
    assert rows.tolist() == list(range(18))
    assert sorted(select.dataset.targets.tolist()) == [0, 0, 1, 1, 2, 2]
    # held-out items are the plain normalized images (no augmentation), in row order
    mean, std = task_normalization(str(root), 'toy_task_1')
    images = torch.cat([x for x, _ in select])
    assert torch.equal(images, _normalized(train.dataset.images[select.dataset.rows], mean, std))
    with pytest.raises(CPGError) as info:
        provider.test_loader('toy_task_1')
    message = str(info.value)
    assert str(test_dir / 'toy_task_1') in message and 'val_fraction' in message
    assert touched  # the spy sees test_loader's look (so it would have seen loaders')


def test_val_fraction_zero_selects_on_the_test_split(toy_root):
    """The paper's behaviour: select loader == test loader == the test split, in order."""
    provider = CifarTasks(_provider_args(toy_root), 'cpu')
    train, select, num_classes = provider.loaders('toy_task_1')
    assert num_classes == 3 and len(train.dataset) == 12 and len(select.dataset) == 6
    test = provider.test_loader('toy_task_1')
    for (xa, ya), (xb, yb) in zip(select, test):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert provider.val_loader == provider.test_loader  # the name the engine used before


def test_provider_checks_class_count_and_batch(toy_root):
    """--num_classes must match the folders; the global batch must split over the ranks."""
    with pytest.raises(CPGError) as info:
        CifarTasks(_provider_args(toy_root, num_classes=5), 'cpu').loaders('toy_task_1')
    message = str(info.value)
    assert 'has 3 classes' in message and 'is 5' in message and 'NUM_CLASSES/--num_classes' in message
    assert CifarTasks(_provider_args(toy_root, num_classes=3), 'cpu').loaders('toy_task_1')[2] == 3
    three_ranks = SimpleNamespace(world_size=3, rank=0)
    with pytest.raises(CPGError) as info:
        CifarTasks(_provider_args(toy_root, batch_size=8), 'cpu', three_ranks).loaders('toy_task_1')
    assert '--batch_size 8' in str(info.value) and '3 ranks' in str(info.value)
    with pytest.raises(CPGError, match='val_fraction'):
        CifarTasks(_provider_args(toy_root, val_fraction=1.0), 'cpu')
