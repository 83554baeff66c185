"""Models and file sizes of tools/benchmark.py: the architectures it compares (BENCH_MODELS: the
CPG backbone, its dense reference from plain modules, the default input and batches per device),
CPG tasks built without data (task 1, a pruned task 1 + picking task 2, a simulated T-task model),
the bytes per shared weight of the exported file, and the step timing (interleaved rounds)."""
import io
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402
from models.layers import PICK_INIT, PICK_THRESHOLD, scaled_width  # noqa: E402
from models.resnet import BLOCKS, EXPANSION, PLANES  # noqa: E402
from models.vgg import FC_WIDTH, VGG16_CFG  # noqa: E402
from utils.checkpoint import save_checkpoint, save_compact_checkpoint  # noqa: E402
from utils.compact import compact_state_dict, owner_bits  # noqa: E402
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


class PlainBottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: stride on the 3x3) from plain nn.Conv2d / nn.BatchNorm2d."""

    def __init__(self, in_ch, inner, out, stride, downsample):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_ch, inner, 1, bias=False), nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3, self.bn3 = nn.Conv2d(inner, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_ch, out, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(out)) if downsample else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def plain_resnet50(base_width, num_classes=NUM_CLASSES):
    """torchvision's ResNet-50 layout at the widths of models/resnet.py's ResNetMT at multiplier 1
    (stem 64w, bottleneck inner int(planes * w), output int(4 * planes * w)), from plain modules."""
    stem = scaled_width(64, base_width, 1.0)
    layers = [nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem),
              nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
    in_ch = stem
    for i, (planes, blocks) in enumerate(zip(PLANES, BLOCKS)):
        inner, out = max(1, int(planes * base_width)), max(1, int(planes * base_width * EXPANSION))
        layers += [PlainBottleneck(in_ch if b == 0 else out, inner, out, (1 if i == 0 else 2) if b == 0 else 1,
                                   b == 0) for b in range(blocks)]
        in_ch = out
    layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(in_ch, num_classes)]
    for module in layers:
        for conv in (m for m in module.modules() if isinstance(m, nn.Conv2d)):
            nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
    return nn.Sequential(*layers)


def dense_resnet50(base_width, num_classes=NUM_CLASSES):
    """The dense reference of the CPG ResNet-50: torchvision.models.resnet50 itself at the paper's
    width, the same network from plain modules (plain_resnet50) at a reduced one."""
    if base_width == 1.0:
        import torchvision
        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    return plain_resnet50(base_width, num_classes)


# The architectures tools/benchmark.py --arch compares: label, dense reference, and the defaults
# per device type of the input side, the batches ('32,128': one measurement each) and the width.
# ResNet-50 on CUDA runs at the paper's 224 x 224 and batch 32; on CPU at half the side and batch 8
# (about 1.5 min on 2 cores). Smaller inputs leave so little compute per weight that the per-weight
# passes of masking, pick scores and Adam dominate (at 64 x 64: task k ~1.2-1.25 against 1.13 at 112).
# `loader`: the JPEG loader measurement runs by default.
BENCH_MODELS = {
    'custom_vgg_cifar100': {'label': 'VGG16-BN', 'dense': dense_vgg, 'loader': False, 'epoch': True,
                            'image_size': {'cpu': 32, 'cuda': 32}, 'batches': {'cpu': '32,128', 'cuda': '32,128'},
                            'base_width': {'cpu': 1.0, 'cuda': 1.0}},
    'resnet50': {'label': 'ResNet-50', 'dense': dense_resnet50, 'loader': True, 'epoch': False,
                 'image_size': {'cpu': 112, 'cuda': 224}, 'batches': {'cpu': '8', 'cuda': '32'},
                 'base_width': {'cpu': 1.0, 'cuda': 1.0}},
}


def begin_all(model, task, learn_pick=False, fixed_pick=False):
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=learn_pick, fixed_pick=fixed_pick, weight_decay=WEIGHT_DECAY)


def end_all(model):
    for _, layer in model.masked_layers():
        layer.end_phase()


def first_task(base_width, device, num_classes=NUM_CLASSES, arch=ARCH):
    """Phase A of task 1 (no pick mask)."""
    model = build_model(arch, base_width=base_width).to(device)
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


def second_task(base_width, device, num_classes=NUM_CLASSES, arch=ARCH):
    """Task 2 in Phase A over task 1 pruned to 50%: picks learned, weights gated by ownership."""
    model = first_task(base_width, device, num_classes, arch)
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


def size_report(model, folder, arch=ARCH):
    """Size of model's exported file (owner ids in owner_bits(T) bits) per shared weight against
    the target: 4 + T/8 bytes per weight, +5% for the file format, plus the per-task norms, biases
    and heads as stored. The training checkpoint (whole uint8 owner ids) is given for comparison."""
    tasks = len(model.tasks)
    path = os.path.join(folder, f'tasks{tasks}.pth.tar')
    file_bytes = save_compact_checkpoint(path, model, arch)
    training_bytes = save_checkpoint(path + '.training', model, arch, frozen=True)
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


def paired_ratio(cpg, dense):
    """Median over rounds of cpg/dense within the round: robust to slow drift of the machine."""
    return statistics.median(c / d for c, d in zip(cpg, dense))
