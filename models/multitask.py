"""MultiTaskNet: one backbone of masked layers, per-task norms/heads, tasks added one by one.

An architecture subclass builds its modules and answers three questions for a raw width
multiplier m: the (out, in) block of every masked layer, the width of every per-task module, and
the head's input width. Everything else (adding a task, growing, selecting a task) is generic.
"""
import torch.nn as nn

from .layers import MaskedLayer, PerTask

HEAD_KINDS = ('linear',)  # experiment 3 adds the angular-margin head


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
        head = nn.Linear(in_features, num_classes)
        nn.init.normal_(head.weight, 0.0, self.head_std)  # heads N(0, 0.01), bias 0 (spec §2.5)
        nn.init.zeros_(head.bias)
        return head

    def load_pretrained(self, state_dict, task):
        """Copy pretrained weights into task `task` (architectures that have them override)."""
        raise ValueError(f'{type(self).__name__} has no pretrained-weight loader; drop PRETRAINED_PATH')

    def features(self, x):
        raise NotImplementedError

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
