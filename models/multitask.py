"""MultiTaskNet: one backbone of masked layers, per-task norms/heads, tasks added one by one.

An architecture subclass builds its modules and answers three questions for a raw width
multiplier m: the (out, in) block of every masked layer, the width of every per-task module, and
the head's input width. Everything else (adding a task, growing, selecting a task) is generic,
and so is most of loading pretrained weights into the first task: modules are named as in the
original network, so a pretrained state dict maps onto a task key by key (pretrained_targets,
load_pretrained_tensors, claim_free_entries).
"""
import os

import torch
import torch.nn as nn

from .angle import AngleHead
from .layers import MaskedLayer, PerTask

HEAD_KINDS = ('linear', 'angle')  # 'angle': face verification's embedding + AngleLinear (spec §2.5)


class MultiTaskNet(nn.Module):
    """Base class; subclasses implement layer_shapes, per_task_widths, head_in_features, make_head."""

    def __init__(self, base_width, multiplier):
        super().__init__()
        self.base_width = base_width
        self.multiplier = multiplier       # raw multiplier of the current (widest) network
        self.tasks = []                    # [{'name', 'num_classes', 'multiplier', 'head'}], id = index+1
        self.head_std = 0.01
        self.heads = nn.ModuleDict()
        self.active_task = None

    # ----- architecture hooks --------------------------------------------------------------------
    def layer_shapes(self, multiplier):
        raise NotImplementedError

    def per_task_widths(self, multiplier):
        raise NotImplementedError

    def head_in_features(self, multiplier):
        raise NotImplementedError

    def make_head(self, in_features, num_classes, kind='linear'):
        """A task's classifier; `kind` names it in the task table (HEAD_KINDS)."""
        if kind not in HEAD_KINDS:
            raise ValueError(f'unknown head kind {kind!r}; choose one of {", ".join(HEAD_KINDS)}')
        if kind == 'angle':
            return AngleHead(in_features, num_classes, std=self.head_std)
        head = nn.Linear(in_features, num_classes)
        nn.init.normal_(head.weight, 0.0, self.head_std)  # heads N(0, 0.01), bias 0 (spec §2.5)
        nn.init.zeros_(head.bias)
        return head

    def load_pretrained(self, state_dict, task):
        """Copy pretrained weights into task `task` (architectures that have them override)."""
        raise ValueError(f'{type(self).__name__} has no pretrained-weight loader; drop PRETRAINED_PATH')

    def features(self, x):
        raise NotImplementedError

    def model_kwargs(self):
        """Constructor kwargs beyond (base_width, multiplier) a checkpoint needs to rebuild the model."""
        return {}

    # ----- generic machinery ---------------------------------------------------------------------
    def masked_layers(self):
        """[(name, MaskedLayer)] in module order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, MaskedLayer)]

    def per_task_modules(self):
        return [(n, m) for n, m in self.named_modules() if isinstance(m, PerTask)]

    def task_id(self, name):
        for i, task in enumerate(self.tasks):
            if task['name'] == name:
                return i + 1
        raise KeyError(name)

    def widen(self, multiplier):
        """Grow every masked layer to the widths of `multiplier` (spec §3.6); never shrinks."""
        if multiplier < self.multiplier:
            raise ValueError(f'cannot shrink the network from {self.multiplier} to {multiplier}')
        shapes = self.layer_shapes(multiplier)
        for name, layer in self.masked_layers():
            layer.widen(*shapes[name])
        self.multiplier = multiplier

    def add_task(self, name, num_classes, multiplier=None, head='linear'):
        """Append a task running at `multiplier` (default: current width) with a `head` kind
        (recorded in the task table, so a checkpoint rebuilds any mix of heads); returns its id.

        The new task copies the previous task's per-task modules and biases (spec §2.4) and gets
        a fresh head. A multiplier above the current one widens the network first (growing).
        """
        if any(t['name'] == name for t in self.tasks):
            raise ValueError(f'task {name!r} is already in the model')
        multiplier = self.multiplier if multiplier is None else multiplier
        if multiplier > self.multiplier:
            self.widen(multiplier)
        task = len(self.tasks) + 1
        prev = task - 1 if task > 1 else None
        # the shared weights' device: the first task's norms and head have nothing to copy from
        device = next(self.parameters()).device
        shapes = self.layer_shapes(multiplier)
        for lname, layer in self.masked_layers():
            layer.add_task(task, *shapes[lname], copy_bias_from=prev)
        widths = self.per_task_widths(multiplier)
        for mname, module in self.per_task_modules():
            module.add_task(task, widths[mname], copy_from=prev, device=device)
        self.heads[str(task)] = self.make_head(self.head_in_features(multiplier), num_classes,
                                               head).to(device)
        self.tasks.append({'name': name, 'num_classes': num_classes, 'multiplier': multiplier,
                           'head': head})
        return task

    def set_task(self, task):
        """Select which task's weights, norms and head the next forward uses."""
        if not 1 <= task <= len(self.tasks):
            raise ValueError(f'task id {task} not in 1..{len(self.tasks)}')
        self.active_task = task
        for module in self.modules():
            if module is not self and hasattr(module, 'active_task'):
                module.active_task = task

    def forward(self, x):
        return self.heads[str(self.active_task)](self.features(x))

    def embed(self, x):
        """The active task's face embedding (N, 512): its angle head's first layer on the features."""
        head = self.heads[str(self.active_task)]
        if not isinstance(head, AngleHead):
            kind = self.tasks[self.active_task - 1].get('head', 'linear')
            raise ValueError(f'task {self.active_task} ({self.tasks[self.active_task - 1]["name"]}) '
                             f'has a {kind!r} head; only an angle head gives an embedding')
        return head.embedding(self.features(x))

    # ----- pretrained weights (first task) -------------------------------------------------------
    def require_task(self, task):
        if not 1 <= task <= len(self.tasks):
            raise ValueError(f'task {task} is not in the model (tasks 1..{len(self.tasks)}); add it first')

    def pretrained_targets(self, task):
        """({state-dict key: tensor of task `task` receiving it}, optional keys) for the backbone:
        every masked layer's leading block (`<name>.weight`) and per-task bias (`<name>.bias`), and
        the task's per-task modules (`<name>.<key>`); refuses when a block holds other tasks' weights."""
        targets, optional = {}, set()
        for name, layer in self.masked_layers():
            out, inp = layer.task_shapes[task]
            block = layer.owner[:out, :inp]
            if ((block != 0) & (block != task)).any():
                # writing here would change an earlier task's weights: it would forget
                raise ValueError(f'task {task} cannot take pretrained weights: {name} holds weights '
                                 'of other tasks (load them into the first task)')
            targets[name + '.weight'] = layer.weight.detach()[:out, :inp]
            if layer.has_bias:
                targets[name + '.bias'] = layer.biases[str(task)].detach()
        for name, module in self.per_task_modules():
            for key, tensor in module.per_task[str(task)].state_dict().items():
                targets[f'{name}.{key}'] = tensor   # detached, shares storage with the module's own
                if key == 'num_batches_tracked':
                    optional.add(f'{name}.{key}')   # absent from state dicts of very old torch
        return targets, optional

    @torch.no_grad()
    def claim_free_entries(self, task):
        """Free entries (owner 0) of task's leading blocks become the task's, as
        assign_free_capacity does: they are zeroed when a phase begins, pretrained or not."""
        for _, layer in self.masked_layers():
            out, inp = layer.task_shapes[task]
            block = layer.owner[:out, :inp]
            block.masked_fill_(block == 0, task)
            layer._eval_cache = None


