"""Experiment 1: in-memory image folders of the CIFAR-style tasks, their normalization, and the
task provider CifarTasks (the interface is described in utils/folder_tasks.py).

Layout: <data_root>/{train,test}/<task>/<class>/<image> (tools/cifar100_to_png.py).
"""

import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.cifar100_config import NORM_STATS
from utils.data import EpochKeyedDataset, per_rank_batch
from utils.device_data import DEVICE_DATA_LIMIT, DeviceBatches, crop_flip, crop_flip_batch, normalize
from utils.folder_tasks import FolderTasks, class_folders, image_names
from utils.errors import CPGError

SPLITS = ('train', 'test')
PAD = 4  # zero padding of the random crop (spec §6.1)
IMAGE_SIZE = 32  # the CIFAR variant of VGG16-BN flattens the 1x1 map left after 5 poolings


def _subfolders(path):
    """Return the sorted names of the sub-directories of `path` (empty if it does not exist)."""
    return class_folders(path)


def _image_files(folder):
    """Return the sorted image file paths directly inside `folder`."""
    return [os.path.join(folder, n) for n in image_names(folder)]


def _task_dir(data_root, split, task):
    """Validate the path pieces and return `<data_root>/<split>/<task>`."""
    if split not in SPLITS:
        raise CPGError(f'unknown split {split!r}; use one of {", ".join(SPLITS)}')
    if not os.path.isdir(data_root):
        raise CPGError(f'data folder not found: {data_root}; prepare it with '
                       'tools/cifar100_to_png.py or tools/make_toy_data.py (see docs/experiment1.md)')
    split_dir = os.path.join(data_root, split)
    task_dir = os.path.join(split_dir, task)
    if not os.path.isdir(task_dir):
        available = _subfolders(split_dir)
        shown = ', '.join(available[:5]) + (', ...' if len(available) > 5 else '')
        raise CPGError(f'task {task!r} not found: {task_dir} does not exist; available tasks '
                       f'under {split_dir}: {shown or "none"}; check --dataset / the data folder')
    return task_dir


def _decode(path):
    """Decode one image file to a uint8 RGB array of shape (H, W, 3)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert('RGB'), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise CPGError(f'cannot read image {path} ({exc}); delete or replace the file') from None


def channel_stats(images):
    """Per-channel mean and population std of uint8 images (N, 3, H, W) in [0, 1], 4 decimals."""
    # float64 accumulation keeps the 4th decimal exact even for millions of pixels.
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255.0  # (3, N*H*W)
    mean = pixels.mean(dim=1)
    std = pixels.std(dim=1, unbiased=False)
    return (tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std))


class TaskImageFolder(EpochKeyedDataset):
    """All images of `<data_root>/<split>/<task>/<class>/*`, decoded once into memory.

    `images` holds every decoded row of the folder (uint8 (N, 3, H, W)); a view (`view()`, the
    held-out validation part or the rest) shares it and only keeps its `rows`.
    """

    def __init__(self, data_root, split, task, train_transform=False, mean=None, std=None):
        """Decode every image of the task; labels are the sorted class folders 0..C-1."""
        super().__init__()
        task_dir = _task_dir(data_root, split, task)
        self.classes = class_folders(task_dir)
        if not self.classes:
            raise CPGError(f'no class subfolders in {task_dir}; expected '
                           f'{task_dir}/<class>/*.png')
        files, labels = [], []
        for label, name in enumerate(self.classes):
            class_files = _image_files(os.path.join(task_dir, name))
            if not class_files:
                # An empty class would silently shift what the head's outputs mean.
                raise CPGError(f'no images (.png/.jpg/.jpeg) in {os.path.join(task_dir, name)}; '
                               're-create the data folder or remove the empty class folder')
            files += class_files
            labels += [label] * len(class_files)

        arrays = []
        for path in tqdm(files, desc=f'loading {split}/{task}', unit='img', disable=None):
            array = _decode(path)  # (H, W, 3)
            if not arrays and array.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
                raise CPGError(f'images of task {task!r} are {array.shape[1]}x{array.shape[0]} ({path}); '
                               f'experiment 1\'s VGG16-BN takes {IMAGE_SIZE}x{IMAGE_SIZE} images: resize them')
            if arrays and array.shape != arrays[0].shape:
                raise CPGError(f'image {path} has size {array.shape[:2]} but {files[0]} has '
                               f'{arrays[0].shape[:2]}; all images of a task must have one size')
            arrays.append(array)
        # (N, H, W, 3) -> (N, 3, H, W) uint8; uint8 keeps 2500 CIFAR images at ~7.7 MB.
        self.images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        self.row_targets = torch.tensor(labels, dtype=torch.int64)  # (N,)
        self.train_transform = train_transform
        self.set_normalization(mean, std)

    def set_normalization(self, mean, std):
        """Use per-channel `mean`/`std` (3-tuples in [0, 1] units), or none when both are None."""
        if (mean is None) != (std is None):
            raise CPGError('give both mean and std for normalization, or neither')
        if mean is None:
            self.mean = self.std = None
            return
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __getitem__(self, key):
        """(float image (3, H, W), int label) of item `key` (an index, or an (epoch seed, index)
        pair). Its crop and flip come from crop_flip(epoch seed, index), as DeviceBatches draws
        them: the same images whether a task is kept on the device or loaded image by image."""
        seed, index = key if isinstance(key, tuple) else (self.epoch_seed, key)
        index = int(index)
        row = index if self.rows is None else int(self.rows[index])
        image = self.images[row:row + 1]  # (1, 3, H, W) uint8
        if self.train_transform:
            if seed is None:   # outside a seeded loader: the global torch RNG
                top, left = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
                draws = (torch.tensor([top]), torch.tensor([left]), torch.rand(1) < 0.5)
            else:
                draws = crop_flip(seed, torch.tensor([index]), PAD)
            image = crop_flip_batch(image, *draws, PAD)
        return normalize(image, self.mean, self.std)[0], int(self.row_targets[row])


def task_normalization(data_root, task):
    """Return (mean, std) for `task`: the spec's table value, else computed on its train images."""
    if task in NORM_STATS:
        return NORM_STATS[task]
    return channel_stats(TaskImageFolder(data_root, 'train', task).images)


