"""Cost of CPG's masking against the dense network, and the size of the compact multi-task file.

Usage: python tools/benchmark.py [--arch custom_vgg_cifar100|resnet50] [--quick] [--device auto|cpu|cuda]
                                 [--epoch [--epoch_data ROOT/TASK]] [--[no-]loader] [--json PATH]
                                 [--amp] [--channels_last] [--image_size S] [--batches B1,B2]

One process measures, for the paper's VGG16-BN (`custom_vgg_cifar100`, 32x32 inputs, the default)
or ResNet-50 (`resnet50`: 224x224 and batch 32 on CUDA; 112x112 and batch 8 on CPU; bench_lib's
BENCH_MODELS), the time of
  dense train     plain nn.Conv2d/Linear/BatchNorm2d net (ResNet-50: torchvision's), SGD (Nesterov
                  0.9, weight decay 4e-5) step
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
--loader (default for resnet50) times experiment 2's train loader on generated JPEG folders with
the default worker count, alone and feeding the CPG task-1 step, next to the train steps' images/s
(tools/bench_loader.py).
Last, it exports (tools/export.py's format: bit-packed owner ids) a 2-task and a simulated 20-task
model and reports bytes per shared weight against 4 + T/8 (spec §12 item 4).
"""
import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/: bench_lib, bench_epoch

from bench_epoch import epoch_data_task, measure_epochs  # noqa: E402
from bench_lib import (BENCH_MODELS, NUM_CLASSES, StepTimer, end_all, first_task, paired_ratio,  # noqa: E402
                       run_rounds, second_task, simulate_tasks, size_report)
from bench_loader import LOADER_IMAGE_SIDE, LOADER_IMAGES, measure_loader, print_loader  # noqa: E402
from models import build_model  # noqa: E402
from utils.manager import build_weight_optimizer  # noqa: E402
from utils.picker import build_pick_optimizer  # noqa: E402
from utils.pruner import GradualPruner  # noqa: E402

WEIGHT_DECAY = 4e-5
LR, LR_MASK = 1e-2, 5e-4
PRUNE_FREQUENCY = 10
TRAIN_STEPS = ('dense_train', 'cpg_task1', 'cpg_prune', 'cpg_taskk')  # the loader must feed each
TARGETS = {'train_task1': 1.05, 'train_prune': 1.10, 'train_taskk': 1.15, 'inference': 1.05,
           'epoch_taskk': 1.10}
LABELS = {'train_task1': 'train task 1', 'train_prune': f'train prune (every {PRUNE_FREQUENCY})',
          'train_taskk': 'train task k>=2', 'inference': 'inference task 1', 'epoch_taskk': 'epoch task k>=2'}


