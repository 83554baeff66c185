"""Every compared method's 6-task ResNet-50 model size in experiment 2 (spec §11.2), computed from
this repository's own models at the paper's settings, beside the paper's model-size column.

Usage: python tools/model_sizes.py [--json] [--cpg_owned 0.5 0.1 0.1 0.1 0.1 0.1]

The models are built on the meta device (no data, no GPU, no download, no tensor allocated): the
paper's six tasks and class counts, ResNet-50 at width 1.0 (the paper's CPG model never grew,
spec §8.1). A size is the bytes of the tensors a model's deployable file holds, as tools/export.py
writes it (utils/compact.py; metadata aside), in MB = 2**20 bytes: the unit of
utils.inference.compact_megabytes, and the paper's (its 554 MB are six ResNet-50s in this unit).
  weights     fp32 convolution weights: the shared ones, or every network's / column's own
  owner ids   ceil(log2(T + 1)) bits per shared weight, T the tasks of the network (1 bit for a
              one-task network, 3 bits for six tasks)
  pick bits   1 bit per entry a task's pick covers: the entries owned by earlier tasks
  norms       per task (per network or column): every BN's weight, bias, running mean and
              variance (fp32) and its batch count (int64); masked layers' per-task biases
  heads       per task: Linear(2048 -> classes), fp32
  adapters    ProgressiveNet's lateral adapters (models/progressive.py), parameters and BN buffers
"""
import itertools
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from models import MaskedLayer, build_model  # noqa: E402
from utils.checkpoint import frozen_state_dict  # noqa: E402
from utils.cli import ArgumentParser, run_tool  # noqa: E402
from utils.compact import owner_bits  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.finegrained_dataset import EXPERIMENT2_TASKS, PAPER_CLASSES  # noqa: E402

MB = 2 ** 20
PARTS = ('weights', 'owner ids', 'pick bits', 'norms', 'heads', 'adapters')
OFF_LIMIT = 0.10    # a computed size further than this from the paper's is flagged, with its reason
NOTE_LIMIT = 0.02   # ... and one further than this prints its reason (rounding of the paper's MB aside)

# (label, paper MB as printed, paper MB compared with, architecture, layout, how it is counted,
#  why it may differ from the paper); layout: 'separate' = one one-task network per task,
#  'columns' = one progressive model, 'shared' = one network, picks per `picks`
METHODS = (
    ('Train from scratch', '554', 554, 'resnet50', 'separate',
     'six one-task ResNet-50 files: weights, 1-bit owner ids, BN, head each',
     'each one-task file keeps 1-bit owner ids (2.8 MB per network) that a plain ResNet-50 file lacks'),
    ('Finetune', '551 / 554', 551, 'resnet50', 'separate',
     'six one-task ResNet-50 files, as train from scratch (only the initialization differs)',
     'as train from scratch, 1-bit owner ids per file (the paper\'s slides give 554 MB for the same '
     'six networks, its README 551)'),
    ('ProgressiveNet', '563', 563, 'progressive_resnet50', 'columns',
     'one model: six ResNet-50 columns (weights, BN), adapters from every earlier column, six heads',
     'the adapters\' projection width (c/32, models/progressive.py) is this repository\'s choice: '
     'the paper does not give its adapters'),
    ('PackNet', '115', 115, 'resnet50', 'shared',
     'one ResNet-50: weights, 3-bit owner ids, six tasks\' BN and heads (no pick)',
     'the owner ids are one 3-bit mask, as PackNet\'s own stored masks'),
    ('Piggyback', '121', 121, 'resnet50', 'piggyback',
     'one ResNet-50 (task 1 owns every weight): 3-bit owner ids, a 1-bit pick of every weight for '
     'tasks 2-6, six tasks\' BN and heads',
     'the engine also stores owner ids (3 bits per weight, 8.4 MB, all task 1\'s), which '
     'piggyback\'s masks-only file does not need'),
    ('CPG', '121', 121, 'resnet50', 'cpg',
     'one ResNet-50 at width 1.0: 3-bit owner ids, each later task\'s 1-bit pick over the earlier '
     'tasks\' weights, six tasks\' BN and heads',
     'the owner ids (3 bits per weight, 8.4 MB); by default every pick covers every weight, the '
     'most a width-1 model stores (--cpg_owned counts a run\'s picks)'),
)


