"""ResNet-50 (spec §5.2): torchvision's Bottleneck network built from masked convs and per-task BN.

Module names match torchvision's resnet50 (conv1, bn1, layer1.0.downsample.0, ...), so a
torchvision state dict maps onto the model key by key (load_pretrained). Widths follow §3.6 with
the float planes_f = planes * sqrt(m) * base_width: a bottleneck's inner width is int(planes_f)
and its output int(planes_f * 4), so at m = 1.5 layer1 is 78 -> 313, not 4 * 78 = 312.
"""
import math

import torch
import torch.nn as nn

from .dist_norm import BatchNorm2d
from .layers import MaskedConv2d, PerTask, scaled_width
from .multitask import MultiTaskNet, load_pretrained_tensors, read_pretrained_state

BLOCKS = (3, 4, 6, 3)          # Bottleneck blocks per stage (ResNet-50)
PLANES = (64, 128, 256, 512)   # inner width of each stage at the paper's width
EXPANSION = 4                  # a bottleneck's output is 4x its inner width
CONV_INIT = 'normal_0.001'     # every sharable conv N(0, 0.001) (spec §5.2)


def _bn2d(num_features):
    # nn.BatchNorm2d outside distributed training; weight 1, bias 0 (no zero-init residual)
    return BatchNorm2d(num_features)


def _conv(in_ch, out_ch, kernel, stride=1, padding=0):
    return MaskedConv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False, init=CONV_INIT)


def _per_task_bn(num_features):
    # sized per task when the task is added (PerTask.add_task), not here
    return PerTask(_bn2d)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, torchvision v1.5) -> 1x1, plus the identity or a 1x1 projection.

    conv(in, out, kernel, stride, padding) and norm(channels) build the layers: masked convs and
    per-task BN here, plain ones in ProgressiveNet's columns (models/progressive.py)."""

    def __init__(self, in_ch, inner, out, stride, downsample, conv=_conv, norm=_per_task_bn):
        super().__init__()
        self.conv1 = conv(in_ch, inner, 1)
        self.bn1 = norm(inner)
        self.conv2 = conv(inner, inner, 3, stride, 1)
        self.bn2 = norm(inner)
        self.conv3 = conv(inner, out, 1)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(conv(in_ch, out, 1, stride), norm(out)) if downsample else None

    def forward(self, x):
        # the same operations in the same order as torchvision's, so the logits match bit for bit
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))       # (N, inner, H, W)
        out = self.relu(self.bn2(self.conv2(out)))     # (N, inner, H/s, W/s)
        out = self.bn3(self.conv3(out))                # (N, out, H/s, W/s)
        if self.downsample is not None:
            identity = self.downsample(x)              # (N, out, H/s, W/s)
        out += identity
        return self.relu(out)