def get_args_parser():
    parser = argparse.ArgumentParser('CPG vs dense benchmark', add_help=True)
    # What to run
    parser.add_argument('--arch', default='custom_vgg_cifar100', choices=sorted(BENCH_MODELS),
                        help='custom_vgg_cifar100 (experiment 1, 32x32) or resnet50 (experiment 2: 224x224, '
                             'batch 32 on CUDA; 112x112, batch 8 on CPU)')
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'],
                        help='auto = cuda when available, else cpu')
    parser.add_argument('--quick', action='store_true', help='fewer steps of the same models (< 2 min on a 2-core CPU)')
    parser.add_argument('--amp', action='store_true',
                        help='bf16 autocast in the timed steps (CUDA only; ignored on CPU)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile every model\'s forward (dense and CPG alike) before timing')
    parser.add_argument('--channels_last', action='store_true',
                        help='channels-last models and inputs in the timed steps (CUDA only; ignored on CPU)')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--seed', type=int, default=0, help='seed of weights, inputs and the task simulation')
    parser.add_argument('--epoch', action='store_true',
                        help='also time whole epochs (data loading, train, validation, resume write, log) '
                             'of dense and CPG task k >= 2 on a 2500-image PNG task, batch 32')
    parser.add_argument('--loader', action=argparse.BooleanOptionalAction, default=None,
                        help="time experiment 2's train loader on generated JPEGs (default workers, pinned, "
                             'persistent), alone and feeding the CPG task-1 step (default: on for resnet50)')
    parser.add_argument('--loader_images', type=int, default=None,
                        help='train JPEGs of the loader measurement (default 384 on CPU, 4096 on CUDA)')
    parser.add_argument('--loader_image_side', type=int, default=LOADER_IMAGE_SIDE,
                        help='JPEG sides are drawn in 0.75-1.5 x this (default 350: 262-525 px, as ImageNet)')
    parser.add_argument('--image_size', type=int, default=None,
                        help='input side of the timed steps and the loader (default: the architecture\'s '
                             'for the device, e.g. resnet50 224 on CUDA, 112 on CPU)')
    # Paths
    parser.add_argument('--json', default=None, help='write the figures (ratios to dense) to this JSON file')
    parser.add_argument('--epoch_data', default=None,
                        help='task of --epoch: ROOT/TASK of a CIFAR-layout folder (ROOT/{train,test}/TASK/'
                             '<class>/*.png), or ROOT for its first task (default: a generated 5-class '
                             'toy task, 500 train + 100 test images per class)')
    # Smaller configurations (tests); the defaults are the paper's
    parser.add_argument('--base_width', type=float, default=None, help=argparse.SUPPRESS)  # default 1.0
    parser.add_argument('--steps', type=int, default=None, help=argparse.SUPPRESS)   # timed steps per batch
    parser.add_argument('--warmup', type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--batches', default=None,
                        help='comma-separated batches (default: VGG 32,128; resnet50 32 on CUDA, 8 on CPU)')
    parser.add_argument('--loader_workers', type=int, default=None, help=argparse.SUPPRESS)  # default: by cores
    parser.add_argument('--sim_width', type=float, default=0.25, help=argparse.SUPPRESS)  # 20-task model
    parser.add_argument('--epoch_train', type=int, default=500, help=argparse.SUPPRESS)  # generated, per class
    parser.add_argument('--epoch_test', type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument('--epoch_repeats', type=int, default=2, help=argparse.SUPPRESS)  # timed epochs each
    parser.add_argument('--epoch_warmup', type=int, default=5, help=argparse.SUPPRESS)  # warm-up batches
    return parser


class Bench:
    """The models under test and one step function per measurement."""

    def __init__(self, args, device):
        self.device, self.amp, self.channels_last = device, args.amp, args.channels_last
        self.compiled = {} if args.compile else None   # id(model) -> torch.compile(model)
        self.image_size, width, arch = args.image_size, args.base_width, args.arch
        self.dense = BENCH_MODELS[arch]['dense'](width).to(device)
        self.dense_sgd = torch.optim.SGD(self.dense.parameters(), lr=LR, momentum=0.9, nesterov=True,
                                         weight_decay=WEIGHT_DECAY)
        self.task1 = first_task(width, device, arch=arch)
        self.task1_sgd = build_weight_optimizer(self.task1, 1, LR)
        self.prune = first_task(width, device, arch=arch)
        self.prune_sgd = build_weight_optimizer(self.prune, 1, LR)
        self.pruner = None
        self.taskk = second_task(width, device, arch=arch)
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
            x = torch.randn(size, 3, self.image_size, self.image_size, generator=gen).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, NUM_CLASSES, (size,), generator=gen).to(self.device)
            self.inputs[size] = (x, y)
        return self.inputs[size]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _net(self, model):
        if self.compiled is None:
            return model
        if id(model) not in self.compiled:
            self.compiled[id(model)] = torch.compile(model)
        return self.compiled[id(model)]

    def _train(self, model, optimizers, size, batch=None):
        x, y = self.batch(size) if batch is None else batch
        model.train()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.cross_entropy(self._net(model)(x), y)
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

    def task1_train_on(self, x, y):
        """A task-1 step on a loader's device batch (the generated classes folded onto the head's)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self._train(self.task1, [self.task1_sgd], None, (x, y % NUM_CLASSES))

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


def amortized_prune(times, updated):
    """Per-step cost with one mask update every PRUNE_FREQUENCY steps, from medians of both kinds."""
    plain = [t for t, u in zip(times, updated) if not u] or times
    upd = [t for t, u in zip(times, updated) if u] or plain
    base = statistics.median(plain)
    return base + (statistics.median(upd) - base) / PRUNE_FREQUENCY, statistics.median(upd)


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
    images_per_s = {name: size * 1e3 / ms[name] for name in ('dense_train', 'cpg_task1', 'cpg_prune',
                                                             'cpg_taskk', 'dense_infer', 'cpg_infer')}
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
    return {'ratios': ratios, 'paired_ratios': paired, 'ms': ms, 'images_per_s': images_per_s, 'timed_steps': steps,
            'warmup_steps': warmup, 'prune_updates_timed': sum(bool(u) for u in flags['cpg_prune'])}


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
    print(f"\nCPG vs dense {result['model']} (width {result['base_width']}, input {result['image_size']}x"
          f"{result['image_size']}), device {result['device']} ({result['device_name']}), torch "
          f"{result['torch']}, {result['threads']} threads")
    print(f"load average (1, 5, 15 min) at start {result['load_average']['start']}, at end "
          f"{result['load_average']['end']}: figures are only meaningful on an otherwise idle machine")
    for note in result['notes']:
        print(f'note: {note}')
    print(f"{'batch':>5}  {'measurement':<24}{'dense ms':>10}{'cpg ms':>10}{'ratio':>8}{'paired':>8}{'target':>8}  ok"
          f"{'cpg img/s':>11}")
    pairs = {'train_task1': ('dense_train', 'cpg_task1'), 'train_prune': ('dense_train', 'cpg_prune'),
             'train_taskk': ('dense_train', 'cpg_taskk'), 'inference': ('dense_infer', 'cpg_infer')}
    for size, per in result['per_batch'].items():
        for key, (dense, cpg) in pairs.items():
            ratio, paired = per['ratios'][key], per['paired_ratios'].get(key)
            paired = '-' if paired is None else f'{paired:.3f}'
            print(f"{size:>5}  {LABELS[key]:<24}{per['ms'][dense]:>10.1f}{per['ms'][cpg]:>10.1f}"
                  f"{ratio:>8.3f}{paired:>8}{TARGETS[key]:>8.2f}  {'yes' if ratio <= TARGETS[key] else 'NO ':<3}"
                  f"{per['images_per_s'][cpg]:>11.1f}")
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
    if result.get('loader') is not None:
        print_loader(result['loader'])
    print('\nexported file (tools/export.py: owner ids in ceil(log2(T+1)) bits); bound = (4 + T/8) x 1.05 '
          '+ per-task norms/biases/heads as stored')
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


def resolve_defaults(args, device):
    """Fill the architecture's defaults for this device type (bench_lib.BENCH_MODELS) into args."""
    spec, kind = BENCH_MODELS[args.arch], device.type
    args.image_size = args.image_size or spec['image_size'][kind]
    args.batches = args.batches or spec['batches'][kind]
    args.base_width = args.base_width if args.base_width is not None else spec['base_width'][kind]
    args.loader = spec['loader'] if args.loader is None else args.loader
    args.loader_images = args.loader_images or LOADER_IMAGES[kind]
    if args.image_size < 8 or args.base_width <= 0 or args.loader_images < 1 or args.loader_image_side < 8:
        raise SystemExit('error: --image_size and --loader_image_side must be at least 8, --loader_images positive')
    if args.epoch and not spec['epoch']:
        raise SystemExit(f'error: --epoch times experiment 1\'s CIFAR epochs: use it with --arch '
                         f'custom_vgg_cifar100, not {args.arch}')


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    resolve_defaults(args, device)
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
    head = '32' if 32 in batches else str(batches[0])
    args.loader_batch = int(head)
    started, load_start = time.time(), os.getloadavg()

    bench = Bench(args, device)
    gc.collect()
    per_batch = {}
    for size in batches:
        per_batch[str(size)] = measure_batch(bench, timer=StepTimer(device), size=size,
                                             steps=steps[size], warmup=warmup)
        print(f'batch {size}: done after {time.time() - started:.0f} s', flush=True)

    checkpoint, epoch, loader = {}, None, None
    with tempfile.TemporaryDirectory() as folder:
        if args.loader:  # the headline batch's steps against the loader feeding that batch
            train_ips = {k: per_batch[head]['images_per_s'][k] for k in TRAIN_STEPS}
            loader = measure_loader(args, device, folder, bench.task1_train_on, train_ips)
            print(f'loader: done after {time.time() - started:.0f} s', flush=True)
        # T=2: the paper-width model of the task-k measurement, task 2 finished with its learned picks
        end_all(bench.taskk)
        checkpoint['2'] = dict(size_report(bench.taskk, folder, args.arch), width=args.base_width)
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
                checkpoint[key] = dict(size_report(model, folder, args.arch), width=sim_width)

        simulate_tasks(build_model(args.arch, base_width=sim_width).to(device), 20,
                       torch.Generator().manual_seed(args.seed), snapshot)
    if device.type == 'cuda':
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    result = {
        'device': device.type, 'device_name': device_name,
        'torch': torch.__version__, 'threads': torch.get_num_threads(), 'quick': quick,
        'arch': args.arch, 'model': BENCH_MODELS[args.arch]['label'], 'image_size': args.image_size,
        'base_width': args.base_width, 'amp': args.amp, 'channels_last': args.channels_last,
        'batches': batches, 'headline_batch': int(head), 'targets': TARGETS, 'per_batch': per_batch,
        'ratios': dict(per_batch[head]['ratios'], **({'epoch_taskk': epoch['ratio']} if epoch else {})),
        'epoch': epoch, 'loader': loader,
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
