"""Loader throughput of tools/benchmark.py (--loader): experiment 2's train loader over a folder of
JPEGs of photo-like sizes, alone and feeding the CPG task-1 train step.

The folder is generated with tools/make_toy_data.py --layout finegrained into a temporary folder:
task 'imagenet' (the non-cropped pipeline: decode, shorter side to round(S * 256 / 224),
random-resized crop to S, flip, normalize, Cutout), JPEG sides drawn in [0.75, 1.5] x
--loader_image_side. The loader is FineGrainedTasks(args, device).loaders('imagenet')[0], i.e.
the training loader itself: default_workers(decode=True) workers (cores of this rank's share but
one, at most 16), persistent workers, pinned memory on CUDA, the step's batch and image side S.

Both measurements time one epoch after its first warm-up batches (2 x workers + 1: the workers
have started and every worker has delivered), so neither the workers' start nor a full prefetch
queue counts:
  alone   images/s of iterating the loader (the main process only collates and pins);
  fed     images/s of CPG task-1 train steps taking their batches from the loader (host to device
          copy included): what training gets when decoding and the step share the machine.
loader_keeps_up: the loader alone delivers at least the images/s of the fastest timed train step.
"""
import contextlib
import io
import math
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/: make_toy_data

import make_toy_data  # noqa: E402
from utils.data import available_cpus, seed_loader_epoch  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.finegrained_dataset import FineGrainedTasks  # noqa: E402

LOADER_TASK = 'imagenet'
PER_CLASS = 32  # images per generated class (make_toy_data draws a class's images at once)
LOADER_IMAGES = {'cpu': 384, 'cuda': 4096}  # default --loader_images per device type
LOADER_IMAGE_SIDE = 350  # default --loader_image_side: sides 262-525 px, as ImageNet's photos


def make_jpeg_folder(folder, images, side, seed):
    """<folder>/loader_data/imagenet/{train,val}/<class>/*.jpg, `images` train images (rounded up
    to whole classes of PER_CLASS) and one val image per class; returns the data root."""
    root = os.path.join(folder, 'loader_data')
    classes = max(1, math.ceil(images / PER_CLASS))
    argv = ['--out', root, '--layout', 'finegrained', '--task_names', LOADER_TASK, '--classes', str(classes),
            '--train', str(min(images, PER_CLASS)), '--test', '1', '--size', str(side), '--seed', str(seed)]
    with contextlib.redirect_stdout(io.StringIO()):
        status = make_toy_data.main(make_toy_data.get_args_parser().parse_args(argv))
    if status != 0:
        raise SystemExit(f'error: cannot generate the loader data under {root}')
    return root


def train_loader(root, batch, image_size, device, seed, workers=None):
    """Experiment 2's train loader of the generated task (workers None: the default count)."""
    args = SimpleNamespace(data_root=root, batch_size=batch, val_batch_size=batch, workers=workers,
                           seed=seed, val_fraction=0.0, num_classes=None, image_size=image_size)
    try:
        return FineGrainedTasks(args, device).loaders(LOADER_TASK)[0]
    except CPGError as exc:
        raise SystemExit(f'error: {exc}') from None


def timed_epoch(loader, seed, epoch, warmup, consume, sync):
    """(images, seconds) of epoch `epoch` after its first `warmup` batches, each passed to consume."""
    seed_loader_epoch(loader, seed, epoch)
    images, start = 0, None
    for k, (x, y) in enumerate(loader):
        if k == warmup:
            sync()
            start = time.perf_counter()
        consume(x, y)
        if start is not None:
            images += y.numel()
    sync()
    if start is None:
        raise SystemExit(f'error: --loader_images too small: the epoch has no batch after the '
                         f'{warmup} warm-up batches; raise --loader_images')
    return images, time.perf_counter() - start


def measure_loader(args, device, folder, step, step_ips):
    """The loader's images/s alone and feeding `step(x, y)` (one train step on a device batch);
    step_ips: images/s of the timed train steps (name -> images/s) at the same batch."""
    made = time.perf_counter()
    root = make_jpeg_folder(folder, args.loader_images, args.loader_image_side, args.seed)
    made = time.perf_counter() - made
    loader = train_loader(root, args.loader_batch, args.image_size, device, args.seed, args.loader_workers)
    warmup = 2 * loader.num_workers + 1
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    load_start = os.getloadavg()
    alone = timed_epoch(loader, args.seed, 0, warmup, lambda x, y: None, lambda: None)

    def fed_step(x, y):
        step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))

    fed = timed_epoch(loader, args.seed, 1, warmup, fed_step, sync)
    loader_ips, fed_ips = alone[0] / alone[1], fed[0] / fed[1]
    fastest = max(step_ips, key=step_ips.get)
    return {
        'loader_images_per_s': loader_ips, 'fed_images_per_s': fed_ips,
        'step_images_per_s': step_ips, 'fastest_step': fastest,
        'loader_keeps_up': loader_ips >= step_ips[fastest],
        'loader_over_fastest_step': loader_ips / step_ips[fastest],
        'fed_over_cpg_task1_step': fed_ips / step_ips['cpg_task1'] if 'cpg_task1' in step_ips else None,
        'workers': loader.num_workers, 'pin_memory': loader.pin_memory,
        'persistent_workers': loader.persistent_workers, 'cpus': available_cpus(),
        'batch': args.loader_batch, 'image_size': args.image_size, 'task': LOADER_TASK,
        'train_images': len(loader.dataset), 'timed_images': {'alone': alone[0], 'fed': fed[0]},
        'timed_seconds': {'alone': alone[1], 'fed': fed[1]}, 'warmup_batches': warmup,
        'jpeg_sides': [int(round(0.75 * args.loader_image_side)), int(round(1.5 * args.loader_image_side))],
        'generate_seconds': made, 'load_average': {'start': load_start, 'end': os.getloadavg()},
    }


def print_loader(rep):
    """The loader lines of the benchmark's table."""
    steps = ', '.join(f'{name} {ips:.1f}' for name, ips in rep['step_images_per_s'].items())
    fed = rep['fed_over_cpg_task1_step']
    print(f"\nloader: experiment 2's train loader on {rep['train_images']} generated JPEGs (sides "
          f"{rep['jpeg_sides'][0]}-{rep['jpeg_sides'][1]} px) -> {rep['image_size']}x{rep['image_size']}, batch "
          f"{rep['batch']}, {rep['workers']} workers ({rep['cpus']} cores), pin_memory {rep['pin_memory']}, "
          f"persistent {rep['persistent_workers']}")
    print(f"{'':>5}  {'loader alone':<24}{rep['loader_images_per_s']:>10.1f} images/s  "
          f"(train steps, images/s: {steps})")
    print(f"{'':>5}  {'loader + cpg task 1 step':<24}{rep['fed_images_per_s']:>10.1f} images/s  "
          f"({'-' if fed is None else f'{fed:.2f}'} x the step alone)")
    print(f"{'':>5}  loader keeps up with the fastest step ({rep['fastest_step']}): "
          f"{'yes' if rep['loader_keeps_up'] else 'NO'} ({rep['loader_over_fastest_step']:.2f} x its images/s)")
