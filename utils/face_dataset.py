"""Experiment 3: the facial tasks (face verification, gender, expression "emotion", age in 5
folds), decoded lazily from aligned-face images, their transforms (spec §6.3), the class weights
of the weighted loss, and the task provider FaceTasks (interface: utils/folder_tasks.py).

Layout: <data_root>/<task>/{train,val}/<class>/<image> for every task; `val` is the test split
of every face task. For the verification task (args.verification_task, 'face_verification') the
train classes are identities and <data_root>/<verification task>/val is aligned LFW, laid out
<person>/<person>_<NNNN>.jpg, whose pairs are listed in args.pairs_file (utils/verification.py).

Transforms (S = image_size, default 112; normalization mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5),
i.e. pixels to [-1, 1]):
    train: resize the shorter side to S -> center crop S -> hflip(p=0.5) -> tensor -> normalize
    test:  resize the shorter side to S -> center crop S -> tensor -> normalize
The center crop is our addition: a no-op on the aligned S x S faces of the paper, it keeps
non-square images (e.g. your own data) collatable. The flip is drawn from the sample's generator
(utils.data.sample_generator), so ranks, worker counts and resumed runs agree.
"""
import os

import torch

from .data import build_eval_loader, build_train_loader, per_rank_batch
from .errors import CPGError
from .finegrained_dataset import ImageFiles, _functional
from .folder_tasks import FolderTasks, class_folders, image_names
from .verification import LFW_FOLDS, PairDataset, read_pairs

VERIFICATION_TASK = 'face_verification'
FACE_TASKS = (VERIFICATION_TASK, 'gender', 'emotion', 'age0', 'age1', 'age2', 'age3', 'age4')
# the class counts of the paper's folders (spec §6.3); the verification task's are its identities
PAPER_CLASSES = {VERIFICATION_TASK: 4630, 'gender': 3, 'emotion': 7,
                 **{f'age{fold}': 8 for fold in range(5)}}
DEFAULT_PAIRS_FILE = 'face_data/lfw_pairs.txt'
DEFAULT_WEIGHTED_LOSS_TASKS = ('emotion',)
DEFAULT_IMAGE_SIZE = 112
FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)

DATA_HINT = ('prepare it as docs/experiment3.md "Data" describes, and check it '
             'with tools/check_data.py --experiment 3')


# ----- layout ------------------------------------------------------------------------------------
def split_dir(data_root, task, split):
    """<data_root>/<task>/<train|val>: the test split of every face task is its val folder."""
    if split not in ('train', 'test'):
        raise CPGError(f'unknown split {split!r}; use train or test')
    return os.path.join(data_root, task, 'val' if split == 'test' else 'train')


def lfw_root(data_root, verification_task=VERIFICATION_TASK):
    """The aligned LFW tree: the verification task's val folder."""
    return split_dir(data_root, verification_task, 'test')


# ----- transforms --------------------------------------------------------------------------------
class FaceTransform:
    """PIL RGB image -> normalized float tensor (3, S, S), the train or test transform (module
    docstring). Called with the sample's generator (None: the global torch RNG)."""

    def __init__(self, image_size=DEFAULT_IMAGE_SIZE, train=False):
        if image_size < 8:
            raise CPGError(f'--image_size must be at least 8, got {image_size}')
        self.size = int(image_size)
        self.train = train

    def __call__(self, image, generator=None):
        TF = _functional()
        image = TF.resize(image, self.size, interpolation=TF.InterpolationMode.BILINEAR)
        image = TF.center_crop(image, [self.size, self.size])
        if self.train and float(torch.rand(1, generator=generator)) < 0.5:
            image = TF.hflip(image)
        return TF.normalize(TF.to_tensor(image), FACE_MEAN, FACE_STD)  # (3, S, S) in [-1, 1]


# ----- dataset -----------------------------------------------------------------------------------
class FaceImages(ImageFiles):
    """The images of <data_root>/<task>/<train|val>/<class>/*, decoded per sample, with the face
    transforms (the lazy file list of utils/finegrained_dataset.ImageFiles)."""

    data_hint = DATA_HINT

    def split_root(self, data_root, task, split):
        return split_dir(data_root, task, split)

    def make_transform(self, task, image_size, train):
        return FaceTransform(image_size, train=train)


def class_counts(train_dir):
    """(class names, image count of each) of a train folder, in label order."""
    classes = class_folders(train_dir)
    return classes, [len(image_names(os.path.join(train_dir, name))) for name in classes]


def loss_weights(counts):
    """Weight (total - n_c) / n_c of each class c with n_c training images (spec §6.3)."""
    total = sum(counts)
    return [(total - n) / n for n in counts]


