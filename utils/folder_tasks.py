"""Task providers over image folders: the folder-discovery rules and FolderTasks, the base of
utils/cifar100_dataset.CifarTasks (experiment 1) and utils/finegrained_dataset.FineGrainedTasks
(experiment 2). The seeded loaders they build: utils/data.py.

Provider interface (what the engine calls):

    provider = SomeTasks(args, device, dist)           # dist: utils.distributed.Distributed or None
    train_loader, select_loader, num_classes = provider.loaders(task)
    test_loader = provider.test_loader(task)           # inference only

select_loader is what every selection (goal accuracy, pruning ratio, retrain choice) measures:
with args.val_fraction > 0 a stratified held-out part of the TRAIN folder (test-time transforms),
and the test split is not touched at all; with val_fraction == 0 (the paper's behaviour) the test
split itself.
"""

import os

from .data import build_eval_loader, build_train_loader, default_workers, per_rank_batch, stratified_split
from .errors import CPGError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


# ----- folder discovery ---------------------------------------------------------------------------
# Discovery rules shared by both experiments' loaders, tools/preflight.py and tools/check_data.py,
# so that they never disagree: the classes of a split are its sorted sub-folders (labels 0..C-1 in
# this order), and a class's images are the files directly inside it whose names end in
# IMAGE_EXTENSIONS (any case).
def class_folders(split_dir):
    """Sorted class folder names of `split_dir` (empty if it does not exist)."""
    if not os.path.isdir(split_dir):
        return []
    return sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))


def _is_image(entry):
    """An os.DirEntry that counts as an image: a file with an image extension."""
    return entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()


def has_image(folder):
    """True if `folder` directly holds an image; stops at the first one and decodes nothing."""
    with os.scandir(folder) as entries:
        return any(_is_image(entry) for entry in entries)


def image_names(folder):
    """Sorted file names of the images directly inside `folder`."""
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if _is_image(entry))


# ----- the task-provider base ---------------------------------------------------------------------
class FolderTasks:
    """Common part of the task providers: batch / class-count checks, the honest validation
    split and the loaders. Subclasses implement split_dir, train_set and test_set.

    args: data_root, batch_size (GLOBAL), val_batch_size, workers (None: default_workers),
    seed, val_fraction (default 0), num_classes (None: taken from the folders).
    """

    decode_per_sample = False  # True: default_workers for datasets decoded from files
    data_hint = 'see docs/experiment1.md "Data"'

    def __init__(self, args, device, dist=None):
        self.args, self.device, self.dist = args, device, dist
        workers = getattr(args, 'workers', None)
        self.workers = default_workers(self.decode_per_sample) if workers is None else workers
        self._loaders = {}   # loaders() of each task, built once
        self.val_fraction = float(getattr(args, 'val_fraction', 0) or 0)
        if not 0 <= self.val_fraction < 1:
            raise CPGError(f'--val_fraction must be in [0, 1), got {self.val_fraction}; '
                           'use e.g. 0.1, or 0 to select on the test split as the paper does')

    # subclasses ---------------------------------------------------------------------------------
    def split_dir(self, task, split):
        """Folder of `split` ('train' or 'test') of `task`, holding <class>/<image>."""
        raise NotImplementedError

    def train_set(self, task):
        """The task's train folder with the train transform (an EpochKeyedDataset)."""
        raise NotImplementedError

    def test_set(self, task):
        """The task's test folder with the test transform (an EpochKeyedDataset)."""
        raise NotImplementedError

    # the interface ----------------------------------------------------------------------------------
    def loaders(self, task):
        """(train loader, select loader, number of classes) of `task` for this process, built
        once: the stages of a task (--mode task) share the decoded data and the loader workers."""
        key = (task, self.args.batch_size, self.args.val_batch_size, getattr(self, 'image_size', None))
        if key not in self._loaders:
            self._loaders[key] = self.build_loaders(task)
        return self._loaders[key]

    def build_loaders(self, task):
        """loaders(), built."""
        a = self.args
        per_rank_batch(a.batch_size, self.dist)  # before any decoding
        train = self.train_set(task)
        if self.val_fraction > 0:
            # Selection on held-out train images: the test split is not opened, listed or stat'ed.
            train_rows, val_rows = stratified_split(train.targets, self.val_fraction, a.seed)
            select = train.view(val_rows, train_transform=False)
            train = train.view(train_rows, train_transform=True)
        else:
            select = self.test_set(task)
            self._check_same_classes(task, train.classes, select.classes)
        num_classes = self.checked_num_classes(task, train.classes)
        return self.make_loaders(train, select) + (num_classes,)

    def make_loaders(self, train, select):
        """(train loader, select loader) of the two datasets (subclasses may keep them elsewhere)."""
        a = self.args
        return (build_train_loader(train, a.batch_size, self.workers, self.device, a.seed, self.dist),
                build_eval_loader(select, a.val_batch_size, self.workers, self.device))

    def checked_num_classes(self, task, train_classes):
        """The task's class count (its train class folders); CPGError if --num_classes differs."""
        num_classes = len(train_classes)
        expected = getattr(self.args, 'num_classes', None)
        if expected is not None and num_classes != expected:
            raise CPGError(f'task {task!r} under {self.args.data_root} has {num_classes} classes '
                           f'(class folders of {self.split_dir(task, "train")}) but --num_classes '
                           f'is {expected}; set NUM_CLASSES/--num_classes to match')
        return num_classes

    def test_loader(self, task):
        """Ordered loader over the task's test split (inference)."""
        test_dir = self.split_dir(task, 'test')
        if not os.path.isdir(test_dir):
            raise CPGError(f'no test split for task {task!r}: {test_dir} does not exist; inference '
                           f'needs it (training with --val_fraction > 0 does not); {self.data_hint}')
        test = self.test_set(task)
        train_dir = self.split_dir(task, 'train')
        if os.path.isdir(train_dir):  # labels follow the train folder's classes
            self._check_same_classes(task, class_folders(train_dir), test.classes)
        return build_eval_loader(test, self.args.val_batch_size, self.workers, self.device)

    val_loader = test_loader  # the name the engine used before the select/test distinction

    def _check_same_classes(self, task, train_classes, test_classes):
        if list(train_classes) != list(test_classes):
            only_train = sorted(set(train_classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(train_classes))
            raise CPGError(f'train and test class folders of task {task!r} differ '
                           f'({self.split_dir(task, "train")}: {len(train_classes)}, '
                           f'{self.split_dir(task, "test")}: {len(test_classes)}; only in train: '
                           f'{only_train[:5]}, only in test: {only_test[:5]}); re-create the data folder')
