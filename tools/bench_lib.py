"""Models and file sizes of tools/benchmark.py: the dense reference VGG16-BN, CPG tasks built
without data (task 1, a pruned task 1 + picking task 2, a simulated T-task model), and the bytes
per shared weight of the exported file."""
import io
import os
import statistics
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402
from models.layers import PICK_INIT, PICK_THRESHOLD, scaled_width  # noqa: E402
from models.vgg import FC_WIDTH, VGG16_CFG  # noqa: E402
from utils.compact import compact_state_dict, owner_bits, save_compact_checkpoint  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.grower import assign_free_capacity  # noqa: E402
from utils.pruner import release_smallest  # noqa: E402

ARCH = 'custom_vgg_cifar100'
NUM_CLASSES = 5
WEIGHT_DECAY = 4e-5

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


def paired_ratio(cpg, dense):
    """Median over rounds of cpg/dense within the round: robust to slow drift of the machine."""
    return statistics.median(c / d for c, d in zip(cpg, dense))