def paper_tasks():
    """The paper's experiment-2 tasks and class counts, in order: [(name, classes)]."""
    return [(name, PAPER_CLASSES[name]) for name in EXPERIMENT2_TASKS]


def build(arch, tasks):
    """`arch` holding `tasks`, every tensor created on the meta device (nothing allocated)."""
    with torch.device('meta'):
        model = build_model(arch)
        for name, classes in tasks:
            model.add_task(name, classes)
    return model


def add_pick_layout(model, owned):
    """Register on every masked layer the packed pick bits each task k >= 2 stores when tasks
    own the shares `owned` of every layer at the end: task k's pick covers the entries of tasks
    1..k-1 (their owners never change after them), ceil(n / 8) bytes as set_pick_bits stores."""
    for _, layer in model.masked_layers():
        entries = layer.weight.numel()   # width 1: every task's block is the whole layer
        for task in range(2, len(model.tasks) + 1):
            covered = round(entries * sum(owned[:task - 1]))
            if covered:   # a task with no earlier weight learns no pick (MaskedLayer.begin_phase)
                layer.register_buffer(f'pick_bits_{task}', torch.empty(
                    math.ceil(covered / 8), dtype=torch.uint8, device=layer.weight.device))
    return model


def _part(module_name, module, key):
    """Which of PARTS the tensor `key` of module `module_name` belongs to."""
    if module_name == 'heads' or module_name.startswith('heads.'):
        return 'heads'
    if '.laterals.' in f'.{module_name}.':
        return 'adapters'
    if module_name.endswith('biases') and isinstance(module, nn.ParameterDict):
        return 'norms'   # masked layers' per-task biases (VGG, SphereNet; ResNet-50 has none)
    if isinstance(module, MaskedLayer):
        if key == 'owner':
            return 'owner ids'
        return 'pick bits' if key.startswith('pick_bits_') else 'weights' if key == 'weight' else 'norms'
    return 'norms' if isinstance(module, nn.modules.batchnorm._BatchNorm) else 'weights'


def stored_bytes(model):
    """{part: bytes} of the tensors tools/export.py writes for `model`: its frozen state dict with
    every owner tensor packed at owner_bits(T) bits per entry (utils/compact.py). Works on meta."""
    parts = {}
    for name, module in model.named_modules():
        for key, _ in itertools.chain(module.named_parameters(recurse=False),
                                      module.named_buffers(recurse=False)):
            parts[f'{name}.{key}' if name else key] = _part(name, module, key)
    bits = owner_bits(len(model.tasks))
    sizes = dict.fromkeys(PARTS, 0)
    for key, tensor in frozen_state_dict(model).items():
        part = parts.get(key, 'pick bits')   # the only new keys: a task in training's packed pick
        sizes[part] += (math.ceil(tensor.numel() * bits / 8) if part == 'owner ids'
                        else tensor.numel() * tensor.element_size())
    return sizes


def method_models(arch, layout, tasks, cpg_owned=None):
    """The models whose files make up a method's 6-task result."""
    if layout == 'separate':
        return [build(arch, [task]) for task in tasks]
    model = build(arch, tasks)
    if layout == 'piggyback':   # task 1 (ImageNet, pretrained) owns every weight; later tasks pick
        add_pick_layout(model, [1.0] + [0.0] * (len(tasks) - 1))
    elif layout == 'cpg':
        add_pick_layout(model, cpg_owned or [1.0] + [0.0] * (len(tasks) - 1))
    return [model]