# ----- provider ------------------------------------------------------------------------------------
class FaceTasks(FolderTasks):
    """Loaders of the experiment-3 tasks under args.data_root (module docstring for the layout
    and transforms). Interface: utils/folder_tasks.py, plus class_weights(task).

    args (beyond FolderTasks'): image_size (S, default 112), pairs_file (default
    face_data/lfw_pairs.txt), verification_task (default 'face_verification'),
    weighted_loss_tasks (default ['emotion']).

    The verification task always selects on the LFW pairs, whatever val_fraction: LFW is the
    paper's only verification set, and held-out training identities would measure another
    thing. Its train loader covers every training identity. self.skipped_pairs (an int, once the
    pairs were read) counts the pairs left out for a missing image, for the engine to log.
    """

    decode_per_sample = True
    data_hint = DATA_HINT

    def __init__(self, args, device, dist=None):
        super().__init__(args, device, dist)
        self.image_size = int(getattr(args, 'image_size', None) or DEFAULT_IMAGE_SIZE)
        self.pairs_file = getattr(args, 'pairs_file', None) or DEFAULT_PAIRS_FILE
        self.verification_task = getattr(args, 'verification_task', None) or VERIFICATION_TASK
        weighted = getattr(args, 'weighted_loss_tasks', None)
        self.weighted_loss_tasks = list(DEFAULT_WEIGHTED_LOSS_TASKS if weighted is None else weighted)
        self.skipped_pairs = None
        self._pairs = None  # read once per provider

    # FolderTasks' layout ------------------------------------------------------------------------------
    def split_dir(self, task, split):
        return split_dir(self.args.data_root, task, split)

    def train_set(self, task):
        return FaceImages(self.args.data_root, task, 'train', train_transform=True,
                          image_size=self.image_size)

    def test_set(self, task):
        return FaceImages(self.args.data_root, task, 'test', image_size=self.image_size)

    # the verification task ----------------------------------------------------------------------------
    def is_verification(self, task):
        return task == self.verification_task

    def pairs(self):
        """[(path1, path2, same)] of the pairs file whose images exist (read once)."""
        if self._pairs is None:
            root = lfw_root(self.args.data_root, self.verification_task)
            if not os.path.isdir(root):
                raise CPGError(f'no LFW folder {root} (the {self.verification_task!r} task\'s val '
                               f'split, <person>/<person>_<NNNN>.jpg); {DATA_HINT}')
            pairs, skipped = read_pairs(self.pairs_file, root)
            if len(pairs) < LFW_FOLDS:
                raise CPGError(f'{len(pairs)} pair(s) of {self.pairs_file} resolve to images under '
                               f'{root} ({skipped} skipped for missing images); the '
                               f'{LFW_FOLDS}-fold protocol needs at least {LFW_FOLDS}; {DATA_HINT}')
            self._pairs, self.skipped_pairs = pairs, skipped
        return self._pairs

    def pair_loader(self):
        """Ordered loader of (image1, image2, same) over the LFW pairs (test transform)."""
        pairs = PairDataset(self.pairs(), FaceTransform(self.image_size, train=False))
        return build_eval_loader(pairs, self.args.val_batch_size, self.workers, self.device)

    # the interface ------------------------------------------------------------------------------------
    def build_loaders(self, task):
        """(train loader, select loader, number of classes); the verification task's select
        loader is the LFW pair loader (class docstring), the others' as in FolderTasks."""
        if not self.is_verification(task):
            return super().build_loaders(task)
        a = self.args
        per_rank_batch(a.batch_size, self.dist)  # before any decoding
        select = self.pair_loader()  # a missing LFW or pairs file fails before the identities are listed
        train = self.train_set(task)
        num_classes = self.checked_num_classes(task, train.classes)
        return (build_train_loader(train, a.batch_size, self.workers, self.device, a.seed, self.dist),
                select, num_classes)

    def test_loader(self, task):
        """The LFW pair loader for the verification task, else the task's val folder."""
        if self.is_verification(task):
            return self.pair_loader()
        return super().test_loader(task)

    val_loader = test_loader

    def class_weights(self, task):
        """None, or for a task of weighted_loss_tasks the float32 weights (C,) on the device:
        (total - n_c) / n_c with n_c the images of class c in the TRAIN folder (spec §6.3; counted
        from the folders, not hard-coded, spec §12 item 35; the whole folder, whatever
        val_fraction)."""
        if task not in self.weighted_loss_tasks:
            return None
        train_dir = self.split_dir(task, 'train')
        if not os.path.isdir(train_dir):
            raise CPGError(f'no folder {train_dir} (task {task!r}, train split); {DATA_HINT}')
        classes, counts = class_counts(train_dir)
        if not classes:
            raise CPGError(f'no class subfolders in {train_dir}; expected {train_dir}/<class>/*.jpg')
        empty = [name for name, n in zip(classes, counts) if n == 0]
        if empty:
            raise CPGError(f'no images in {os.path.join(train_dir, empty[0])}: class weights '
                           f'(total - n_c) / n_c need every class of weighted task {task!r}; '
                           're-create the data folder or remove the empty class folder')
        return torch.tensor(loss_weights(counts), dtype=torch.float32, device=self.device)
