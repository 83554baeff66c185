"""Experiment 3's data: the face layout of the toy generator (identities, LFW tree, pairs file),
the spec §6.3 transforms, the class weights from folder counts and the provider FaceTasks."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from cpg_testlib import make_toy_data, spy_on_paths, tree_bytes
from utils.data import sample_generator, seed_loader_epoch
from utils.errors import CPGError
from utils.face_dataset import FACE_MEAN, FACE_STD, FaceImages, FaceTasks, FaceTransform, loss_weights
from utils.finegrained_dataset import open_rgb
from utils.verification import angular_distance, read_pairs, verification_accuracy

TASKS = ['face_verification', 'gender', 'emotion']
SEED = 5


def _make(out, **overrides):
    flags = dict(layout='face', task_names=TASKS, classes=3, train=6, test=2, size=16, identities=4,
                 lfw_people=6, lfw_images=3, pairs=40, missing_pairs=3)
    flags.update(overrides)
    return make_toy_data(out, **flags)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    """face_verification (4 identities x 6, LFW 6 people x 3, 40 + 3 missing pairs), gender and
    emotion (3 classes, 6 train / 2 val), 16 x 16 JPEGs."""
    return _make(tmp_path_factory.mktemp('face'))


def _args(data_root, **overrides):
    args = dict(data_root=data_root, batch_size=4, val_batch_size=5, workers=0, seed=SEED,
                val_fraction=0.0, num_classes=None, image_size=16,
                pairs_file=os.path.join(data_root, 'lfw_pairs.txt'))
    args.update(overrides)
    return SimpleNamespace(**args)


def _rgb(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ----- the toy generator's face layout --------------------------------------------------------------
def test_toy_face_layout(root, tmp_path):
    assert sorted(os.listdir(root)) == sorted(TASKS + ['lfw_pairs.txt'])
    for task in ('gender', 'emotion'):
        assert sorted(os.listdir(os.path.join(root, task))) == ['train', 'val']
        assert sorted(os.listdir(os.path.join(root, task, 'val'))) == ['class_0', 'class_1', 'class_2']
    verification = os.path.join(root, 'face_verification')
    assert sorted(os.listdir(os.path.join(verification, 'train'))) == [f'id_{k:04d}' for k in range(4)]
    people = sorted(os.listdir(os.path.join(verification, 'val')))
    assert people == [f'person_{p:03d}' for p in range(6)]
    for person in people:
        assert sorted(os.listdir(os.path.join(verification, 'val', person))) == [
            f'{person}_{i:04d}.jpg' for i in (1, 2, 3)]
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.jpg'):
                with Image.open(os.path.join(folder, name)) as img:
                    assert img.format == 'JPEG' and img.mode == 'RGB' and img.size == (16, 16)
    lines = open(os.path.join(root, 'lfw_pairs.txt')).read().splitlines()
    assert lines[0] == '10\t2'  # LFW's header: folds, pairs per fold and kind
    fields = [line.split('\t') for line in lines[1:]]
    assert len(fields) == 43
    assert [len(f) for f in fields[:40]] == [3, 4] * 20  # alternating: both kinds in every fold
    assert all(f[0] != f[2] for f in fields[:40] if len(f) == 4)  # different people
    pairs, skipped = read_pairs(os.path.join(root, 'lfw_pairs.txt'), os.path.join(verification, 'val'))
    assert len(pairs) == 40 and skipped == 3  # --missing_pairs lines name no existing image
    # deterministic: the same flags give byte-identical files
    assert tree_bytes(_make(tmp_path / 'again')) == tree_bytes(root)
    assert tree_bytes(_make(tmp_path / 'other', seed=1)) != tree_bytes(root)


def test_toy_identities_separate_in_pixel_space(tmp_path):
    """The LFW toy is verifiable: the angular distance of the raw normalized pixels already
    tells same from different people (a network only has to do better)."""
    data = _make(tmp_path / 'faces', train=1, identities=1, lfw_people=12, lfw_images=4, pairs=120,
                 missing_pairs=0)
    pairs, _ = read_pairs(os.path.join(data, 'lfw_pairs.txt'), os.path.join(data, 'face_verification', 'val'))
    transform = FaceTransform(16)
    first = torch.stack([transform(open_rgb(p)).flatten() for p, _, _ in pairs])  # (120, 768)
    second = torch.stack([transform(open_rgb(q)).flatten() for _, q, _ in pairs])
    same = np.array([s for _, _, s in pairs])
    result = verification_accuracy(angular_distance(first, second).numpy(), same)
    assert result['pairs'] == 120 and result['accuracy'] > 0.8


# ----- transforms ----------------------------------------------------------------------------------
def test_normalization_maps_pixels_to_minus_one_one():
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, 8:] = 255
    for train in (False, True):
        out = FaceTransform(16, train=train)(Image.fromarray(pixels), torch.Generator().manual_seed(0))
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32
        assert set(out.unique().tolist()) == {-1.0, 1.0}
    assert FACE_MEAN == FACE_STD == (0.5, 0.5, 0.5)


def test_non_square_images_are_resized_then_center_cropped():
    """Shorter side to S, then the central S x S (our addition for non-aligned data): bitwise
    torchvision's Resize(S) + CenterCrop(S) + ToTensor + Normalize(0.5, 0.5)."""
    reference = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize(FACE_MEAN, FACE_STD)])
    for width, height in ((40, 20), (20, 40), (16, 16), (112, 112), (9, 30)):
        image = _rgb(width, height)
        out = FaceTransform(16)(image)
        assert out.shape == (3, 16, 16) and torch.equal(out, reference(image))
    square = _rgb(16, 16)
    assert torch.equal(FaceTransform(16)(square), T.Compose(reference.transforms[2:])(square))  # no-op resize


