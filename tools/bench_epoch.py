"""Whole-epoch timing of tools/benchmark.py (--epoch): the dense reference against CPG task k >= 2
over the repository's real loaders, validation, resume write and logging."""
import gc
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/: bench_lib

from bench_lib import ARCH, NUM_CLASSES, dense_vgg, paired_ratio, second_task  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.cifar100_dataset import CifarTasks  # noqa: E402
from utils.data import default_workers, make_loader, seed_loader_epoch  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.logger import append_jsonl, setup_logger  # noqa: E402
from utils.manager import Manager, build_weight_optimizer, set_lr  # noqa: E402
from utils.picker import build_pick_optimizer  # noqa: E402
from utils.stats import ownership_stats  # noqa: E402

WEIGHT_DECAY = 4e-5
LR, LR_MASK = 1e-2, 5e-4
EPOCH_BATCH, EPOCH_VAL_BATCH = 32, 100  # the paper's training batch; the entry script's evaluation batch

# --------------------------------------------------------------------------------------------------
# Whole epochs (--epoch)
# --------------------------------------------------------------------------------------------------
def epoch_data_task(spec):
    """(root, task) named by --epoch_data: ROOT/TASK (ROOT/train/TASK exists), or ROOT (its first task)."""
    path = os.path.normpath(spec)
    train = os.path.join(path, 'train')
    if os.path.isdir(train):
        tasks = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
        if not tasks:
            raise SystemExit(f'error: --epoch_data {spec}: no task folders in {train}')
        return path, tasks[0]
    root, task = os.path.split(path)
    if not os.path.isdir(os.path.join(root, 'train', task)):
        raise SystemExit(f'error: --epoch_data {spec}: neither {train} nor '
                         f'{os.path.join(root, "train", task)} exists; give ROOT/TASK or ROOT of a '
                         f'CIFAR-layout folder (ROOT/{{train,test}}/TASK/<class>/*.png)')
    return root, task


def generate_epoch_task(args, folder):
    """A 5-class toy PNG task (tools/make_toy_data.py) under `folder`; returns (root, task)."""
    root = os.path.join(folder, 'data')
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                        'make_toy_data.py'),
                           '--out', root, '--tasks', '1', '--classes', str(NUM_CLASSES),
                           '--train', str(args.epoch_train), '--test', str(args.epoch_test),
                           '--seed', str(args.seed)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'error: cannot generate the --epoch task: {proc.stderr.strip()}')
    return root, 'toy_task_1'


class EpochRun:
    """One model's epochs: train over the loader, validate, write the resume state, log a line."""

    def __init__(self, name, loaders, folder, logger, device, seed):
        self.name, self.logger, self.device, self.seed = name, logger, device, seed
        self.train_loader, self.val_loader = loaders
        self.resume = os.path.join(folder, f'{name}_resume.pth.tar')
        self.log_jsonl = os.path.join(folder, f'{name}_log.jsonl')
        self.epoch = 0

    def run(self, train_loader=None, val_loader=None):
        """One epoch (on other loaders for the warm-up); returns seconds per part and in total."""
        train_loader = self.train_loader if train_loader is None else train_loader
        val_loader = self.val_loader if val_loader is None else val_loader
        seed_loader_epoch(train_loader, self.seed, self.epoch)  # as the entry script does
        sync = torch.cuda.synchronize if self.device.type == 'cuda' else (lambda: None)
        marks = [time.perf_counter()]
        train = self.train(train_loader)
        sync()
        marks.append(time.perf_counter())
        val = self.validate(val_loader)
        sync()
        marks.append(time.perf_counter())
        self.save(train, val)
        marks.append(time.perf_counter())
        self.log(train, val)
        marks.append(time.perf_counter())
        self.epoch += 1
        parts = {part: b - a for part, a, b in zip(('train', 'validate', 'resume_write', 'log'), marks, marks[1:])}
        return dict(parts, total=marks[-1] - marks[0])