class ResNetMT(MultiTaskNet):
    """Multi-task ResNet-50: stem, 4 stages of Bottlenecks, global average pool, per-task head."""

    def __init__(self, base_width=1.0, multiplier=1.0):
        super().__init__(base_width, multiplier)
        stem = scaled_width(64, base_width, multiplier)
        self.conv1 = _conv(3, stem, 7, stride=2, padding=3)
        self.bn1 = PerTask(_bn2d)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = stem
        for i, (planes, blocks) in enumerate(zip(PLANES, BLOCKS)):
            inner, out = self._widths(planes, multiplier)
            stride = 1 if i == 0 else 2
            # block 0 always projects (as in torchvision's resnet50): the residual's shape must not
            # decide the architecture, or widening could add or remove a module
            stage = [Bottleneck(in_ch if b == 0 else out, inner, out, stride if b == 0 else 1, b == 0)
                     for b in range(blocks)]
            setattr(self, f'layer{i + 1}', nn.Sequential(*stage))
            in_ch = out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def _widths(self, planes, multiplier):
        """(inner, out) of a bottleneck stage: int(planes_f), int(4 * planes_f) (spec §3.6)."""
        planes_f = planes * math.sqrt(multiplier) * self.base_width
        return max(1, int(planes_f)), max(1, int(planes_f * EXPANSION))

    def _convs(self, multiplier):
        """Yield (conv name, out, in) of every masked conv at `multiplier`, in module order."""
        stem = scaled_width(64, self.base_width, multiplier)
        yield 'conv1', stem, 3
        in_ch = stem
        for i, (planes, blocks) in enumerate(zip(PLANES, BLOCKS)):
            inner, out = self._widths(planes, multiplier)
            for b in range(blocks):
                p = f'layer{i + 1}.{b}.'
                yield p + 'conv1', inner, in_ch
                yield p + 'conv2', inner, inner
                yield p + 'conv3', out, inner
                if b == 0:
                    yield p + 'downsample.0', out, in_ch
                in_ch = out

    @staticmethod
    def _bn_name(conv_name):
        # every conv is followed by its BN: conv1 -> bn1, layer1.0.conv3 -> layer1.0.bn3, downsample.0 -> .1
        if conv_name.endswith('downsample.0'):
            return conv_name[:-1] + '1'
        head, _, last = conv_name.rpartition('.')
        return (head + '.' if head else '') + last.replace('conv', 'bn')

    def layer_shapes(self, multiplier):
        return {name: (out, inp) for name, out, inp in self._convs(multiplier)}

    def per_task_widths(self, multiplier):
        return {self._bn_name(name): out for name, out, _ in self._convs(multiplier)}

    def head_in_features(self, multiplier):
        return self._widths(PLANES[-1], multiplier)[1]  # 2048w

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))   # (N, 64w, H/4, W/4)
        x = self.layer1(x)                                     # (N, 256w, H/4, W/4)
        x = self.layer2(x)                                     # (N, 512w, H/8, W/8)
        x = self.layer3(x)                                     # (N, 1024w, H/16, W/16)
        x = self.layer4(x)                                     # (N, 2048w, H/32, W/32)
        return torch.flatten(self.avgpool(x), 1)               # (N, 2048w)

    @torch.no_grad()
    def load_pretrained(self, state_dict, task):
        """Copy a torchvision ResNet-50 state dict into task `task`: convs, BNs, head if shaped alike."""
        self.require_task(task)
        m = self.tasks[task - 1]['multiplier']
        if self.base_width != 1.0 or m != 1.0:
            raise ValueError('pretrained ResNet-50 weights need BASE_WIDTH 1.0 and width multiplier 1.0 '
                             f'for the first task (got BASE_WIDTH {self.base_width}, multiplier {m})')
        targets, optional = self.pretrained_targets(task)   # torchvision key -> tensor receiving it
        return load_torchvision_resnet(self, task, state_dict, targets, optional, self.head_in_features(m),
                                       before_head=lambda: self.claim_free_entries(task))


@torch.no_grad()
def load_torchvision_resnet(model, task, state_dict, targets, optional, features, before_head=None):
    """Copy a torchvision ResNet-50 state dict into `targets` (key -> tensor of `model`), fc
    into task `task`'s head when its shape fits (`features`: the head's input width, 2048w):
    ResNetMT's task and ProgressiveNet's column. Every key and shape is checked before anything
    is copied (one-line ValueError)."""

    def check_fc():
        fc_shape = tuple(state_dict['fc.weight'].shape)
        if len(fc_shape) != 2 or fc_shape[1] != features:  # fc's class count may differ
            raise ValueError(f"pretrained key 'fc.weight' has shape {fc_shape} but the model "
                             f'expects (classes, {features})')

    copied = load_pretrained_tensors(state_dict, targets, 'a torchvision ResNet-50', optional,
                                     extra=('fc.weight', 'fc.bias'), validate=check_fc)
    if before_head is not None:
        before_head()
    head = model.heads[str(task)]
    head_from_fc = (isinstance(head, nn.Linear) and head.bias is not None   # not other head kinds
                    and tuple(head.weight.shape) == tuple(state_dict['fc.weight'].shape)
                    and tuple(head.bias.shape) == tuple(state_dict['fc.bias'].shape))
    if head_from_fc:   # e.g. the task has ImageNet's 1000 classes; otherwise the fresh head stays
        head.weight.copy_(state_dict['fc.weight'])
        head.bias.copy_(state_dict['fc.bias'])
        copied += 2
    return {'copied': copied, 'head_from_fc': head_from_fc}


read_torchvision_state = read_pretrained_state   # the name experiment 2's code and tests import


def resnet50(base_width=1.0, multiplier=1.0):
    """The paper's experiment-2 backbone (ResNet-50, spec §5.2)."""
    return ResNetMT(base_width=base_width, multiplier=multiplier)
