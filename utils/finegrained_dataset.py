"""Experiment 2: the fine-grained tasks (ImageNet, then piggyback's cubs_cropped,
stanford_cars_cropped, flowers, wikiart, sketches), decoded lazily from JPEG/PNG files, their
transforms (spec §6.2), and the task provider FineGrainedTasks (interface: utils/folder_tasks.py).

Layout: <data_root>/<task>/{train,test}/<class>/<image>, except 'imagenet', whose test role is
played by ILSVRC2012's validation set: <data_root>/imagenet/{train,val}/<class>/<image>. Class
counts come from the folders (labels: sorted class folder names).

Transforms (S = image_size, default 224; R = round(S * 256 / 224), 256 at 224):
  * tasks whose name contains "cropped" (objects already cropped to their bounding box):
      train: resize to exactly S x S (bilinear) -> hflip(p=0.5) -> tensor -> normalize -> Cutout
      test:  resize to S x S -> tensor -> normalize
  * other tasks:
      train: resize the shorter side to R -> random-resized crop to S (scale 0.08-1, ratio
             3/4-4/3, torchvision's algorithm and fallback) -> hflip -> tensor -> normalize -> Cutout
      test:  resize the shorter side to R -> center crop S -> tensor -> normalize
  * normalization: ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225);
  * Cutout on the normalized tensor (all channels): a centre uniform over the image, a square of
    side L zeroed, clipped at the borders; L = 16 at S = 224, max(1, round(16 * S / 224))
    otherwise (cutout_length).
Every random draw of sample i in an epoch comes from utils.data.sample_generator(epoch seed, i)
(drawn in the order: crop, flip, cutout), so ranks, worker counts and resumed runs agree.
"""

import math
import os

import numpy as np
import torch
from PIL import Image

from utils.data import EpochKeyedDataset
from utils.folder_tasks import FolderTasks, class_folders, image_names
from utils.errors import CPGError

# the paper's experiment-2 sequence, ImageNet first; the class counts of piggyback's folders
EXPERIMENT2_TASKS = ('imagenet', 'cubs_cropped', 'stanford_cars_cropped', 'flowers', 'wikiart',
                     'sketches')
PAPER_CLASSES = {'imagenet': 1000, 'cubs_cropped': 200, 'stanford_cars_cropped': 196,
                 'flowers': 102, 'wikiart': 195, 'sketches': 250}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CUTOUT_AT_224 = 16

DATA_HINT = ('prepare it as docs/experiment2.md "Data" describes, and check it '
             'with tools/check_data.py --experiment 2')


# ----- layout ------------------------------------------------------------------------------------
def split_folder(task, split):
    """Folder name of `split` ('train' or 'test') of `task`: ImageNet's test split is 'val'."""
    if split not in ('train', 'test'):
        raise CPGError(f'unknown split {split!r}; use train or test')
    return 'val' if task == 'imagenet' and split == 'test' else split


def split_dir(data_root, task, split):
    """<data_root>/<task>/<train|test|val>."""
    return os.path.join(data_root, task, split_folder(task, split))


# ----- transforms --------------------------------------------------------------------------------
def _functional():
    """torchvision.transforms.functional, imported on first use: tools/preflight.py and
    tools/check_data.py need only the layout helpers above, without torchvision's ~2 s import."""
    import torchvision.transforms.functional as TF
    return TF


def resize_side(image_size):
    """Shorter side before the (random or center) crop: round(S * 256 / 224)."""
    return int(round(image_size * 256 / 224))


def cutout_length(image_size):
    """Cutout side: 16 at S = 224 (spec §6.2), scaled with the image: max(1, round(16 S / 224))."""
    return max(1, int(round(CUTOUT_AT_224 * image_size / 224)))


def _uniform(low, high, generator):
    return float(torch.empty(1).uniform_(low, high, generator=generator))


