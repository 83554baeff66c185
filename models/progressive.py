"""Progressive Neural Networks (Rusu et al. 2016, arXiv 1606.04671) on ResNet-50 columns.

Every task gets its own column, a torchvision ResNet-50 (Bottleneck 3/4/6/3, stride on the 3x3,
1x1 + BN projections) at `base_width`, plus lateral connections from every earlier column
(Section 2, eq. 2). Earlier columns are frozen: they run in eval mode without a graph, so their
tasks' logits never change (no forgetting by construction, at the price of a column per task).
Every column can start from the same torchvision ResNet-50 state dict (load_pretrained into the
newest task), as the CPG paper's ProgressiveNet row starts every column from ImageNet weights.

Lateral connections are the paper's adapters (Section 2, "Adapters", the equation after eq. 2),
one per stage boundary: at each of the 5 points p (the stem's output, i.e. layer1's input; the
outputs of layer1..layer3; layer4's output, i.e. the head's input) column k adds

    h_p^(k) = x_p^(k) + alpha_p^(k) U_p^(k) ReLU(BN(V_p^(k) [x_p^(1), ..., x_p^(k-1)]))

x_p^(j): column j's own activation at p (before its lateral sum), c_p channels in every column;
[...]: their concatenation, (k-1) c_p channels; V: the 1x1 projection onto r_p channels ("for
convolutional layers, dimensionality reduction is performed via 1x1 convolutions"); U: the
lateral's own 1x1 mapping r_p -> c_p; alpha: one learned scalar initialized to a random small value
(uniform in [0, ALPHA_INIT)), which sets the lateral's scale and starts a (pretrained) column close
to its own mapping. No bias terms (the paper omits them). The laterals join the column at its
stage inputs (the paper adds U's output to a layer's pre-activation; a bottleneck stage has no
single such layer).

One addition to the paper's adapter: a BN on the r_p-channel hidden layer. A frozen column's
activations grow with depth and with how its eval statistics fit the new task's images, and the
gradient reaching alpha and V grows with them: without it, a 3-step toy column (tests) diverged
at lr 0.01. With the BN the hidden layer is scale-free, so alpha moves from V's input (the paper)
to U's output: without the BN that is the same function, ReLU(alpha z) = alpha ReLU(z), alpha > 0.

Reduction: r_p = c_p / ADAPTER_REDUCTION (32), i.e. 2, 8, 16, 32, 64 channels at base width 1.
The paper's adapter projects onto one column's layer width n_i, so that lateral parameters stay
"in the same order as |Theta^(1)|" as tasks grow; at ResNet-50's widths (c_p up to 2048) that
would give the five later columns 111.5 M adapter parameters (4.7 columns). The ratio 32 is ours:
the adapters of a 6-task model then hold sum_k sum_p (k c_p r_p + 2 r_p + 1) = 3.49 M parameters
(0.15 of a column) and the model is 568 MB against the paper's 563 MB (tools/model_sizes.py),
where the earlier full-width c_p -> c_p adapters held 83.7 M (873 MB).

Engine fit: the columns live in a PerTask container keyed by task (`columns.per_task[str(k)]`,
adapters inside column k), so task_parameters trains exactly the newest column, its adapters and
its head. There are no masked layers: nothing is shared, picked, pruned or grown.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .dist_norm import BatchNorm2d
from .layers import PerTask
from .multitask import MultiTaskNet
from .resnet import Bottleneck, load_torchvision_resnet

BLOCKS = (3, 4, 6, 3)          # Bottleneck blocks per stage (ResNet-50)
PLANES = (64, 128, 256, 512)   # inner width of each stage at base width 1
EXPANSION = 4                  # a bottleneck's output is 4x its inner width
POINTS = ('layer1', 'layer2', 'layer3', 'layer4', 'head')   # where laterals are added (their input)
ADAPTER_REDUCTION = 32        # r_p = c_p / 32: an adapter's projection width (module docstring)
ALPHA_INIT = 0.01             # alpha ~ U(0, 0.01): "a random small value" (Rusu et al. Section 2)


def _conv(in_ch, out_ch, kernel, stride=1, padding=0):
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')  # torchvision's init
    return conv


def _bn(num_features):
    # an nn.BatchNorm2d; under torchrun the column in training normalizes over the global batch
    return BatchNorm2d(num_features)


def column_widths(base_width):
    """(stem, [(inner, out) of each stage]) of a column: int(c * base_width), at least 1."""
    stem = max(1, int(64 * base_width))
    return stem, [(max(1, int(p * base_width)), max(1, int(p * EXPANSION * base_width))) for p in PLANES]


def adapter_width(channels):
    """r_p: the width an adapter projects `channels` (c_p) onto, at least 1."""
    return max(1, channels // ADAPTER_REDUCTION)


class Adapter(nn.Module):
    """Rusu et al.'s adapter of column k at one point: alpha U ReLU(BN(V [x^(1), ..., x^(k-1)]))."""

    def __init__(self, earlier_columns, channels):
        super().__init__()
        reduced = adapter_width(channels)
        self.project = nn.Conv2d(earlier_columns * channels, reduced, 1, bias=False)   # V
        self.bn = _bn(reduced)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=False)                      # U
        for conv in (self.project, self.expand):
            # fan_in keeps the scale through the narrow projection (fan_out would multiply it by
            # (k-1) c_p / r_p); alpha alone sets how strong the lateral starts
            nn.init.kaiming_normal_(conv.weight, mode='fan_in', nonlinearity='relu')
        self.alpha = nn.Parameter(torch.empty(1).uniform_(0.0, ALPHA_INIT))

    def forward(self, earlier):
        """earlier: columns 1..k-1's (N, c_p, H, W) activations -> (N, c_p, H, W)."""
        anterior = torch.cat(earlier, dim=1)                    # (N, (k-1) c_p, H, W)
        hidden = F.relu(self.bn(self.project(anterior)))        # (N, r_p, H, W)
        return self.alpha * self.expand(hidden)