def _shown(keys):
    return ', '.join(keys[:3]) + (f' (+{len(keys) - 3} more)' if len(keys) > 3 else '')


@torch.no_grad()
def load_pretrained_tensors(state_dict, targets, source, optional=(), extra=(), validate=None):
    """Copy state_dict[key] into targets[key] for every key present; returns how many were copied.

    Every check comes before any copy, each a one-line ValueError: missing keys (targets and
    `extra`, less `optional`), unexpected keys (outside targets and `extra`), then `validate()`
    (the caller's checks of its `extra` keys, which it copies itself), then every target's shape.
    `source` names the expected file in messages, e.g. 'a torchvision ResNet-50'.
    """
    expected = set(targets) | set(extra)
    missing = sorted(expected - set(optional) - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    for what, keys in (('is missing', missing), ('has unexpected', unexpected)):
        if keys:
            raise ValueError(f'pretrained state dict {what} key(s) for {source}: {_shown(keys)}')
    if validate is not None:
        validate()
    for key, dst in targets.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(dst.shape):
            raise ValueError(f'pretrained key {key!r} has shape {tuple(state_dict[key].shape)} '
                             f'but the model expects {tuple(dst.shape)}')
    copied = 0
    for key, dst in targets.items():
        if key in state_dict:
            dst.copy_(state_dict[key])
            copied += 1
    return copied


def read_pretrained_state(path):
    """State dict in `path`: plain or under 'state_dict'/'model', with any 'module.' prefix stripped."""
    if not os.path.isfile(path):
        raise ValueError(f'pretrained weights file {path} does not exist')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch.load raises many kinds (pickle, zip, weights_only refusals)
        first = (str(err).strip().splitlines() or [''])[0]
        raise ValueError(f'cannot read pretrained weights {path}: {type(err).__name__}: {first}') from err
    for key in ('state_dict', 'model'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"pretrained weights {path} hold no state dict of tensors "
                         "(plain, or under 'state_dict' / 'model')")
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in obj.items()}
