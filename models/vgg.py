"""VGG16-BN for 32x32 inputs (spec §5.1): 13 masked 3x3 convs + BN + ReLU, 5 max-pools,
then two masked FC layers (512w -> 4096w -> 4096w, with per-task biases) and a per-task head.
"""
import math

import torch.nn as nn

from .dist_norm import BatchNorm2d
from .layers import MaskedConv2d, MaskedLinear, PerTask, scaled_width
from .multitask import MultiTaskNet

VGG16_CFG = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']
FC_WIDTH = 4096


def _bn2d(num_features):
    # nn.BatchNorm2d outside distributed training; global-batch statistics under DDP
    return BatchNorm2d(num_features)  # weight 1, bias 0, mean 0, var 1


class VGGCifar(MultiTaskNet):
    """features: [conv, BN, ReLU] x 13 with pools; flatten; FC1, ReLU, FC2, ReLU. Input (N, 3, 32, 32)."""

    def __init__(self, cfg=VGG16_CFG, base_width=1.0, multiplier=1.0):
        super().__init__(base_width, multiplier)
        self.cfg = cfg
        layers, in_ch = [], 3
        for v in cfg:
            if v == 'M':
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out_ch = self._w(v, multiplier)
            layers += [MaskedConv2d(in_ch, out_ch, 3, padding=1, bias=False),
                       PerTask(_bn2d), nn.ReLU(inplace=True)]
            in_ch = out_ch
        fc = self._w(FC_WIDTH, multiplier)
        # N(0, 0.01) at the paper's width; a reduced BASE_WIDTH keeps std * sqrt(fan_in) unchanged
        self.fc_std = self.head_std = 0.01 / math.sqrt(base_width)
        layers += [nn.Flatten(),                                   # (N, 512w, 1, 1) -> (N, 512w)
                   MaskedLinear(in_ch, fc, std=self.fc_std), nn.ReLU(inplace=True),
                   MaskedLinear(fc, fc, std=self.fc_std), nn.ReLU(inplace=True)]
        self.features_seq = nn.Sequential(*layers)

    def _w(self, channels, multiplier):
        return scaled_width(channels, self.base_width, multiplier)

    def _walk(self, multiplier):
        """Yield (module name, kind, out, in) following the config at `multiplier`."""
        idx, in_ch = 0, 3
        for v in self.cfg:
            if v == 'M':
                idx += 1
                continue
            out_ch = self._w(v, multiplier)
            yield f'features_seq.{idx}', 'conv', out_ch, in_ch
            yield f'features_seq.{idx + 1}', 'bn', out_ch, None
            idx, in_ch = idx + 3, out_ch
        fc = self._w(FC_WIDTH, multiplier)
        yield f'features_seq.{idx + 1}', 'fc', fc, in_ch
        yield f'features_seq.{idx + 3}', 'fc', fc, fc

    def layer_shapes(self, multiplier):
        return {name: (out, inp) for name, kind, out, inp in self._walk(multiplier) if kind != 'bn'}

    def per_task_widths(self, multiplier):
        return {name: out for name, kind, out, _ in self._walk(multiplier) if kind == 'bn'}

    def head_in_features(self, multiplier):
        return self._w(FC_WIDTH, multiplier)

    def features(self, x):
        return self.features_seq(x)


def custom_vgg_cifar100(base_width=1.0, multiplier=1.0):
    """The paper's experiment-1 backbone (`custom_vgg_cifar100` in the original)."""
    return VGGCifar(VGG16_CFG, base_width=base_width, multiplier=multiplier)
