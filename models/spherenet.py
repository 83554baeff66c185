"""SphereNet20 / "CNN20" (spec §5.3), experiment 3's backbone: 20 masked 3x3 convs with per-task
biases, each followed by a per-task PReLU, no BatchNorm.

Four stages; stage s starts with a stride-2 conv convS_1 and continues with 1, 2, 4, 1 residual
units x <- x + PReLU_b(conv_b(PReLU_a(conv_a(x)))). Module names are the original's (conv1_1,
relu1_1, ..., conv4_3, relu4_3), so its `face_weight.pth` maps onto a task by name
(load_pretrained). At 112x112 inputs the features are 512w x 7 x 7, flattened.
"""
import torch
import torch.nn as nn

from .angle import AngleHead
from .layers import MaskedConv2d, PerTask, scaled_width
from .multitask import MultiTaskNet, load_pretrained_tensors

STAGES = ((64, 1), (128, 2), (256, 4), (512, 1))   # (channels at width 1, residual units) per stage
DOWNSAMPLING = 16                                  # four stride-2 convs: S x S -> S/16 x S/16
FACE_SOURCE = "SphereNet20's face_weight.pth"      # names the expected file in load errors
FACE_HEAD_KEYS = ('fc5.weight', 'fc5.bias', 'fc6.weight')


def _prelu(num_channels):
    return nn.PReLU(num_channels, init=0.25)   # per-channel slope 0.25 (spec §5.3)


def _conv(in_ch, out_ch, stride):
    # 3x3, pad 1, with a per-task bias; Kaiming-normal fan-out with gain sqrt(2), bias 0 (spec §5.3)
    return MaskedConv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=True, init='kaiming_fan_out')


def _unit_names(units):
    """[(conv_a, conv_b)] index pairs of a stage's residual units: (2, 3), (4, 5), ..."""
    return [(2 + 2 * u, 3 + 2 * u) for u in range(units)]


def _check_fc6(state_dict, embedding):
    """fc6 (embedding x identities): its identity count may differ from the task's, its
    embedding size may not."""
    shape = tuple(state_dict['fc6.weight'].shape)
    if len(shape) != 2 or shape[0] != embedding:
        raise ValueError(f"pretrained key 'fc6.weight' has shape {shape} but the model "
                         f'expects ({embedding}, identities)')


class SphereNetMT(MultiTaskNet):
    """Multi-task SphereNet20 for S x S inputs (S a multiple of 16; the paper's S is 112)."""

    def __init__(self, base_width=1.0, multiplier=1.0, image_size=112):
        super().__init__(base_width, multiplier)
        if isinstance(image_size, bool) or not isinstance(image_size, int) \
                or image_size <= 0 or image_size % DOWNSAMPLING:
            raise ValueError(f'SphereNet20 needs an image size that is a positive multiple of '
                             f'{DOWNSAMPLING} (got {image_size!r}; the paper uses 112)')
        self.image_size = image_size
        for name, out, inp in self._convs(multiplier):
            stride = 2 if name.endswith('_1') else 1
            setattr(self, name, _conv(inp, out, stride))
            setattr(self, self._relu_name(name), PerTask(_prelu))

    def _convs(self, multiplier):
        """Yield (conv name, out, in) of the 20 convs at `multiplier`, in forward order."""
        in_ch = 3
        for stage, (channels, units) in enumerate(STAGES, 1):
            out = scaled_width(channels, self.base_width, multiplier)
            yield f'conv{stage}_1', out, in_ch
            for a, b in _unit_names(units):
                yield f'conv{stage}_{a}', out, out
                yield f'conv{stage}_{b}', out, out
            in_ch = out

    @staticmethod
    def _relu_name(conv_name):
        return conv_name.replace('conv', 'relu')   # conv3_4 -> relu3_4

    # ----- architecture hooks --------------------------------------------------------------------
    def layer_shapes(self, multiplier):
        return {name: (out, inp) for name, out, inp in self._convs(multiplier)}

    def per_task_widths(self, multiplier):
        return {self._relu_name(name): out for name, out, _ in self._convs(multiplier)}

    def head_in_features(self, multiplier):
        side = self.image_size // DOWNSAMPLING
        return scaled_width(STAGES[-1][0], self.base_width, multiplier) * side * side   # 512w·(S/16)²

    def model_kwargs(self):
        return {'image_size': self.image_size}

    def _layer(self, stage, index, x):
        name = f'{stage}_{index}'
        return getattr(self, 'relu' + name)(getattr(self, 'conv' + name)(x))

    def _stage(self, x, stage):
        x = self._layer(stage, 1, x)                       # stride 2: halves H and W
        for a, b in _unit_names(STAGES[stage - 1][1]):
            x = x + self._layer(stage, b, self._layer(stage, a, x))   # identity shortcut
        return x

    def features(self, x):
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f'SphereNet20 was built for {self.image_size}x{self.image_size} '
                             f'inputs, got {tuple(x.shape[-2:])}')
        x = self._stage(x, 1)           # (N, 64w, S/2, S/2)
        x = self._stage(x, 2)           # (N, 128w, S/4, S/4)
        x = self._stage(x, 3)           # (N, 256w, S/8, S/8)
        x = self._stage(x, 4)           # (N, 512w, S/16, S/16)
        return torch.flatten(x, 1)      # (N, 512w·(S/16)²)

    # ----- pretrained weights ----------------------------------------------------------------------
    @torch.no_grad()
    def load_pretrained(self, state_dict, task):
        """Copy the original's face_weight.pth layout into task `task` (spec §5.3).

        conv*_*.weight / .bias -> the convs' leading block and the task's bias, relu*_*.weight ->
        the task's PReLU slopes; for an angle head also fc5 -> its embedding and fc6 (512 x
        identities) -> its AngleLinear when the identity counts agree (otherwise the fresh
        AngleLinear stays). A linear head (e.g. gender from the face weights) takes no fc*.
        """
        self.require_task(task)
        targets, optional = self.pretrained_targets(task)
        head = self.heads[str(task)]
        angle = isinstance(head, AngleHead)
        if angle:
            targets['fc5.weight'] = head.embed.weight.detach()
            targets['fc5.bias'] = head.embed.bias.detach()
            extra = ('fc6.weight',)   # copied below when the identity counts agree
        else:
            extra = FACE_HEAD_KEYS    # allowed, not copied: the task has its own head
            optional |= set(FACE_HEAD_KEYS)
        copied = load_pretrained_tensors(
            state_dict, targets, FACE_SOURCE, optional, extra=extra,
            validate=(lambda: _check_fc6(state_dict, head.angle.weight.shape[0])) if angle else None)
        self.claim_free_entries(task)
        head_from_fc = angle and tuple(state_dict['fc6.weight'].shape) == tuple(head.angle.weight.shape)
        if head_from_fc:
            head.angle.weight.copy_(state_dict['fc6.weight'])
            copied += 1
        return {'copied': copied, 'head_from_fc': head_from_fc}


def spherenet20(base_width=1.0, multiplier=1.0, image_size=112):
    """The paper's experiment-3 backbone (`spherenet20`, spec §5.3)."""
    return SphereNetMT(base_width=base_width, multiplier=multiplier, image_size=image_size)