def test_flip_is_drawn_from_the_sample_generator():
    image = _rgb(16, 16)
    plain = FaceTransform(16)(image)
    flipped = plain.flip(-1)
    train = FaceTransform(16, train=True)
    outcomes = []
    for index in range(24):
        torch.manual_seed(index)
        a = train(image, sample_generator(7, index))
        torch.manual_seed(1000 + index)  # the global RNG plays no part
        assert torch.equal(a, train(image, sample_generator(7, index)))
        assert torch.equal(a, plain) or torch.equal(a, flipped)
        outcomes.append(torch.equal(a, flipped))
    assert any(outcomes) and not all(outcomes)
    with pytest.raises(CPGError, match='at least 8'):
        FaceTransform(4)


# ----- class weights ---------------------------------------------------------------------------------
def _class_folder(root, counts):
    for name, count in counts.items():
        folder = root / 'emotion' / 'train' / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f'{i}.jpg')
    return str(root)


def test_class_weights_from_folder_counts(tmp_path):
    """Classes (sorted) anger 1, happy 3, neutral 4 images: total 8, weights (8 - n) / n =
    7, 5/3, 1. Only weighted_loss_tasks get weights."""
    data = _class_folder(tmp_path, {'neutral': 4, 'anger': 1, 'happy': 3})
    weights = FaceTasks(_args(data), 'cpu').class_weights('emotion')
    assert weights.dtype == torch.float32 and weights.device.type == 'cpu'
    assert weights.tolist() == pytest.approx([7.0, 5.0 / 3.0, 1.0])
    assert FaceTasks(_args(data), 'cpu').class_weights('gender') is None
    assert FaceTasks(_args(data, weighted_loss_tasks=[]), 'cpu').class_weights('emotion') is None
    # the paper's AffectNet counts give the spec's weights
    counts = [74874, 134415, 25459, 14090, 6378, 3803, 24882]
    assert loss_weights(counts) == pytest.approx([2.7917, 1.1121, 10.1513, 19.1491, 43.5125,
                                                  73.6519, 10.4099], abs=1e-4)


