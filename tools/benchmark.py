"""Cost of CPG's masking against a dense VGG16-BN, and the size of the compact multi-task file.

Usage: python tools/benchmark.py [--quick] [--epoch [--epoch_data ROOT/TASK]] [--device auto|cpu|cuda]
                                 [--json PATH] [--amp] [--channels_last]

One process measures, for the paper's VGG16-BN (`custom_vgg_cifar100`) on 32x32 inputs, the time of
  dense train     plain nn.Conv2d/Linear/BatchNorm2d net, SGD (Nesterov 0.9, weight decay 4e-5) step
  cpg task 1      Phase A of task 1: gated layers, manual L2 in backward, no pick mask
  cpg prune       task 1 with the GradualPruner every step (frequency 10), mask updates amortized
  cpg task k      task 2 over a pruned task 1: pick masks learned (fused Adam), ownership gating
  inference       eval forward of task 1 from the 2-task model (cached effective weights) vs dense
Steps are interleaved in rounds (dense, cpg, ... in rotating order) and each figure is the median
over the timed steps after warm-up; ratios are CPG / dense.
--epoch also times one whole epoch at the paper's settings (a 2500-image PNG task, batch 32) of
  dense epoch     the dense net: plain SGD loop, validation, torch.save of model + optimizer, a log line
  cpg epoch       task 2 (picking) over a simulated task 1: Manager.train_epoch + Manager.validate,
                  the resume write (save_checkpoint, frozen=False), the per-epoch log line + JSON line
with the repository's loaders, interleaved (dense, cpg, cpg, dense, ...) after a short warm-up.
Last, it exports (tools/export.py's format: bit-packed owner ids) a 2-task and a simulated 20-task
model and reports bytes per shared weight against 4 + T/8 (spec §12 item 4).
"""
import argparse
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402
from models.layers import PICK_INIT, PICK_THRESHOLD, scaled_width  # noqa: E402
from models.vgg import FC_WIDTH, VGG16_CFG  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.cifar100_dataset import get_loaders  # noqa: E402
from utils.compact import compact_state_dict, owner_bits, save_compact_checkpoint  # noqa: E402
from utils.data import default_workers, make_loader  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.grower import assign_free_capacity  # noqa: E402
from utils.logger import append_jsonl, setup_logger  # noqa: E402
from utils.manager import Manager, build_weight_optimizer, set_lr  # noqa: E402
from utils.picker import build_pick_optimizer  # noqa: E402
from utils.pruner import GradualPruner, release_smallest  # noqa: E402
from utils.stats import ownership_stats  # noqa: E402

ARCH = 'custom_vgg_cifar100'
NUM_CLASSES = 5
WEIGHT_DECAY = 4e-5
LR, LR_MASK = 1e-2, 5e-4
PRUNE_FREQUENCY = 10
EPOCH_BATCH, EPOCH_VAL_BATCH = 32, 100  # the paper's training batch; the entry script's evaluation batch
TARGETS = {'train_task1': 1.05, 'train_prune': 1.10, 'train_taskk': 1.15, 'inference': 1.05,
           'epoch_taskk': 1.10}
LABELS = {'train_task1': 'train task 1', 'train_prune': f'train prune (every {PRUNE_FREQUENCY})',
          'train_taskk': 'train task k>=2', 'inference': 'inference task 1', 'epoch_taskk': 'epoch task k>=2'}