class DenseEpochs(EpochRun):
    """The dense reference: what a plain training script does per epoch, with the same metrics."""

    def __init__(self, model, amp, channels_last, **kw):
        super().__init__('dense', **kw)
        self.model, self.amp, self.channels_last = model, amp, channels_last
        self.sgd = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True,
                                   weight_decay=WEIGHT_DECAY)

    def _batches(self, loader):
        for images, targets in loader:
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets.to(self.device, non_blocking=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def train(self, loader):
        self.model.train()
        set_lr(self.sgd, LR)
        sums, seen = torch.zeros(2, dtype=torch.float64, device=self.device), 0
        for images, targets in self._batches(loader):
            self.sgd.zero_grad(set_to_none=True)
            with self._autocast():
                output = self.model(images)
                loss = F.cross_entropy(output, targets)
            loss.backward()
            self.sgd.step()
            with torch.no_grad():  # metrics stay on the device until the epoch ends, as in Manager
                sums += torch.stack([loss.detach().double() * targets.numel(),
                                     (output.argmax(1) == targets).sum().double()])
            seen += targets.numel()
        loss_sum, correct = sums.tolist()
        return {'loss': loss_sum / max(seen, 1), 'accuracy': correct / max(seen, 1)}

    @torch.no_grad()
    def validate(self, loader):
        self.model.eval()
        sums, seen = torch.zeros(2, dtype=torch.float64, device=self.device), 0
        for images, targets in self._batches(loader):
            output = self.model(images)  # no autocast, as Manager.validate
            sums += torch.stack([F.cross_entropy(output, targets).double() * targets.numel(),
                                 (output.argmax(1) == targets).sum().double()])
            seen += targets.numel()
        loss_sum, correct = sums.tolist()
        return {'loss': loss_sum / max(seen, 1), 'accuracy': correct / max(seen, 1)}

    def save(self, train, val):
        tmp = f'{self.resume}.tmp'
        torch.save({'model': self.model.state_dict(), 'optimizer': self.sgd.state_dict(),
                    'epoch': self.epoch + 1, 'train': train, 'val': val}, tmp)
        os.replace(tmp, self.resume)

    def log(self, train, val):
        self.logger.info('dense epoch %d | train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%% | lr %s',
                         self.epoch, train['loss'], 100 * train['accuracy'], val['loss'],
                         100 * val['accuracy'], LR)
        append_jsonl(self.log_jsonl, {'epoch': self.epoch, 'time': time.time(), 'train': train, 'val': val})


class CPGEpochs(EpochRun):
    """Task 2 (picking) as Phase A runs it: Manager epochs, save_checkpoint resume write, log line."""

    def __init__(self, model, amp, channels_last, **kw):
        super().__init__('cpg', **kw)
        self.model, self.task = model, len(model.tasks)
        self.sgd = build_weight_optimizer(model, self.task, LR)
        self.adam = build_pick_optimizer(model, LR_MASK)
        # progress bars off: they are display only, and the dense loop has none
        self.manager = Manager(model, self.task, self.device, self.train_loader, self.val_loader,
                               self.logger, show_progress=False, amp='bf16' if amp else None,
                               channels_last=channels_last)

    def train(self, loader):
        set_lr(self.sgd, LR)
        set_lr(self.adam, LR_MASK)
        self.manager.train_loader = loader  # the warm-up runs on a few batches
        return self.manager.train_epoch(self.epoch, [self.sgd, self.adam])[0]

    def validate(self, loader):
        return self.manager.validate(loader=loader)

    def save(self, train, val):
        save_checkpoint(self.resume, self.model, ARCH, frozen=False, signature={'benchmark': 'epoch'},
                        epoch=self.epoch + 1, sgd=self.sgd.state_dict(), adam=self.adam.state_dict(),
                        train=train, val=val)

    def log(self, train, val):
        stats = ownership_stats(self.model, self.task)  # what the entry script logs every epoch
        self.logger.info('finetune task %d epoch %d | train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%% '
                         '| lr %s | sparsity %.4f | owned %.4f | free %.4f | picked %.4f | width %s',
                         self.task, self.epoch, train['loss'], 100 * train['accuracy'], val['loss'],
                         100 * val['accuracy'], {'lr': LR, 'lr_mask': LR_MASK}, stats['sparsity'],
                         stats['owned_fraction'], stats['free_fraction'], stats['picked_fraction'],
                         self.model.multiplier)
        append_jsonl(self.log_jsonl, {'phase': 'finetune', 'task': self.task, 'epoch': self.epoch,
                                      'time': time.time(), 'train': train, 'val': val, **stats})


def measure_epochs(args, device, folder, data=None):
    """Whole epochs of dense and CPG task 2 over the same loaders (data: (root, task), default a
    generated toy task): warm-up on a few batches, then `repeats` timed epochs each in the order
    dense, cpg | cpg, dense | ... (slow drift of the machine cancels out)."""
    root, task = data or generate_epoch_task(args, folder)
    workers = default_workers()
    try:
        # experiment 1's provider: the paper's selection on the test split (val_fraction 0)
        data_args = SimpleNamespace(data_root=root, batch_size=EPOCH_BATCH, val_batch_size=EPOCH_VAL_BATCH,
                                    workers=workers, seed=args.seed, val_fraction=0.0, num_classes=None)
        train_loader, val_loader, num_classes = CifarTasks(data_args, device).loaders(task)
    except CPGError as exc:
        raise SystemExit(f'error: {exc}') from None
    logger = setup_logger(os.path.join(folder, 'epoch.log'), name='benchmark.epoch')
    common = {'loaders': (train_loader, val_loader), 'folder': folder, 'logger': logger,
              'device': device, 'seed': args.seed}
    torch.manual_seed(args.seed)
    runs = {'dense': DenseEpochs(dense_vgg(args.base_width, num_classes).to(device), args.amp,
                                 args.channels_last, **common),
            'cpg': CPGEpochs(second_task(args.base_width, device, num_classes), args.amp,
                             args.channels_last, **common)}
    if args.channels_last:
        for run in runs.values():
            run.model.to(memory_format=torch.channels_last)
    load_start = os.getloadavg()
    if args.epoch_warmup > 0:  # allocator, caches and lazy init: a few batches of every part
        n = min(len(train_loader.dataset), args.epoch_warmup * EPOCH_BATCH)
        warm = make_loader(torch.utils.data.Subset(train_loader.dataset, range(n)), EPOCH_BATCH, True,
                           workers, device, args.seed)
        warm_val = make_loader(torch.utils.data.Subset(val_loader.dataset, range(min(
            len(val_loader.dataset), EPOCH_VAL_BATCH))), EPOCH_VAL_BATCH, False, workers, device, args.seed)
        for run in runs.values():
            run.run(warm, warm_val)
    times = {name: [] for name in runs}
    for r in range(args.epoch_repeats):
        for name in (('dense', 'cpg') if r % 2 == 0 else ('cpg', 'dense')):
            times[name].append(runs[name].run())
            gc.collect()
    median = {name: {part: statistics.median(t[part] for t in ts) for part in ts[0]} for name, ts in times.items()}
    totals = {name: [t['total'] for t in ts] for name, ts in times.items()}
    return {
        'ratio': median['cpg']['total'] / median['dense']['total'],
        'ratio_best': min(totals['cpg']) / min(totals['dense']),
        'ratio_paired': paired_ratio(totals['cpg'], totals['dense']),
        'ms': {'dense_epoch': 1e3 * median['dense']['total'], 'cpg_epoch_taskk': 1e3 * median['cpg']['total']},
        'parts_ms': {name: {part: 1e3 * v for part, v in med.items() if part != 'total'}
                     for name, med in median.items()},
        'epoch_seconds': totals, 'repeats': args.epoch_repeats, 'warmup_batches': args.epoch_warmup,
        'data': args.epoch_data or 'generated toy task (tools/make_toy_data.py)', 'task': task,
        'train_images': len(train_loader.dataset), 'test_images': len(val_loader.dataset),
        'batch': EPOCH_BATCH, 'val_batch': EPOCH_VAL_BATCH, 'workers': workers,
        'load_average': {'start': load_start, 'end': os.getloadavg()},
    }