def device_batches(dataset, batch_size, device, train, seed=0, dist=None):
    """DeviceBatches of a TaskImageFolder (or a view of one): its images, labels and normalisation."""
    images = dataset.images if dataset.rows is None else dataset.images[dataset.rows]
    batches = DeviceBatches(images, dataset.targets, batch_size, device, mean=dataset.mean, std=dataset.std,
                            train=train, pad=PAD, seed=seed, dist=dist)
    batches.dataset = dataset   # as a DataLoader's: what the batches are drawn from
    return batches


class CifarTasks(FolderTasks):
    """Loaders of the super-class tasks under args.data_root (<split>/<task>/<class>/<image>),
    with the paper's per-task normalisation: the NORM_STATS row of the task, else the statistics
    of its train images. With --val_fraction > 0 the statistics still cover the WHOLE train
    folder, held-out images included (3 means and 3 stds: a negligible leak, and the same
    normalisation whatever the fraction). The interface: utils/folder_tasks.py.
    """

    data_hint = 'prepare it with tools/cifar100_to_png.py (docs/experiment1.md "Data")'

    def __init__(self, args, device, dist=None):
        super().__init__(args, device, dist)
        self._normalization = {}  # task -> (mean, std)

    def split_dir(self, task, split):
        return os.path.join(self.args.data_root, split, task)

    def normalization(self, task, train_set=None):
        """(mean, std) of `task`; reuses `train_set`'s decoded images when given."""
        if task not in self._normalization:
            if task in NORM_STATS:
                self._normalization[task] = NORM_STATS[task]
            else:
                images = (train_set if train_set is not None
                          else TaskImageFolder(self.args.data_root, 'train', task)).images
                self._normalization[task] = channel_stats(images)
        return self._normalization[task]

    def make_loaders(self, train, select):
        """On the training device when the task is small (DEVICE_DATA_LIMIT: every CIFAR task),
        augmented a batch at a time there (utils/device_data.py); else the loaders."""
        nbytes = sum(d.images.numel() if d.rows is None else d.rows.numel() * d.images[0].numel()
                     for d in (train, select))
        if nbytes > DEVICE_DATA_LIMIT:
            return super().make_loaders(train, select)
        a = self.args
        return (device_batches(train, per_rank_batch(a.batch_size, self.dist), self.device, True, a.seed, self.dist),
                device_batches(select, a.val_batch_size, self.device, False))

    def train_set(self, task):
        data = TaskImageFolder(self.args.data_root, 'train', task, train_transform=True)
        data.set_normalization(*self.normalization(task, data))
        return data

    def test_set(self, task):
        mean, std = self.normalization(task)
        return TaskImageFolder(self.args.data_root, 'test', task, mean=mean, std=std)