def get_args_parser():
    parser = argparse.ArgumentParser('CPG vs dense benchmark', add_help=True)
    # What to run
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'],
                        help='auto = cuda when available, else cpu')
    parser.add_argument('--quick', action='store_true', help='fewer steps of the same models (< 2 min on a 2-core CPU)')
    parser.add_argument('--amp', action='store_true',
                        help='bf16 autocast in the timed steps (CUDA only; ignored on CPU)')
    parser.add_argument('--channels_last', action='store_true',
                        help='channels-last models and inputs in the timed steps (CUDA only; ignored on CPU)')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--seed', type=int, default=0, help='seed of weights, inputs and the task simulation')
    parser.add_argument('--epoch', action='store_true',
                        help='also time whole epochs (data loading, train, validation, resume write, log) '
                             'of dense and CPG task k >= 2 on a 2500-image PNG task, batch 32')
    # Paths
    parser.add_argument('--json', default=None, help='write the figures (ratios to dense) to this JSON file')
    parser.add_argument('--epoch_data', default=None,
                        help='task of --epoch: ROOT/TASK of a CIFAR-layout folder (ROOT/{train,test}/TASK/'
                             '<class>/*.png), or ROOT for its first task (default: a generated 5-class '
                             'toy task, 500 train + 100 test images per class)')
    # Smaller configurations (tests); the defaults are the paper's
    parser.add_argument('--base_width', type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument('--steps', type=int, default=None, help=argparse.SUPPRESS)   # timed steps per batch
    parser.add_argument('--warmup', type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--batches', default='32,128', help=argparse.SUPPRESS)
    parser.add_argument('--sim_width', type=float, default=0.25, help=argparse.SUPPRESS)  # 20-task model
    parser.add_argument('--epoch_train', type=int, default=500, help=argparse.SUPPRESS)  # generated, per class
    parser.add_argument('--epoch_test', type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument('--epoch_repeats', type=int, default=2, help=argparse.SUPPRESS)  # timed epochs each
    parser.add_argument('--epoch_warmup', type=int, default=5, help=argparse.SUPPRESS)  # warm-up batches
    return parser


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def dense_vgg(base_width, num_classes=NUM_CLASSES):
    """The same VGG16-BN from plain modules: what CPG's masking is compared with."""
    layers, in_ch = [], 3
    for v in VGG16_CFG:
        if v == 'M':
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out_ch = scaled_width(v, base_width, 1.0)
        conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
        layers += [conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    fc, std = scaled_width(FC_WIDTH, base_width, 1.0), 0.01 / base_width ** 0.5
    layers += [nn.Flatten(), nn.Linear(in_ch, fc), nn.ReLU(inplace=True), nn.Linear(fc, fc),
               nn.ReLU(inplace=True), nn.Linear(fc, num_classes)]
    for module in layers:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)
    return nn.Sequential(*layers)


def begin_all(model, task, learn_pick=False, fixed_pick=False):
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=learn_pick, fixed_pick=fixed_pick, weight_decay=WEIGHT_DECAY)


def end_all(model):
    for _, layer in model.masked_layers():
        layer.end_phase()


def first_task(base_width, device, num_classes=NUM_CLASSES):
    """Phase A of task 1 (no pick mask)."""
    model = build_model(ARCH, base_width=base_width).to(device)
    model.add_task('task1', num_classes)
    assign_free_capacity(model, 1)
    begin_all(model, 1)
    model.set_task(1)
    return model


@torch.no_grad()
def release_all(model, task, sparsity):
    """Free `sparsity` of every layer's pool (task's + free entries) by magnitude, at once."""
    for _, layer in model.masked_layers():
        pool = int(((layer.owner == task) | (layer.owner == 0)).sum())
        release_smallest(layer, task, sparsity, pool)


def second_task(base_width, device, num_classes=NUM_CLASSES):
    """Task 2 in Phase A over task 1 pruned to 50%: picks learned, weights gated by ownership."""
    model = first_task(base_width, device, num_classes)
    release_all(model, 1, 0.5)
    end_all(model)
    task = model.add_task('task2', num_classes)
    assign_free_capacity(model, task)
    begin_all(model, task, learn_pick=True)
    model.set_task(task)
    return model


@torch.no_grad()
def simulate_tasks(model, num_tasks, generator, snapshot=None):
    """Learn `num_tasks` toy tasks without training: every task takes the free capacity, draws fresh
    weights on it, picks ~half of the earlier tasks' entries and releases 50-90% of its pool by
    magnitude (as the pruner would). snapshot(model, t) is called after each task."""
    for _ in range(num_tasks):
        task = model.add_task(f'toy{len(model.tasks) + 1}', NUM_CLASSES)
        assign_free_capacity(model, task)
        begin_all(model, task, learn_pick=task >= 2)
        sparsity = 0.5 + 0.4 * float(torch.rand((), generator=generator))
        for _, layer in model.masked_layers():
            own = layer.owner == task
            fresh = torch.randn(layer.weight.shape, generator=generator) * layer.weight.std()
            layer.weight.copy_(torch.where(own, fresh.to(layer.weight.device), layer.weight))
            if layer.pick_score is not None:  # uniform in [0, 2*threshold): about half picked
                score = torch.rand(layer.weight.shape, generator=generator) * (2 * PICK_THRESHOLD)
                old = (layer.owner >= 1) & (layer.owner < task)
                layer.pick_score.copy_(torch.where(old, score.to(layer.weight.device), PICK_INIT))
            pool = int((own | (layer.owner == 0)).sum())
            release_smallest(layer, task, sparsity, pool)
        end_all(model)
        if snapshot is not None:
            snapshot(model, task)
    return model


# --------------------------------------------------------------------------------------------------
# Checkpoint size
# --------------------------------------------------------------------------------------------------
def _saved_bytes(tensors):
    """Bytes torch.save spends on `tensors` (a dict), its per-tensor records included."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getbuffer().nbytes


def count_bytes(model):
    """Bytes of the exported (packed-owner) state as the paper counts them, by category; per_task_file
    is what the per-task tensors take in a file of their own (torch's per-tensor records included)."""
    state = compact_state_dict(model)
    shared = {f'{name}.{part}' for name, _ in model.masked_layers() for part in ('weight', 'owner_packed')}
    counts = {'weights': 0, 'owner': 0, 'pick_bits': 0, 'per_task': 0}
    per_task = {}
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if key in shared:
            counts['weights' if key.endswith('.weight') else 'owner'] += nbytes
        elif '.pick_bits_' in key:
            counts['pick_bits'] += nbytes
        else:  # per-task BN, biases of the masked FCs, heads
            counts['per_task'] += nbytes
            per_task[key] = value
    counts['per_task_file'] = _saved_bytes(per_task)
    counts['shared_weights'] = sum(layer.weight.numel() for _, layer in model.masked_layers())
    counts['total'] = counts['weights'] + counts['owner'] + counts['pick_bits'] + counts['per_task']
    return counts


def size_report(model, folder):
    """Size of model's exported file (owner ids in owner_bits(T) bits) per shared weight against
    the target: 4 + T/8 bytes per weight, +5% for the file format, plus the per-task norms, biases
    and heads as stored. The training checkpoint (whole uint8 owner ids) is given for comparison."""
    tasks = len(model.tasks)
    path = os.path.join(folder, f'tasks{tasks}.pth.tar')
    file_bytes = save_compact_checkpoint(path, model, ARCH)
    training_bytes = save_checkpoint(path + '.training', model, ARCH, frozen=True)
    counts = count_bytes(model)
    n = counts['shared_weights']
    bound = (4 + tasks / 8) * 1.05 + counts['per_task_file'] / n
    report = {'tasks': tasks, 'file_bytes': file_bytes, 'bytes_per_weight': file_bytes / n,
              'counted_bytes_per_weight': counts['total'] / n, 'four_plus_t_over_8': 4 + tasks / 8,
              'bound_bytes_per_weight': bound, 'within_bound': file_bytes / n <= bound,
              'breakdown_per_weight': {k: counts[k] / n for k in ('weights', 'owner', 'pick_bits', 'per_task')},
              'per_task_file_bytes_per_weight': counts['per_task_file'] / n,
              'training_file_bytes_per_weight': training_bytes / n,
              'shared_weights': n, 'owner_bits': owner_bits(tasks),
              'owner_dtype': str(model.masked_layers()[0][1].owner.dtype)}
    for name in (path, path + '.training'):
        os.remove(name)
        os.remove(name + '.json')
    return report


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
class StepTimer:
    """Seconds of one call: perf_counter on CPU; CUDA events around the call on an idle device."""

    def __init__(self, device):
        self.cuda = device.type == 'cuda'

    def __call__(self, fn):
        if not self.cuda:
            start = time.perf_counter()
            result = fn()
            return time.perf_counter() - start, result
        torch.cuda.synchronize()  # the queue is empty: the start event fires when recorded
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        torch.cuda.synchronize()  # both events have completed before they are read
        return start.elapsed_time(end) / 1e3, result


class Bench:
    """The models under test and one step function per measurement."""

    def __init__(self, args, device):
        self.device, self.amp, self.channels_last = device, args.amp, args.channels_last
        self.dense = dense_vgg(args.base_width).to(device)
        self.dense_sgd = torch.optim.SGD(self.dense.parameters(), lr=LR, momentum=0.9, nesterov=True,
                                         weight_decay=WEIGHT_DECAY)
        self.task1 = first_task(args.base_width, device)
        self.task1_sgd = build_weight_optimizer(self.task1, 1, LR)
        self.prune = first_task(args.base_width, device)
        self.prune_sgd = build_weight_optimizer(self.prune, 1, LR)
        self.pruner = None
        self.taskk = second_task(args.base_width, device)
        self.taskk_sgd = build_weight_optimizer(self.taskk, 2, LR)
        self.taskk_adam = build_pick_optimizer(self.taskk, LR_MASK)
        if self.channels_last:
            for model in (self.dense, self.task1, self.prune, self.taskk):
                model.to(memory_format=torch.channels_last)
        self.inputs = {}

    def new_pruner(self, timed_steps, warmup):
        """Cubic schedule 0 -> 50% over a window well past the run, so no final update happens;
        the step counter starts so that the first timed step is a mask update."""
        self.prune_step = 0
        self.pruner = GradualPruner(self.prune, 1, 0.0, 0.5, begin_step=0,
                                    end_step=10 * (timed_steps + warmup + PRUNE_FREQUENCY),
                                    frequency=PRUNE_FREQUENCY, optimizer=self.prune_sgd)
        self.pruner.last_update = warmup - PRUNE_FREQUENCY  # due at step `warmup`

    def batch(self, size):
        if size not in self.inputs:
            gen = torch.Generator().manual_seed(size)
            x = torch.randn(size, 3, 32, 32, generator=gen).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, NUM_CLASSES, (size,), generator=gen).to(self.device)
            self.inputs[size] = (x, y)
        return self.inputs[size]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _train(self, model, optimizers, size):
        x, y = self.batch(size)
        model.train()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        for opt in optimizers:
            opt.step()

    @torch.no_grad()
    def _infer(self, model, size):
        model.eval()
        with self._autocast():
            return model(self.batch(size)[0])

    def dense_train(self, size):
        self._train(self.dense, [self.dense_sgd], size)

    def task1_train(self, size):
        self._train(self.task1, [self.task1_sgd], size)

    def taskk_train(self, size):
        self._train(self.taskk, [self.taskk_sgd, self.taskk_adam], size)

    def prune_train(self, size):
        self._train(self.prune, [self.prune_sgd], size)
        updated = self.pruner.step(self.prune_step)
        self.prune_step += 1
        return updated

    def dense_infer(self, size):
        self._infer(self.dense, size)

    def cpg_infer(self, size):
        self._infer(self.taskk, size)


def run_rounds(timer, steps, warmup, fns):
    """Interleave: each round runs every fn once, in an order rotated per round; warm-up untimed."""
    names = list(fns)
    times = {name: [] for name in names}
    flags = {name: [] for name in names}
    for r in range(warmup + steps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, result = timer(fns[name])
            if r >= warmup:
                times[name].append(seconds)
                flags[name].append(result)
    return times, flags


def amortized_prune(times, updated):
    """Per-step cost with one mask update every PRUNE_FREQUENCY steps, from medians of both kinds."""
    plain = [t for t, u in zip(times, updated) if not u] or times
    upd = [t for t, u in zip(times, updated) if u] or plain
    base = statistics.median(plain)
    return base + (statistics.median(upd) - base) / PRUNE_FREQUENCY, statistics.median(upd)


def paired_ratio(cpg, dense):
    """Median over rounds of cpg/dense within the round: robust to slow drift of the machine."""
    return statistics.median(c / d for c, d in zip(cpg, dense))


def measure_batch(bench, timer, size, steps, warmup):
    bench.new_pruner(steps, warmup)
    train, flags = run_rounds(timer, steps, warmup, {
        'dense_train': lambda: bench.dense_train(size), 'cpg_task1': lambda: bench.task1_train(size),
        'cpg_prune': lambda: bench.prune_train(size), 'cpg_taskk': lambda: bench.taskk_train(size)})
    ms = {name: 1e3 * statistics.median(t) for name, t in train.items()}
    prune, update = amortized_prune(train['cpg_prune'], flags['cpg_prune'])
    ms['cpg_prune'], ms['cpg_prune_update_step'] = 1e3 * prune, 1e3 * update
    ms['cpg_prune_plain_step'] = 1e3 * statistics.median(
        [t for t, u in zip(train['cpg_prune'], flags['cpg_prune']) if not u] or train['cpg_prune'])
    # inference of task 1 from the finished 2-task model; its first forward fills the cache
    bench.taskk.set_task(1)
    ms['cpg_infer_first_call'] = 1e3 * timer(lambda: bench.cpg_infer(size))[0]
    infer, _ = run_rounds(timer, 2 * steps, warmup, {
        'dense_infer': lambda: bench.dense_infer(size), 'cpg_infer': lambda: bench.cpg_infer(size)})
    bench.taskk.set_task(2)
    ms.update({name: 1e3 * statistics.median(t) for name, t in infer.items()})
    # prune, paired: within-round ratio of the steps without a mask update, plus the update amortized
    plain = [(c, d) for c, d, u in zip(train['cpg_prune'], train['dense_train'], flags['cpg_prune']) if not u]
    update_share = (ms['cpg_prune_update_step'] - ms['cpg_prune_plain_step']) / PRUNE_FREQUENCY
    paired = {'train_task1': paired_ratio(train['cpg_task1'], train['dense_train']),
              'train_prune': paired_ratio(*zip(*plain)) + update_share / ms['dense_train'] if plain else None,
              'train_taskk': paired_ratio(train['cpg_taskk'], train['dense_train']),
              'inference': paired_ratio(infer['cpg_infer'], infer['dense_infer'])}
    ratios = {'train_task1': ms['cpg_task1'] / ms['dense_train'],
              'train_prune': ms['cpg_prune'] / ms['dense_train'],
              'train_taskk': ms['cpg_taskk'] / ms['dense_train'],
              'inference': ms['cpg_infer'] / ms['dense_infer']}
    return {'ratios': ratios, 'paired_ratios': paired, 'ms': ms, 'timed_steps': steps,
            'warmup_steps': warmup, 'prune_updates_timed': sum(bool(u) for u in flags['cpg_prune'])}


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


def seed_epoch(loader, seed, epoch):
    """As the entry script: data order and augmentation depend only on (seed, epoch), so the dense
    and the CPG epoch of the same index see the same batches."""
    epoch_seed = seed * 100003 + epoch
    loader.generator.manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed)


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
        seed_epoch(train_loader, self.seed, self.epoch)
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
        train_loader, val_loader, num_classes = get_loaders(root, task, EPOCH_BATCH, EPOCH_VAL_BATCH,
                                                            workers, device, args.seed)
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


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def pick_device(name):
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda but CUDA is not available')
    return torch.device(name)


def print_table(result):
    print(f"\nCPG vs dense VGG16-BN (width {result['base_width']}), device {result['device']} "
          f"({result['device_name']}), torch {result['torch']}, {result['threads']} threads")
    print(f"load average (1, 5, 15 min) at start {result['load_average']['start']}, at end "
          f"{result['load_average']['end']}: figures are only meaningful on an otherwise idle machine")
    for note in result['notes']:
        print(f'note: {note}')
    print(f"{'batch':>5}  {'measurement':<24}{'dense ms':>10}{'cpg ms':>10}{'ratio':>8}{'paired':>8}{'target':>8}  ok")
    pairs = {'train_task1': ('dense_train', 'cpg_task1'), 'train_prune': ('dense_train', 'cpg_prune'),
             'train_taskk': ('dense_train', 'cpg_taskk'), 'inference': ('dense_infer', 'cpg_infer')}
    for size, per in result['per_batch'].items():
        for key, (dense, cpg) in pairs.items():
            ratio, paired = per['ratios'][key], per['paired_ratios'].get(key)
            paired = '-' if paired is None else f'{paired:.3f}'
            print(f"{size:>5}  {LABELS[key]:<24}{per['ms'][dense]:>10.1f}{per['ms'][cpg]:>10.1f}"
                  f"{ratio:>8.3f}{paired:>8}{TARGETS[key]:>8.2f}  {'yes' if ratio <= TARGETS[key] else 'NO'}")
        print(f"{'':>5}  (prune: plain step {per['ms']['cpg_prune_plain_step']:.1f} ms, step with mask "
              f"update {per['ms']['cpg_prune_update_step']:.1f} ms; first inference call "
              f"{per['ms']['cpg_infer_first_call']:.1f} ms)")
    epoch = result.get('epoch')
    if epoch is not None:
        ratio, key = epoch['ratio'], 'epoch_taskk'
        print(f"{epoch['batch']:>5}  {LABELS[key]:<24}{epoch['ms']['dense_epoch']:>10.0f}"
              f"{epoch['ms']['cpg_epoch_taskk']:>10.0f}{ratio:>8.3f}{epoch['ratio_paired']:>8.3f}"
              f"{TARGETS[key]:>8.2f}  {'yes' if ratio <= TARGETS[key] else 'NO'}")
        parts = ', '.join(f"{part.replace('_', ' ')} {epoch['parts_ms']['dense'][part]:.0f}/"
                          f"{epoch['parts_ms']['cpg'][part]:.0f}" for part in epoch['parts_ms']['dense'])
        print(f"{'':>5}  (epoch: {epoch['train_images']} train + {epoch['test_images']} test images of "
              f"{epoch['task']}, {epoch['workers']} loader workers, median of {epoch['repeats']} epochs each "
              f"after {epoch['warmup_batches']} warm-up batches; ms dense/cpg: {parts}; epochs s: dense "
              f"{[round(t, 2) for t in epoch['epoch_seconds']['dense']]}, cpg "
              f"{[round(t, 2) for t in epoch['epoch_seconds']['cpg']]}; best/best {epoch['ratio_best']:.3f}; "
              f"load average {tuple(round(x, 2) for x in epoch['load_average']['start'])} -> "
              f"{tuple(round(x, 2) for x in epoch['load_average']['end'])})")
    print('(ratio: median CPG / median dense; paired: median over rounds of the within-round ratio, '
          'prune: of its steps without a mask update, plus the update amortized)')
    print(f"\nexported file (tools/export.py: owner ids in ceil(log2(T+1)) bits); bound = (4 + T/8) x 1.05 "
          f"+ per-task norms/biases/heads as stored")
    print(f"{'tasks':>11}  {'file bytes':>12}{'B/weight':>10}{'counted':>9}{'4+T/8':>7}{'bound':>8}  ok   "
          f"{'training':>8}  breakdown per weight (weights/owner/picks/per-task)")
    for tasks, rep in result['checkpoint'].items():
        b = rep['breakdown_per_weight']
        print(f"{tasks:>11}  {rep['file_bytes']:>12}{rep['bytes_per_weight']:>10.3f}"
              f"{rep['counted_bytes_per_weight']:>9.3f}{rep['four_plus_t_over_8']:>7.3f}"
              f"{rep['bound_bytes_per_weight']:>8.3f}  {'yes' if rep['within_bound'] else 'NO ':<3}  "
              f"{rep['training_file_bytes_per_weight']:>8.3f}  "
              f"{b['weights']:.3f}/{b['owner']:.3f}/{b['pick_bits']:.3f}/{b['per_task']:.3f}"
              f"  ({rep['shared_weights']} shared weights, width {rep['width']}, owner ids "
              f"{rep['owner_bits']} bits, {rep['owner_dtype']} in memory)")
    print('(training: the training checkpoint, whole uint8 owner ids, in bytes per weight)')


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    notes = []
    if device.type != 'cuda' and (args.amp or args.channels_last):
        notes.append('--amp/--channels_last are CUDA-only here: ignored on CPU')
        args.amp = args.channels_last = False
    quick = args.quick
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    batches = [int(b) for b in args.batches.split(',')]
    if min(batches) < 1 or (args.steps is not None and args.steps < 1):
        raise SystemExit('error: --batches and --steps must be positive')
    if args.epoch and (args.epoch_repeats < 1 or args.epoch_warmup < 0 or min(args.epoch_train, args.epoch_test) < 1):
        raise SystemExit('error: --epoch_repeats, --epoch_train and --epoch_test must be positive')
    epoch_data = epoch_data_task(args.epoch_data) if args.epoch and args.epoch_data else None  # fail early
    steps = {b: args.steps or ((3 if b <= 32 else 2) if quick else (21 if b <= 32 else 16)) for b in batches}
    started, load_start = time.time(), os.getloadavg()

    bench = Bench(args, device)
    gc.collect()
    per_batch = {}
    for size in batches:
        per_batch[str(size)] = measure_batch(bench, timer=StepTimer(device), size=size,
                                             steps=steps[size], warmup=warmup)
        print(f'batch {size}: done after {time.time() - started:.0f} s', flush=True)

    checkpoint, epoch = {}, None
    with tempfile.TemporaryDirectory() as folder:
        # T=2: the paper-width model of the task-k measurement, task 2 finished with its learned picks
        end_all(bench.taskk)
        checkpoint['2'] = dict(size_report(bench.taskk, folder), width=args.base_width)
        del bench
        gc.collect()
        if args.epoch:
            epoch = measure_epochs(args, device, folder, epoch_data)
            print(f'epochs: done after {time.time() - started:.0f} s', flush=True)
            gc.collect()
        # T=20 (and 2 again, same lineage): a smaller-width model through 20 simulated tasks
        sim_width = min(args.sim_width, args.base_width)

        def snapshot(model, task):
            if task in (2, 20):
                key = '20' if task == 20 else '2_simulated'
                checkpoint[key] = dict(size_report(model, folder), width=sim_width)

        simulate_tasks(build_model(ARCH, base_width=sim_width).to(device), 20,
                       torch.Generator().manual_seed(args.seed), snapshot)
    head = '32' if '32' in per_batch else str(batches[0])
    if device.type == 'cuda':
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    result = {
        'device': device.type, 'device_name': device_name,
        'torch': torch.__version__, 'threads': torch.get_num_threads(), 'quick': quick,
        'base_width': args.base_width, 'amp': args.amp, 'channels_last': args.channels_last,
        'headline_batch': int(head), 'targets': TARGETS, 'per_batch': per_batch,
        'ratios': dict(per_batch[head]['ratios'], **({'epoch_taskk': epoch['ratio']} if epoch else {})),
        'epoch': epoch,
        'bytes_per_weight': {t: checkpoint[t]['bytes_per_weight'] for t in ('2', '20')},
        'checkpoint': checkpoint, 'notes': notes, 'seconds': time.time() - started,
        'load_average': {'start': load_start, 'end': os.getloadavg()},  # other processes skew timings
        'env': {k: os.environ[k] for k in ('THP_MEM_ALLOC_ENABLE', 'OMP_NUM_THREADS') if k in os.environ},
    }
    print_table(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
            f.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
