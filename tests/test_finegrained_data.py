"""Experiment 2's data: the fine-grained layout, lazy decoding, the spec §6.2 transforms with
per-sample generators, the provider FineGrainedTasks and its honest validation split."""
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from cpg_testlib import make_toy_data, spy_on_paths
from utils.data import default_workers, sample_generator, seed_loader_epoch
from utils.distributed import Distributed
from utils.errors import CPGError
from utils.finegrained_dataset import (IMAGENET_MEAN, IMAGENET_STD, FineGrainedTasks,
                                       FineGrainedTransform, ImageFiles, cutout_, cutout_box,
                                       cutout_length, random_resized_crop_params, resize_side)

TASKS = ['imagenet', 'birds_cropped', 'flowers']
SEED = 5


def _make(out, tasks=TASKS, **overrides):
    flags = dict(layout='finegrained', task_names=tasks, classes=3, train=6, test=2, size=40)
    flags.update(overrides)
    return make_toy_data(out, **flags)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    """3 tasks x 3 classes, 6 train / 2 test JPEGs per class, sides 30-60 px."""
    return _make(tmp_path_factory.mktemp('finegrained'))


def _args(data_root, **overrides):
    args = dict(data_root=data_root, batch_size=4, val_batch_size=5, workers=0, seed=SEED,
                val_fraction=0.0, num_classes=None, image_size=32)
    args.update(overrides)
    return SimpleNamespace(**args)


