"""Time of one mask update of the gradual pruner (every layer, the whole model) at the paper's
largest width: VGG16-BN at raw width multiplier 1.5 (33 M shared weights), task 1 owning them all.

Usage: python tools/bench_pruner.py [--device auto|cpu|cuda] [--multiplier 1.5] [--repeats 5] [--json PATH]

Both ways of choosing the released entries are timed on the device: `select` (the CPU's: an
in-place selection of the cutoff, with a host sync per layer) and `sort` (the GPU's default: a
stable sort ranks the entries on the device, no host sync). They release exactly the same
entries (tests/test_pruner.py); the figure is the median over the repeats, each update from
sparsity s to s + 0.1 of a fresh copy of the same weights (the pruning stages' steps).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402
from utils.grower import assign_free_capacity  # noqa: E402
from utils.pruner import GradualPruner  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('bench_pruner.py', description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='where the model lives')
    parser.add_argument('--arch', default='custom_vgg_cifar100', help='registry name of the model')
    parser.add_argument('--multiplier', type=float, default=1.5, help='raw width multiplier (the paper\'s largest)')
    parser.add_argument('--repeats', type=int, default=5, help='timed updates per way (median)')
    parser.add_argument('--json', default=None, help='also write the figures to this JSON file')
    return parser


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_updates(model, device, by_sort, repeats):
    """Median seconds of one GradualPruner.apply over the whole model."""
    weights = [layer.weight.detach().clone() for _, layer in model.masked_layers()]
    times = []
    for r in range(repeats + 1):   # the first is a warm-up (allocations, kernels)
        for (_, layer), weight in zip(model.masked_layers(), weights):
            layer.weight.data.copy_(weight)
            layer.owner.fill_(1)
        pruner = GradualPruner(model, 1, 0.0, 0.9, begin_step=0, end_step=100, frequency=10)
        pruner.by_sort = by_sort
        sparsity = 0.1 + 0.1 * (r % 8)
        _sync(device)
        start = time.perf_counter()
        pruner.apply(sparsity)
        _sync(device)
        if r:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(args):
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else
                          ('cpu' if args.device == 'auto' else args.device))
    torch.manual_seed(0)
    model = build_model(args.arch, base_width=1.0, multiplier=args.multiplier).to(device)
    model.add_task('task1', 5, multiplier=args.multiplier)
    assign_free_capacity(model, 1)
    entries = sum(layer.weight.numel() for _, layer in model.masked_layers())
    figures = {'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
               'arch': args.arch, 'multiplier': args.multiplier, 'shared_weights': entries,
               'select_s': time_updates(model, device, False, args.repeats),
               'sort_s': time_updates(model, device, True, args.repeats)}
    print(f'mask update, {args.arch} at width {args.multiplier} ({entries / 1e6:.1f} M shared weights) on '
          f'{figures["device"]}: select {1e3 * figures["select_s"]:.0f} ms, sort {1e3 * figures["sort_s"]:.0f} ms '
          f'(median of {args.repeats})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