def random_resized_crop_params(width, height, generator=None, scale=CROP_SCALE, ratio=CROP_RATIO):
    """(top, left, h, w) of a random-resized crop: torchvision's RandomResizedCrop.get_params
    (10 tries of area in `scale` and log-uniform aspect in `ratio`, then its central fallback),
    with every draw from `generator` (None: the global torch RNG)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect_ratio = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator))
            return top, left, h, w
    # fallback: a central crop with the aspect ratio clamped into `ratio`
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def cutout_box(height, width, length, generator=None):
    """(y0, y1, x0, x1): a `length`-sided square around a centre drawn uniformly over the
    height x width image, clipped to the borders."""
    cy = int(torch.randint(0, height, (1,), generator=generator))
    cx = int(torch.randint(0, width, (1,), generator=generator))
    y0, x0 = cy - length // 2, cx - length // 2
    return max(0, y0), min(height, y0 + length), max(0, x0), min(width, x0 + length)


def cutout_(image, length, generator=None):
    """Zero a random `length` square of a (C, H, W) tensor in place (all channels); returns it."""
    y0, y1, x0, x1 = cutout_box(image.shape[-2], image.shape[-1], length, generator)
    image[..., y0:y1, x0:x1] = 0.0
    return image


class FineGrainedTransform:
    """PIL RGB image -> normalized float tensor (3, S, S), the train or test transform of a task
    (module docstring). Called with the sample's generator (None: the global torch RNG)."""

    def __init__(self, task, image_size=224, train=False):
        if image_size < 8:
            raise CPGError(f'--image_size must be at least 8, got {image_size}')
        self.cropped = 'cropped' in task
        self.size = int(image_size)
        self.resize = resize_side(self.size)
        self.cutout = cutout_length(self.size)
        self.train = train

    def __call__(self, image, generator=None):
        TF = _functional()
        bilinear = TF.InterpolationMode.BILINEAR
        size = self.size
        if self.cropped:
            image = TF.resize(image, [size, size], interpolation=bilinear)
        else:
            image = TF.resize(image, self.resize, interpolation=bilinear)  # shorter side -> R
            if self.train:
                width, height = image.size
                top, left, h, w = random_resized_crop_params(width, height, generator)
                image = TF.resized_crop(image, top, left, h, w, [size, size],
                                        interpolation=bilinear)
            else:
                image = TF.center_crop(image, [size, size])
        if self.train and float(torch.rand(1, generator=generator)) < 0.5:
            image = TF.hflip(image)
        tensor = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)  # (3, S, S)
        if self.train:
            cutout_(tensor, self.cutout, generator)
        return tensor


# ----- dataset -----------------------------------------------------------------------------------
def open_rgb(path):
    """Decode one image file fully into an RGB PIL image; CPGError naming the file if it cannot."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CPGError(f'cannot read image {path} ({exc}); delete or replace the file '
                       '(tools/check_data.py lists every unreadable file)') from None


class ImageFiles(EpochKeyedDataset):
    """The images of <data_root>/<task>/<split>/<class>/*, decoded per sample (PIL, any size).

    Only the file list is held: one fixed-width bytes array of names plus a label per row, so
    that loader workers share it with the main process (Python lists of strings would be copied
    into every worker as their reference counts change).
    """

    data_hint = DATA_HINT

    def __init__(self, data_root, task, split, train_transform=False, image_size=224):
        super().__init__()
        self.task, self.split = task, split
        self.root = self.split_root(data_root, task, split)
        if not os.path.isdir(self.root):
            raise CPGError(f'no folder {self.root} (task {task!r}, {split} split); {self.data_hint}')
        self.classes = class_folders(self.root)
        if not self.classes:
            raise CPGError(f'no class subfolders in {self.root}; expected {self.root}/<class>/*.jpg')
        names, labels = [], []
        for label, name in enumerate(self.classes):
            files = image_names(os.path.join(self.root, name))
            if not files:
                # An empty class would silently shift what the head's outputs mean.
                raise CPGError(f'no images (.png/.jpg/.jpeg) in {os.path.join(self.root, name)}; '
                               're-create the data folder or remove the empty class folder')
            names += [os.fsencode(f) for f in files]
            labels += [label] * len(files)
        self.names = np.array(names, dtype=np.bytes_)  # (N,) fixed width, no per-row objects
        self.row_targets = torch.tensor(labels, dtype=torch.int64)  # (N,)
        self.train_transform = train_transform
        self.image_size = int(image_size)
        self.transforms = {flag: self.make_transform(task, self.image_size, flag)
                           for flag in (False, True)}

    # the layout and transforms of an experiment (utils/face_dataset.FaceImages overrides both)
    def split_root(self, data_root, task, split):
        """The folder holding the class folders of `task`'s `split`."""
        return split_dir(data_root, task, split)

    def make_transform(self, task, image_size, train):
        """The train (train=True) or test transform: PIL image, generator -> (3, S, S)."""
        return FineGrainedTransform(task, image_size, train=train)

    def path(self, row):
        """File path of folder row `row`."""
        label = int(self.row_targets[row])
        return os.path.join(self.root, self.classes[label], os.fsdecode(bytes(self.names[row])))

    def load(self, row, generator):
        """(float image (3, S, S), int label) of folder row `row`."""
        image = open_rgb(self.path(row))
        return self.transforms[bool(self.train_transform)](image, generator), int(self.row_targets[row])


# ----- provider ------------------------------------------------------------------------------------
class FineGrainedTasks(FolderTasks):
    """Loaders of the experiment-2 tasks under args.data_root (module docstring for the layout
    and transforms); args.image_size (default 224) sets S. Interface: utils/folder_tasks.py."""

    decode_per_sample = True
    data_hint = DATA_HINT

    def __init__(self, args, device, dist=None):
        super().__init__(args, device, dist)
        self.image_size = int(getattr(args, 'image_size', 224) or 224)

    def split_dir(self, task, split):
        return split_dir(self.args.data_root, task, split)

    def train_set(self, task):
        return ImageFiles(self.args.data_root, task, 'train', train_transform=True,
                          image_size=self.image_size)

    def test_set(self, task):
        return ImageFiles(self.args.data_root, task, 'test', image_size=self.image_size)