def _epoch(loader, epoch):
    seed_loader_epoch(loader, SEED, epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


def _rgb(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ----- the toy generator's fine-grained layout ----------------------------------------------------
def test_toy_layout_is_finegrained_jpeg_of_varying_sizes(root, tmp_path):
    assert sorted(os.listdir(root)) == sorted(TASKS)
    assert sorted(os.listdir(os.path.join(root, 'imagenet'))) == ['train', 'val']
    assert sorted(os.listdir(os.path.join(root, 'flowers'))) == ['test', 'train']
    sizes = set()
    for folder, _, files in os.walk(root):
        for name in files:
            assert name.endswith('.jpg')
            with Image.open(os.path.join(folder, name)) as img:
                assert img.format == 'JPEG' and img.mode == 'RGB'
                sizes.add(img.size)
    assert all(30 <= side <= 60 for size in sizes for side in size)
    assert len(sizes) > 20 and any(w != h for w, h in sizes)
    # deterministic: the same flags give byte-identical files
    from cpg_testlib import tree_bytes
    assert tree_bytes(_make(tmp_path / 'again')) == tree_bytes(root)


# ----- transforms ---------------------------------------------------------------------------------
@pytest.mark.parametrize('task', ['flowers', 'cubs_cropped'])
@pytest.mark.parametrize('size', [224, 32, 33])
def test_transforms_give_s_by_s_for_any_image(task, size):
    gen = torch.Generator().manual_seed(0)
    for width, height in ((17, 301), (301, 17), (225, 224), (1, 1), (500, 375)):
        for train in (False, True):
            out = FineGrainedTransform(task, size, train=train)(_rgb(width, height), gen)
            assert out.shape == (3, size, size) and out.dtype == torch.float32


def test_test_transforms_are_torchvision_pipelines():
    """Test time: Resize(R) + CenterCrop(S), or Resize((S, S)) for cropped tasks, then
    ToTensor + Normalize(ImageNet) -- bitwise torchvision's."""
    image = _rgb(333, 250)
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    assert resize_side(224) == 256
    plain = T.Compose([T.Resize(256), T.CenterCrop(224)] + normalize)
    cropped = T.Compose([T.Resize((224, 224))] + normalize)
    assert torch.equal(FineGrainedTransform('wikiart', 224)(image), plain(image))
    assert torch.equal(FineGrainedTransform('stanford_cars_cropped', 224)(image), cropped(image))


@pytest.mark.parametrize('width, height', [(400, 300), (300, 400), (1000, 10), (10, 1000), (50, 50)])
def test_random_resized_crop_params_are_torchvisions(width, height):
    """The same draws as torchvision's RandomResizedCrop.get_params, fallback included (the
    extreme aspect ratios), when both use the global RNG from one seed."""
    image = _rgb(width, height)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(image, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
        torch.manual_seed(seed)
        assert random_resized_crop_params(width, height) == tuple(expected)
    # and from a generator, reproducibly
    a = random_resized_crop_params(width, height, torch.Generator().manual_seed(1))
    assert a == random_resized_crop_params(width, height, torch.Generator().manual_seed(1))


def test_cutout_zeroes_a_clipped_square_of_the_right_size():
    assert (cutout_length(224), cutout_length(32), cutout_length(112), cutout_length(8)) == (16, 2, 8, 1)
    size, length, interior = 64, 16, 0
    for seed in range(60):
        image = torch.ones(3, size, size)
        cutout_(image, length, torch.Generator().manual_seed(seed))
        zero = image == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # all channels
        ys, xs = torch.nonzero(zero[0], as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        assert int(zero[0].sum()) == (y1 - y0) * (x1 - x0)  # one rectangle
        assert y1 - y0 <= length and x1 - x0 <= length
        if 0 < y0 and y1 < size and 0 < x0 and x1 < size:
            interior += 1
            assert (y1 - y0, x1 - x0) == (length, length)  # a full square inside the image
        else:
            assert y0 == 0 or x0 == 0 or y1 == size or x1 == size  # clipped at a border
    assert interior > 20
    box = cutout_box(10, 10, 16, torch.Generator().manual_seed(0))
    assert box[0] >= 0 and box[2] >= 0 and box[1] <= 10 and box[3] <= 10


def test_train_transform_draws_only_from_the_sample_generator():
    image = _rgb(120, 90)
    for task in ('flowers', 'cubs_cropped'):
        transform = FineGrainedTransform(task, 32, train=True)
        torch.manual_seed(0)
        a = transform(image, sample_generator(17, 3))
        torch.manual_seed(1)  # the global RNG plays no part
        b = transform(image, sample_generator(17, 3))
        assert torch.equal(a, b)
        others = [transform(image, sample_generator(17, i)) for i in range(4, 12)]
        assert any(not torch.equal(a, o) for o in others)
        assert int((a == 0).all(dim=0).sum()) >= 1  # a cutout (the normalized image has no 0s)


# ----- dataset and provider -----------------------------------------------------------------------
def test_items_and_keys(root):
    data = ImageFiles(root, 'flowers', 'train', train_transform=True, image_size=32)
    assert data.classes == ['class_0', 'class_1', 'class_2'] and len(data) == 18
    assert data.targets.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert data.path(7) == os.path.join(root, 'flowers', 'train', 'class_1', '00001.jpg')
    x, y = data[(123, 7)]
    assert x.shape == (3, 32, 32) and y == 1
    assert torch.equal(x, ImageFiles(root, 'flowers', 'train', True, 32)[(123, 7)][0])  # fresh dataset
    data.set_epoch_seed(123)
    assert torch.equal(data[7][0], x)  # plain index after set_epoch_seed == key
    assert not torch.equal(data[(124, 7)][0], x)
    test = ImageFiles(root, 'flowers', 'test', image_size=32)
    assert torch.equal(test[1][0], test[(99, 1)][0])  # no train transform: no randomness


def test_imagenet_uses_val_as_its_test_split(root, tmp_path):
    provider = FineGrainedTasks(_args(root), 'cpu')
    _, select, num_classes = provider.loaders('imagenet')
    assert num_classes == 3 and select.dataset.root == os.path.join(root, 'imagenet', 'val')
    assert provider.test_loader('imagenet').dataset.root == os.path.join(root, 'imagenet', 'val')
    assert len(select.dataset) == 6


def test_val_fraction_never_touches_the_test_split(root, tmp_path, monkeypatch):
    data = _make(tmp_path / 'data', tasks=['imagenet', 'birds_cropped'])
    removed = [os.path.join(data, 'birds_cropped', 'test'), os.path.join(data, 'imagenet', 'val')]
    for folder in removed:
        shutil.rmtree(folder)
    touched = spy_on_paths(monkeypatch, removed)
    provider = FineGrainedTasks(_args(data, val_fraction=0.2), 'cpu')
    for task in ('birds_cropped', 'imagenet'):
        train, select, num_classes = provider.loaders(task)
        assert num_classes == 3 and len(select.dataset) == 3 and len(train.dataset) == 15
        assert not select.dataset.train_transform and train.dataset.train_transform
        assert select.dataset.names is train.dataset.names  # views share the file list
        seed_loader_epoch(train, SEED, 0)
        batches = list(train) + list(select)
        assert all(x.shape[1:] == (3, 32, 32) for x, _ in batches)
    assert touched == []
    for task, folder in (('birds_cropped', 'test'), ('imagenet', 'val')):
        with pytest.raises(CPGError) as info:
            provider.test_loader(task)
        assert os.path.join(data, task, folder) in str(info.value)
    assert touched  # the spy sees test_loader's look (so it would have seen loaders')


def test_provider_errors(root, tmp_path):
    with pytest.raises(CPGError) as info:
        FineGrainedTasks(_args(root, num_classes=200), 'cpu').loaders('flowers')
    message = str(info.value)
    assert 'has 3 classes' in message and 'is 200' in message and 'NUM_CLASSES/--num_classes' in message
    with pytest.raises(CPGError, match="no folder .*wikiart"):
        FineGrainedTasks(_args(root), 'cpu').loaders('wikiart')
    data = _make(tmp_path / 'data', tasks=['flowers'])
    os.rename(os.path.join(data, 'flowers', 'test', 'class_2'), os.path.join(data, 'flowers', 'test', 'other'))
    with pytest.raises(CPGError, match='class folders of task .flowers. differ'):
        FineGrainedTasks(_args(data), 'cpu').loaders('flowers')
    bad = os.path.join(data, 'flowers', 'train', 'class_0', '00000.jpg')
    with open(bad, 'wb') as f:
        f.write(b'not a jpeg')
    with pytest.raises(CPGError) as info:
        ImageFiles(data, 'flowers', 'train', image_size=32)[0]
    assert bad in str(info.value) and 'check_data' in str(info.value)


def test_one_process_sees_the_ranks_global_batches(root):
    """Global batch 4: the 2 ranks' batches of 2 together are one process's, crops included.
    18 images leave each rank a last batch of ONE (9 = 4 x 2 + 1), which joins the rank's batch
    before it (BatchNorm cannot train on one sample): the ranks' last batch of 3 + 3 is then one
    process's last two batches (4 + 2), in the same order."""
    def batches(dist):
        loader = FineGrainedTasks(_args(root, batch_size=4), 'cpu', dist).loaders('flowers')[0]
        return _epoch(loader, 1)

    def interleave(k):
        (x0, y0), (x1, y1) = ranks[0][k], ranks[1][k]
        return torch.stack([x0, x1], dim=1).flatten(0, 1), torch.stack([y0, y1], dim=1).flatten()

    single = batches(None)
    ranks = [batches(Distributed(rank, rank, 2, 'cpu', 'gloo')) for rank in (0, 1)]
    assert [len(y) for _, y in single] == [4, 4, 4, 4, 2]
    assert [len(y) for _, y in ranks[0]] == [len(y) for _, y in ranks[1]] == [2, 2, 2, 3]
    for k, (images, labels) in enumerate(single[:3]):
        ranked_images, ranked_labels = interleave(k)
        assert torch.equal(labels, ranked_labels)
        assert torch.equal(images, ranked_images)
    ranked_images, ranked_labels = interleave(3)
    assert torch.equal(torch.cat([single[3][1], single[4][1]]), ranked_labels)
    assert torch.equal(torch.cat([single[3][0], single[4][0]]), ranked_images)


@pytest.mark.slow  # starts loader worker processes
def test_batches_repeat_exactly_across_workers_and_resumes(root):
    """0 or 2 (persistent) workers, continued or resumed: bitwise the same epochs."""
    def loader(workers):
        return FineGrainedTasks(_args(root, workers=workers), 'cpu').loaders('imagenet')[0]

    in_process = [_epoch(loader(0), epoch) for epoch in range(3)]
    with_workers = loader(2)
    assert with_workers.persistent_workers
    continued = [_epoch(with_workers, epoch) for epoch in range(3)]
    assert all(_same(a, b) for a, b in zip(in_process, continued))
    torch.manual_seed(999)
    assert _same(_epoch(loader(2), 2), continued[2])
    assert not _same(continued[1], continued[2])


def test_default_workers_by_core_count(monkeypatch):
    import utils.data as data
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    for cpus, decode, in_memory in ((1, 0, 0), (2, 1, 0), (8, 7, 4), (64, 16, 4)):
        monkeypatch.setattr(data, 'available_cpus', lambda cpus=cpus: cpus)
        assert (default_workers(decode=True), default_workers()) == (decode, in_memory)
    monkeypatch.setattr(data, 'available_cpus', lambda: 64)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')  # 8 ranks share the node: 8 cores each
    assert default_workers(decode=True) == 7
    assert FineGrainedTasks(_args('.', workers=None), 'cpu').workers == 7