class Column(nn.Module):
    """One task's ResNet-50 (names as torchvision's: conv1, bn1, layer1.0.conv1, ...) and its
    adapters `laterals[point]` over every earlier column (none for the first column)."""

    def __init__(self, base_width, earlier_columns):
        super().__init__()
        stem, stages = column_widths(base_width)
        self.conv1, self.bn1 = _conv(3, stem, 7, stride=2, padding=3), _bn(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = stem
        for i, ((inner, out), blocks) in enumerate(zip(stages, BLOCKS)):
            stride = 1 if i == 0 else 2
            # block 0 always projects, as in torchvision's resnet50 at every width
            setattr(self, f'layer{i + 1}', nn.Sequential(*[
                Bottleneck(in_ch if b == 0 else out, inner, out, stride if b == 0 else 1, b == 0,
                           conv=_conv, norm=_bn)
                for b in range(blocks)]))
            in_ch = out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        # every column has the same widths: at each point the adapter reads (k-1) c, adds c
        channels = [stem] + [out for _, out in stages]
        self.laterals = nn.ModuleDict(
            {point: Adapter(earlier_columns, c) for point, c in zip(POINTS, channels)}
            if earlier_columns else {})

    def _join(self, point, own, earlier):
        """own activation + the adapter of the earlier columns' activations at `point`."""
        if not earlier:
            return own
        return own + self.laterals[point]([points[point] for points in earlier])

    def forward(self, x, earlier, features=True):
        """({point: own activation}, (N, C) features or None); `earlier`: the points of columns 1..k-1."""
        points = {'layer1': self.maxpool(self.relu(self.bn1(self.conv1(x))))}   # (N, 64w, H/4, W/4)
        for i, point in enumerate(POINTS[1:], start=1):
            stage = getattr(self, f'layer{i}')
            # layer i's output: (N, 256w, H/4, W/4) ... (N, 2048w, H/32, W/32) for the head
            points[point] = stage(self._join(f'layer{i}', points[f'layer{i}'], earlier))
        if not features:
            return points, None
        return points, torch.flatten(self.avgpool(self._join('head', points['head'], earlier)), 1)


class Columns(PerTask):
    """The per-task container of the columns: task k's column is `per_task[str(k)]`, so the
    engine's task_parameters trains it (with its adapters) and nothing of earlier tasks."""

    def __init__(self, base_width):
        super().__init__(factory=None)
        self.base_width = base_width

    def add_task(self, task, num_features=None, copy_from=None, device=None):
        """A fresh column for `task` with adapters from columns 1..task-1 (nothing is copied)."""
        self.per_task[str(task)] = Column(self.base_width, task - 1).to(device or self._device())

    def forward(self, x):
        """Features of the active task k: columns 1..k-1 frozen (eval mode, no graph), then column k."""
        earlier = []
        for j in range(1, self.active_task):
            column = self.per_task[str(j)]
            was_training = column.training
            column.train(False)   # BN uses, never updates, its running statistics
            try:
                with torch.no_grad():
                    earlier.append(column(x, earlier, features=False)[0])
            finally:
                column.train(was_training)
        return self.per_task[str(self.active_task)](x, earlier)[1]


class ProgressiveNet(MultiTaskNet):
    """Progressive network: a ResNet-50 column per task, laterals from every earlier column."""

    # every task's column (not only the first task's) may start from --pretrained: read by the
    # engine, which otherwise allows pretrained weights for the first task only
    pretrained_every_task = True

    def __init__(self, base_width=1.0, multiplier=1.0):
        if multiplier != 1.0:
            raise ValueError(f'{type(self).__name__} has no width multiplier (got {multiplier}): '
                             'every task gets its own column; use 1.0')
        super().__init__(base_width, multiplier)
        self.columns = Columns(base_width)

    # ----- architecture hooks: no masked layer, one per-task module (the columns) -----------------
    def layer_shapes(self, multiplier):
        return {}

    def per_task_widths(self, multiplier):
        return {'columns': self.head_in_features(multiplier)}   # a column's output width

    def head_in_features(self, multiplier):
        return column_widths(self.base_width)[1][-1][1]   # 2048w

    def widen(self, multiplier):
        if multiplier != self.multiplier:
            raise ValueError(f'{type(self).__name__} cannot change its width multiplier '
                             f'({self.multiplier} -> {multiplier}): a progressive network grows by a '
                             'column per task; run it with --max_allowed_network_width_multiplier 1.0')

    def add_task(self, name, num_classes, multiplier=None, head='linear'):
        """Append a task with a fresh column (laterals from every earlier one) and head; its id."""
        if any(t['name'] == name for t in self.tasks):
            raise ValueError(f'task {name!r} is already in the model')
        multiplier = self.multiplier if multiplier is None else multiplier
        self.widen(multiplier)   # refuses any other multiplier
        task = len(self.tasks) + 1
        # the model's device; the first column goes where an empty model would (CPU)
        device = next(iter(self.parameters()), torch.empty(0)).device
        self.columns.add_task(task, device=device)
        self.heads[str(task)] = self.make_head(self.head_in_features(multiplier), num_classes,
                                               head).to(device)
        self.tasks.append({'name': name, 'num_classes': num_classes, 'multiplier': multiplier,
                           'head': head})
        return task

    def features(self, x):
        return self.columns(x)   # (N, 2048w)

    @torch.no_grad()
    def load_pretrained(self, state_dict, task):
        """Copy a torchvision ResNet-50 state dict into task `task`'s column, which must be the
        newest (any task id: every column can start from the same file); its adapters keep their
        init, its head takes fc only when shaped alike (1000 classes), else stays fresh."""
        self.require_task(task)
        if self.base_width != 1.0:
            raise ValueError('pretrained ResNet-50 weights need BASE_WIDTH 1.0 '
                             f'(got BASE_WIDTH {self.base_width})')
        if task != len(self.tasks):
            # later columns read this one through their laterals: their logits would change
            raise ValueError(f'task {task} cannot take pretrained weights: tasks up to '
                             f'{len(self.tasks)} build on its column (load them into the newest task)')
        column = self.columns.per_task[str(task)]
        targets = {k: v for k, v in column.state_dict().items() if not k.startswith('laterals.')}
        optional = {k for k in targets if k.endswith('num_batches_tracked')}
        return load_torchvision_resnet(self, task, state_dict, targets, optional,
                                       self.head_in_features(self.multiplier))


def progressive_resnet50(base_width=1.0, multiplier=1.0):
    """Progressive Neural Networks (Rusu et al. 2016) with ResNet-50 columns: experiment 2's comparison."""
    return ProgressiveNet(base_width=base_width, multiplier=multiplier)


# on the registry's factory too, so that argument checks can read it before a model exists
progressive_resnet50.pretrained_every_task = ProgressiveNet.pretrained_every_task
