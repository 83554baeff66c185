"""In-memory image-folder dataset for one CIFAR-style task, its normalization and loaders."""

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from utils.cifar100_config import NORM_STATS
from utils.data import make_loader
from utils.errors import CPGError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
SPLITS = ('train', 'test')
PAD = 4  # zero padding of the random crop (spec §6.1)


def _subfolders(path):
    """Return the sorted names of the sub-directories of `path` (empty if it does not exist)."""
    if not os.path.isdir(path):
        return []
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


# Discovery rules shared by the loaders and tools/preflight.py, so that the two never disagree:
# the classes of a task are its sorted sub-folders (labels 0..C-1 in this order), and a class's
# images are the files directly inside it whose names end in IMAGE_EXTENSIONS (any case).
def class_folders(task_dir):
    """Sorted class folder names of `task_dir` (empty if it does not exist)."""
    return _subfolders(task_dir)


def _is_image(entry):
    """An os.DirEntry that counts as an image: a file with an image extension."""
    return entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()


def has_image(folder):
    """True if `folder` directly holds an image; stops at the first one and decodes nothing."""
    with os.scandir(folder) as entries:
        return any(_is_image(entry) for entry in entries)


def _image_files(folder):
    """Return the sorted image file paths directly inside `folder`."""
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if _is_image(entry))
    return [os.path.join(folder, n) for n in names]


def _task_dir(data_root, split, task):
    """Validate the path pieces and return `<data_root>/<split>/<task>`."""
    if split not in SPLITS:
        raise CPGError(f'unknown split {split!r}; use one of {", ".join(SPLITS)}')
    if not os.path.isdir(data_root):
        raise CPGError(f'data folder not found: {data_root}; prepare it with '
                       'tools/cifar100_to_png.py or tools/make_toy_data.py (see README)')
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


class TaskImageFolder(torch.utils.data.Dataset):
    """All images of `<data_root>/<split>/<task>/<class>/*`, decoded once into memory."""

    def __init__(self, data_root, split, task, train_transform=False, mean=None, std=None):
        """Decode every image of the task; labels are the sorted class folders 0..C-1."""
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
            if arrays and array.shape != arrays[0].shape:
                raise CPGError(f'image {path} has size {array.shape[:2]} but {files[0]} has '
                               f'{arrays[0].shape[:2]}; all images of a task must have one size')
            arrays.append(array)
        # (N, H, W, 3) -> (N, 3, H, W) uint8; uint8 keeps 2500 CIFAR images at ~7.7 MB.
        self.images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        self.targets = torch.tensor(labels, dtype=torch.int64)  # (N,)
        self.train_transform = train_transform
        self.epoch_seed = None  # set by utils.data.seed_loader_epoch each epoch
        self.set_normalization(mean, std)

    def set_epoch_seed(self, seed):
        """Augment sample i of this epoch from (seed, i) alone: the draw does not depend on which
        rank or worker loads it, or in which order, so DDP sees what one process sees."""
        self.epoch_seed = seed

    def set_normalization(self, mean, std):
        """Use per-channel `mean`/`std` (3-tuples in [0, 1] units), or none when both are None."""
        if (mean is None) != (std is None):
            raise CPGError('give both mean and std for normalization, or neither')
        if mean is None:
            self.mean = self.std = None
            return
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)

    def __len__(self):
        """Number of images."""
        return self.images.shape[0]

    def _augment(self, image, generator=None):
        """Random crop with zero padding, then random horizontal flip, on a uint8 (3, H, W)."""
        _, height, width = image.shape
        padded = F.pad(image, (PAD, PAD, PAD, PAD))  # (3, H+8, W+8), zeros at the border
        # generator None: the global torch RNG (seeded by seed_everything / the worker seeder)
        top = int(torch.randint(0, 2 * PAD + 1, (1,), generator=generator))
        left = int(torch.randint(0, 2 * PAD + 1, (1,), generator=generator))
        image = padded[:, top:top + height, left:left + width]  # (3, H, W)
        if float(torch.rand(1, generator=generator)) < 0.5:
            image = image.flip(-1)
        return image

    def __getitem__(self, index):
        """Return (float image (3, H, W), int label)."""
        image = self.images[index]  # (3, H, W) uint8
        if self.train_transform:
            generator = None
            if self.epoch_seed is not None:
                generator = torch.Generator().manual_seed((self.epoch_seed * 1_000_003 + index) % 2 ** 63)
            image = self._augment(image, generator)
        image = image.float() / 255.0
        if self.mean is not None:
            image = (image - self.mean) / self.std
        return image, int(self.targets[index])


def task_normalization(data_root, task):
    """Return (mean, std) for `task`: the spec's table value, else computed on its train images."""
    if task in NORM_STATS:
        return NORM_STATS[task]
    return channel_stats(TaskImageFolder(data_root, 'train', task).images)


def get_loaders(data_root, task, batch_size, val_batch_size, workers, device, seed):
    """Return (train loader, test loader, number of classes) for one task."""
    train_set = TaskImageFolder(data_root, 'train', task, train_transform=True)
    val_set = TaskImageFolder(data_root, 'test', task)
    if train_set.classes != val_set.classes:
        raise CPGError(f'train and test class folders of task {task!r} differ under {data_root} '
                       f'({train_set.classes} vs {val_set.classes}); re-create the data folder')
    # Same result as task_normalization, but reuses the decoded train images (no second decode).
    mean, std = NORM_STATS[task] if task in NORM_STATS else channel_stats(train_set.images)
    train_set.set_normalization(mean, std)
    val_set.set_normalization(mean, std)
    # The order of a 1-replica DistributedSampler: under DDP rank r gets global positions r, r + N,
    # ... of the same permutation, so one process sees exactly the ranks' global batches.
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=seed)
    train_loader = make_loader(train_set, batch_size, shuffle=False, workers=workers,
                               device=device, seed=seed, sampler=sampler)
    val_loader = make_loader(val_set, val_batch_size, shuffle=False, workers=workers,
                             device=device, seed=seed)
    return train_loader, val_loader, len(train_set.classes)