def test_class_weights_errors(tmp_path):
    data = _class_folder(tmp_path, {'anger': 1, 'fear': 0})
    with pytest.raises(CPGError, match='no images in .*fear'):
        FaceTasks(_args(data), 'cpu').class_weights('emotion')
    with pytest.raises(CPGError, match='no folder .*age0'):
        FaceTasks(_args(data, weighted_loss_tasks=['age0']), 'cpu').class_weights('age0')


# ----- the provider ----------------------------------------------------------------------------------
def test_classification_task_loaders(root):
    provider = FaceTasks(_args(root), 'cpu')
    train, select, num_classes = provider.loaders('gender')
    assert num_classes == 3 and len(train.dataset) == 18 and len(select.dataset) == 6
    assert isinstance(train.dataset, FaceImages) and train.dataset.train_transform
    assert select.dataset.root == os.path.join(root, 'gender', 'val')  # val is the test split
    seed_loader_epoch(train, SEED, 0)
    images, labels = next(iter(train))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64
    assert images.min() >= -1 and images.max() <= 1
    assert provider.test_loader('gender').dataset.root == os.path.join(root, 'gender', 'val')


def test_verification_task_selects_on_lfw_pairs(root):
    provider = FaceTasks(_args(root), 'cpu')
    train, select, num_classes = provider.loaders('face_verification')
    assert num_classes == 4 and len(train.dataset) == 24  # identities are the classes
    assert train.dataset.root == os.path.join(root, 'face_verification', 'train')
    assert len(select.dataset) == 40 and provider.skipped_pairs == 3
    img1, img2, same = next(iter(select))
    assert img1.shape == img2.shape == (5, 3, 16, 16) and same.dtype == torch.bool
    assert same.tolist() == [True, False, True, False, True]  # file order, no shuffling
    assert len(provider.test_loader('face_verification').dataset) == 40
    assert provider.pairs() is provider.pairs()  # read once per provider


def test_val_fraction_holds_out_train_images_but_not_for_verification(root, tmp_path, monkeypatch):
    """gender: the val folder is not touched; face_verification still selects on LFW."""
    provider = FaceTasks(_args(root, val_fraction=0.2), 'cpu')
    touched = spy_on_paths(monkeypatch, [os.path.join(root, 'gender', 'val')])
    train, select, num_classes = provider.loaders('gender')
    assert touched == [] and num_classes == 3
    assert len(train.dataset) == 15 and len(select.dataset) == 3  # 1 of 6 per class held out
    assert not select.dataset.train_transform and select.dataset.names is train.dataset.names
    train, select, _ = provider.loaders('face_verification')
    assert len(train.dataset) == 24 and len(select.dataset) == 40  # every identity; the LFW pairs


def test_provider_errors(root, tmp_path):
    with pytest.raises(CPGError, match='no pairs file'):
        FaceTasks(_args(root, pairs_file=str(tmp_path / 'none.txt')), 'cpu').loaders('face_verification')
    few = tmp_path / 'few.txt'
    few.write_text('header\n' + 'person_000\t1\t2\n' * 9 + 'person_000\t1\t9\n')
    with pytest.raises(CPGError, match=r'9 pair\(s\) .* \(1 skipped .*10-fold'):
        FaceTasks(_args(root, pairs_file=str(few)), 'cpu').loaders('face_verification')
    with pytest.raises(CPGError, match="no LFW folder .*'faces'"):
        FaceTasks(_args(root, verification_task='faces'), 'cpu').test_loader('faces')
    with pytest.raises(CPGError, match='has 3 classes .* is 7'):
        FaceTasks(_args(root, num_classes=7), 'cpu').loaders('emotion')
    with pytest.raises(CPGError, match='has 4 classes .* is 4630'):
        FaceTasks(_args(root, num_classes=4630), 'cpu').loaders('face_verification')
    with pytest.raises(CPGError, match='no folder .*age0.*experiment 3'):
        FaceTasks(_args(root), 'cpu').loaders('age0')