def compute_sizes(cpg_owned=None):
    """One row per method: computed MB (total and per part), the paper's MB, their ratio, how the
    size is counted, and why it may differ (`off`: more than OFF_LIMIT from the paper)."""
    tasks = paper_tasks()
    rows = []
    for label, paper_text, paper_mb, arch, layout, counted, why in METHODS:
        parts = dict.fromkeys(PARTS, 0)
        models = method_models(arch, layout, tasks, cpg_owned)
        for model in models:
            for part, size in stored_bytes(model).items():
                parts[part] += size
        total = sum(parts.values()) / MB
        ratio = total / paper_mb
        if label == 'CPG' and cpg_owned:
            counted += f' (picks of the owned shares {" ".join(f"{o:g}" for o in cpg_owned)})'
        rows.append({'method': label, 'computed_mb': total, 'paper_mb': paper_text, 'ratio': ratio,
                     'networks': len(models),
                     'parts_mb': {p: v / MB for p, v in parts.items() if v},
                     'counted': counted, 'reason': why, 'off': abs(ratio - 1) > OFF_LIMIT})
    return rows


def format_report(rows):
    tasks = ', '.join(f'{name} {classes}' for name, classes in paper_tasks())
    lines = [f'### Experiment 2 model sizes: 6 tasks ({tasks}), ResNet-50 at width 1.0',
             '',
             '| Method | computed (MB) | paper (MB) | computed / paper |',
             '|---|---:|---:|---:|']
    for r in rows:
        lines.append(f'| {r["method"]} | {r["computed_mb"]:.1f} | {r["paper_mb"]} | {r["ratio"]:.3f} |')
    lines += ['', 'MB = 2^20 bytes of the tensors tools/export.py writes (fp32 weights, owner ids at '
              'ceil(log2(T+1)) bits, pick masks at 1 bit per covered entry, BN, heads), counted on '
              'meta-device models of this repository:']
    for r in rows:
        parts = ' + '.join(f'{p} {mb:.1f}' for p, mb in r['parts_mb'].items())
        lines.append(f'- {r["method"]}: {r["counted"]}; {parts}')
    differ = [r for r in rows if abs(r['ratio'] - 1) > NOTE_LIMIT]
    if differ:
        lines += ['', 'Why a size differs from the paper\'s:']
        lines += [f'- {r["method"]} ({100 * (r["ratio"] - 1):+.1f} %'
                  f'{f", more than {100 * OFF_LIMIT:g} % off" if r["off"] else ""}): {r["reason"]}' for r in differ]
    return '\n'.join(lines) + '\n'


def get_args_parser():
    parser = ArgumentParser('model_sizes.py', description='the compared methods\' 6-task ResNet-50 '
                            'model sizes (experiment 2), computed on the meta device')
    # Layout
    parser.add_argument('--cpg_owned', type=float, nargs='+', default=None, metavar='SHARE',
                        help='the share of every layer each of the 6 tasks owns in a CPG run\'s final '
                             'model (run_inference\'s owned_fraction): counts only the pick bits '
                             'over earlier tasks\' weights (default: every pick covers every weight)')
    # Output
    parser.add_argument('--json', action='store_true', help='print the rows as JSON instead of the table')
    return parser


def check_owned(owned):
    """A one-line CPGError unless `owned` is one share in [0, 1] per task, summing to at most 1."""
    if owned is None:
        return
    if len(owned) != len(EXPERIMENT2_TASKS):
        raise CPGError(f'--cpg_owned takes {len(EXPERIMENT2_TASKS)} shares (one per task), got {len(owned)}')
    if any(not 0.0 <= o <= 1.0 for o in owned) or sum(owned) > 1.0 + 1e-6:
        raise CPGError(f'--cpg_owned shares must lie in [0, 1] and sum to at most 1 (got '
                       f'{" ".join(f"{o:g}" for o in owned)})')


def main(args):
    check_owned(args.cpg_owned)
    rows = compute_sizes(args.cpg_owned)
    if args.json:
        print(json.dumps({'unit': 'MB = 2**20 bytes', 'tasks': dict(paper_tasks()), 'methods': rows},
                         indent=2))
    else:
        print(format_report(rows), end='')
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
