"""Masked (sharable) layers and per-task modules: the mechanics of CPG's weight sharing.

Every sharable conv/linear layer holds ONE weight tensor shared by all tasks plus:
  owner        integer tensor, same shape as the weight: 0 = free, k = owned by task k (spec §2.2)
  pick_score   float "piggymask" of the task in training (k >= 2), binarized at 5e-3 with a
               straight-through gradient (spec §2.3); None when that task does not pick
  pick_bits_j  for every finished task j that picked: B(P_j) restricted to the entries owned by
               tasks 1..j-1, bit-packed (8 entries per byte). Those entries never change owner
               again, so their row-major order inside task j's leading block is stable forever.
  biases       one bias per task (ParameterDict), sized to that task's width

The weight task j sees is formed functionally (never by zeroing shared weights in place):
  W_eff[i] = W[i] * ( [M_i == j] + [1 <= M_i < j] * B(P_j)[i] )     (spec §2.6)
A task that does not pick (task 1, PackNet, PAE) uses every earlier weight: B(P_j) == 1.
Task j runs at its own width: the layer slices the leading block W[:out_j, :in_j].
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PICK_THRESHOLD = 5e-3  # B(p) = [p > 5e-3]; the value that actually ran in the original (spec §2.3)
PICK_INIT = 1e-2       # every pick score starts at 0.01 > threshold: all old weights picked at first


def pack_bits(mask):
    """Bool tensor (any shape) -> uint8 tensor of ceil(n/8) bytes, little bit order."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(8, device=flat.device, dtype=torch.uint8)
    return (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed, n):
    """Inverse of pack_bits: uint8 bytes -> bool tensor of length n."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    return ((packed.view(-1, 1) >> shifts) & 1).view(-1)[:n].bool()


_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float64: torch.int64,
                  torch.float16: torch.int16, torch.bfloat16: torch.int16}


def gate_mask(keep, dtype):
    """Integer mask for gate_: all bits set (-1) where `keep` (bool), 0 elsewhere."""
    return keep.to(_SAME_SIZE_INT[dtype]).neg_()


def gate_(tensor, mask):
    """tensor[~keep] = +0.0 in place, whatever it held (NaN, inf); `mask` from gate_mask."""
    tensor.view(mask.dtype).bitwise_and_(mask)
    return tensor


def owner_dtype(num_tasks):
    """Smallest integer type that holds task ids 0..num_tasks."""
    return torch.uint8 if num_tasks <= 255 else torch.int16


class _GatedWeight(torch.autograd.Function):
    """Effective weight of the task in training, with CPG's gradient gating folded into backward.

    forward:  W_eff = W * B(P)           (pick learned: straight-through binarizer)
              W_eff = W * keep           (pick fixed, e.g. during pruning stages)
              W_eff = W                  (task uses all earlier weights)
    backward: dW = where(own, g + wd * W, 0)   manual L2 then gating: only the task's own weights learn
              dP = where(old, g * W, 0)        straight-through: only entries of earlier tasks learn

Gating selects instead of multiplying: a diverging task's NaN/inf gradient times 0 is still NaN,
and SGD momentum would carry it into earlier tasks' frozen weights. The selection is a bitwise AND
with an all-ones/all-zeros integer mask (gate_), exactly +0.0 outside the gate and as cheap as a
multiply; masked_fill_/where cost ~15x more on CPU.

    Invariants that make the cheap forward exact (kept by the phase setup and the pruner):
    free entries hold W == 0, no later task exists, and P > threshold on the task's own entries.
    Backward works in place on the incoming gradient: a fresh full-size tensor per step costs far
    more than an elementwise pass (page faults), so the only allocation is dP.
    """

    @staticmethod
    def forward(ctx, weight, score, keep, own_gate, old_gate, weight_decay, buffers):
        # own_gate: gate_mask of the task's own entries (None: it owns all); old_gate: gate_mask of
        # earlier tasks' entries (the only pick scores that learn)
        ctx.save_for_backward(weight, own_gate, old_gate)
        ctx.weight_decay = weight_decay
        ctx.has_score = score is not None
        # buffers = (mask, out): reused every step (allocating them costs more than the math). If
        # the next forward overwrote `out` before this graph's backward ran, autograd's version
        # check would raise instead of computing wrong gradients.
        if score is not None:
            mask = torch.gt(score, PICK_THRESHOLD, out=buffers[0])   # B(P) as 0/1 floats
            return torch.mul(weight, mask, out=buffers[1])
        if keep is not None:
            return torch.mul(weight, keep, out=buffers[1])
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        weight, own_gate, old_gate = ctx.saved_tensors
        grad_score = None
        if ctx.has_score and ctx.needs_input_grad[1]:
            grad_score = gate_(torch.mul(grad, weight), old_gate)
        grad_weight = None
        if ctx.needs_input_grad[0]:
            # in place below, so a tensor of its own, laid out as the weight (channels_last too)
            grad_weight = grad if grad.stride() == weight.stride() else torch.empty_like(weight).copy_(grad)
            if ctx.weight_decay:
                grad_weight.add_(weight, alpha=ctx.weight_decay)
            if own_gate is not None:
                gate_(grad_weight, own_gate)
        return grad_weight, grad_score, None, None, None, None, None


class MaskedLayer(nn.Module):
    """Common part of MaskedConv2d / MaskedLinear. Subclasses define _op and _fresh_weight."""

    def __init__(self, weight_shape, bias):
        super().__init__()
        self.weight = nn.Parameter(self._fresh_weight(weight_shape))
        self.register_buffer('owner', torch.zeros(weight_shape, dtype=torch.uint8))
        self.has_bias = bias
        self.biases = nn.ParameterDict() if bias else None
        self.pick_score = None          # nn.Parameter while a picking task trains
        self.task_shapes = {}           # task id -> (out, in) leading block of that task
        self.active_task = None         # set by MultiTaskNet.set_task
        self._phase = None              # training-phase state, see begin_phase
        self._eval_cache = None         # (key, W_eff) of the last evaluated task

    # ----- tasks and width -------------------------------------------------------------------
    def add_task(self, task, out_features, in_features, copy_bias_from=None):
        """Register task `task` running on the leading block [:out_features, :in_features]."""
        if out_features > self.weight.shape[0] or in_features > self.weight.shape[1]:
            raise ValueError(f'task {task} block ({out_features}, {in_features}) exceeds layer '
                             f'shape {tuple(self.weight.shape[:2])}; widen the layer first')
        self.task_shapes[task] = (out_features, in_features)
        if task > torch.iinfo(self.owner.dtype).max:
            self.owner = self.owner.to(owner_dtype(task))
        if self.has_bias:
            bias = torch.zeros(out_features, device=self.weight.device)
            if copy_bias_from is not None:
                src = self.biases[str(copy_bias_from)].detach()
                bias[:src.numel()] = src  # new task starts from the previous task's bias (§2.4)
            self.biases[str(task)] = nn.Parameter(bias)

    def widen(self, out_features, in_features):
        """Grow the shared weight to a larger leading-block shape (spec §3.6).

        Old entries are copied into the leading block; new entries get a fresh init and owner 0
        (free), so they go to the next task that starts. Earlier tasks slice their own block, so
        their computation is untouched.
        """
        old_out, old_in = self.weight.shape[:2]
        if out_features < old_out or in_features < old_in:
            raise ValueError('a layer can only grow')
        if (out_features, in_features) == (old_out, old_in):
            return
        shape = (out_features, in_features) + tuple(self.weight.shape[2:])
        weight = self._fresh_weight(shape).to(self.weight.device, self.weight.dtype)
        weight[:old_out, :old_in] = self.weight.detach()
        owner = torch.zeros(shape, dtype=self.owner.dtype, device=self.owner.device)
        owner[:old_out, :old_in] = self.owner
        self.weight = nn.Parameter(weight)
        self.owner = owner
        self._eval_cache = None

    @property
    def picking_tasks(self):
        return sorted(int(n[len('pick_bits_'):]) for n, _ in self.named_buffers(recurse=False)
                      if n.startswith('pick_bits_'))

    # ----- training phase ----------------------------------------------------------------------
    def begin_phase(self, task, learn_pick, fixed_pick, weight_decay, train_weights=True):
        """Prepare the gated forward/backward for training task `task` (the newest task).

        learn_pick: create/keep a float pick score and learn it; fixed_pick: use the task's stored
        binary pick as a constant (pruning stages). Neither: use every earlier weight.
        """
        out_f, in_f = self.task_shapes[task]
        if (out_f, in_f) != tuple(self.weight.shape[:2]):
            raise RuntimeError('the task in training must run at the full (newest) width')
        with torch.no_grad():
            own = self.owner == task
            old = (self.owner >= 1) & (self.owner < task)
            # Free entries must hold exact zeros: the cheap forward relies on it.
            self.weight.masked_fill_(self.owner == 0, 0.0)
        state = {'task': task, 'weight_decay': weight_decay, 'keep': None,
                 'train_weights': train_weights}
        has_old = bool(old.any())
        owns_all = bool(own.all())
        dtype = self.weight.dtype
        state['own_gate'] = None if owns_all else gate_mask(own, dtype)
        state['old_gate'] = gate_mask(old, dtype) if (learn_pick and has_old) else None
        if learn_pick and has_old:
            if self.pick_score is None or self.pick_score.shape != self.weight.shape:
                self.pick_score = nn.Parameter(torch.full_like(self.weight, PICK_INIT))
            with torch.no_grad():  # own and free entries must always pass the threshold
                self.pick_score.masked_fill_(~old, PICK_INIT)
        else:
            self.pick_score = None
            if fixed_pick and has_old:
                state['keep'] = self.task_keep_mask(task).to(dtype)
        if self.pick_score is not None or state['keep'] is not None:
            state['buffers'] = (torch.empty_like(self.weight), torch.empty_like(self.weight))
        else:
            state['buffers'] = None
        self.weight.requires_grad_(train_weights)
        self._phase = state
        self._eval_cache = None

    @torch.no_grad()
    def release_(self, keep, keep_float, zero=True):
        """Free the entries where `keep` is False (bool, weight shape; keep_float: the same as
        the weight's dtype): owner 0, weight 0, gradient gate closed. Works in place, the
        cheapest way to do it: no full-size allocation in the pruning hot path. zero=False (the
        original's timing): the weights keep their values until zero_free_() at the next
        validation; no other task reads an entry of owner 0, so only this task's forward sees them."""
        self.owner.mul_(keep)
        if zero:
            self.weight.mul_(keep_float)
        if self._phase is not None:
            if self._phase['own_gate'] is None:   # the task owned everything until now
                self._phase['own_gate'] = gate_mask(keep, self.weight.dtype)
            else:
                self._phase['own_gate'].mul_(keep)

    @torch.no_grad()
    def zero_free_(self):
        """Zero every free entry's weight (released with zero=False since the last call)."""
        self.weight.masked_fill_(self.owner == 0, 0.0)

    def refresh_ownership(self):
        """Re-derive the gradient gate after the pruner released entries (every few steps)."""
        if self._phase is None:
            return
        task = self._phase['task']
        self._phase['own_gate'] = gate_mask(self.owner == task, self.weight.dtype)

    def end_phase(self):
        """Freeze the task: its binary pick over earlier tasks' entries becomes packed bits."""
        if self._phase is None:
            return
        task = self._phase['task']
        if self.pick_score is not None:
            self.set_pick_bits(task, self.pick_score.detach() > PICK_THRESHOLD)
        self.pick_score = None
        self._phase = None
        self._eval_cache = None
        self.weight.requires_grad_(True)

    def set_pick_bits(self, task, picked_full):
        """Store task's pick (bool, full layer shape) packed over entries owned by tasks < task."""
        out_f, in_f = self.task_shapes[task]
        owner = self.owner[:out_f, :in_f]
        old = (owner >= 1) & (owner < task)
        self.register_buffer(f'pick_bits_{task}', pack_bits(picked_full[:out_f, :in_f][old]))

    # ----- forward ----------------------------------------------------------------------------
    def task_keep_mask(self, task):
        """Bool mask of the entries task `task` uses, on its own leading block."""
        out_f, in_f = self.task_shapes[task]
        owner = self.owner[:out_f, :in_f]
        keep = owner == task
        old = (owner >= 1) & (owner < task)
        bits = getattr(self, f'pick_bits_{task}', None)
        if bits is not None:
            picked = torch.zeros_like(keep)
            picked[old] = unpack_bits(bits, int(torch.count_nonzero(old)))
            keep |= picked
        elif (self.pick_score is not None and self._phase is not None
              and self._phase['task'] == task):
            keep |= old & (self.pick_score[:out_f, :in_f] > PICK_THRESHOLD)
        else:
            keep |= old  # a task that does not pick uses every earlier weight
        return keep

    def effective_weight(self, task):
        """W_eff of task `task` for evaluation; cached until the weight, owner or pick changes."""
        versions = (self.weight._version, self.owner._version,
                    None if self.pick_score is None else self.pick_score._version)
        key = (task, id(self.weight), versions)
        if self._eval_cache is not None and self._eval_cache[0] == key:
            return self._eval_cache[1]
        out_f, in_f = self.task_shapes[task]
        with torch.no_grad():
            weight = self.weight[:out_f, :in_f]
            w_eff = torch.where(self.task_keep_mask(task), weight, torch.zeros((), dtype=weight.dtype,
                                device=weight.device)).contiguous()
        self._eval_cache = (key, w_eff)
        return w_eff

    def forward(self, x):
        task = self.active_task
        bias = self.biases[str(task)] if self.has_bias else None
        phase = self._phase
        if self.training and phase is not None and phase['task'] == task:
            w_eff = _GatedWeight.apply(self.weight, self.pick_score, phase['keep'], phase['own_gate'],
                                       phase['old_gate'], phase['weight_decay'], phase['buffers'])
        else:
            w_eff = self.effective_weight(task)
        return self._op(x, w_eff, bias)

    # ----- checkpoint loading: pick_bits_* buffers exist only for tasks that picked ------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # New tensors go on the layer's device, never the saved tensor's: a checkpoint is loaded
        # on the CPU after the model was moved to its device.
        device = self.weight.device
        for key, value in state_dict.items():
            if key.startswith(prefix + 'pick_bits_') and '.' not in key[len(prefix):]:
                self.register_buffer(key[len(prefix):], torch.empty_like(value, device=device))
        score_key = prefix + 'pick_score'
        if score_key in state_dict and self.pick_score is None:
            self.pick_score = nn.Parameter(torch.empty_like(state_dict[score_key], device=device))
        owner_key = prefix + 'owner'
        if owner_key in state_dict and state_dict[owner_key].dtype != self.owner.dtype:
            self.owner = self.owner.to(state_dict[owner_key].dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._eval_cache = None


class MaskedConv2d(MaskedLayer):
    """Sharable 3x3/1x1/7x7 convolution; weight (out, in, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False,
                 init='kaiming_fan_out'):
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.stride, self.padding, self.init = stride, padding, init
        super().__init__((out_channels, in_channels) + tuple(self.kernel_size), bias)

    def _fresh_weight(self, shape):
        weight = torch.empty(shape)
        if self.init == 'kaiming_fan_out':   # VGG / SphereNet (spec §5.1, §5.3)
            nn.init.kaiming_normal_(weight, mode='fan_out', nonlinearity='relu')
        else:                                 # 'normal_0.001': ResNet (spec §5.2)
            nn.init.normal_(weight, 0.0, float(self.init.split('_')[1]))
        return weight

    def _op(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def extra_repr(self):
        return f'{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}'


class MaskedLinear(MaskedLayer):
    """Sharable fully-connected layer inside the feature extractor; weight (out, in)."""

    def __init__(self, in_features, out_features, bias=True, std=0.01):
        self.std = std
        super().__init__((out_features, in_features), bias)

    def _fresh_weight(self, shape):
        return torch.empty(shape).normal_(0.0, self.std)  # N(0, 0.01) (spec §5.1)

    def _op(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def extra_repr(self):
        return f'{tuple(self.weight.shape)}'


def copy_leading_(dst, src):
    """Copy every parameter/buffer of module src into the leading entries of dst's (same names)."""
    dst_state = dst.state_dict()
    with torch.no_grad():
        for name, value in src.state_dict().items():
            target = dst_state[name]
            if value.dim() == 0:
                target.copy_(value)
            else:
                target[tuple(slice(0, n) for n in value.shape)].copy_(value)


class PerTask(nn.Module):
    """One module per task (BatchNorm, PReLU, ...), dispatched on the active task (spec §2.4).

    A new task's module starts as a copy of the previous task's (padded when the network grew:
    new channels keep the factory's init, e.g. BN weight 1, bias 0, mean 0, var 1).
    """

    def __init__(self, factory):
        super().__init__()
        self.factory = factory
        self.per_task = nn.ModuleDict()
        self.active_task = None

    def add_task(self, task, num_features, copy_from=None, device=None):
        module = self.factory(num_features).to(device if device is not None else self._device())
        if copy_from is not None:
            copy_leading_(module, self.per_task[str(copy_from)])
        self.per_task[str(task)] = module

    def _device(self):
        for tensor in self.per_task.parameters():
            return tensor.device
        for tensor in self.per_task.buffers():
            return tensor.device
        return torch.device('cpu')

    def forward(self, x):
        return self.per_task[str(self.active_task)](x)


def scaled_width(channels, base_width, multiplier):
    """Channel count at a raw width multiplier m: int(c * base_width * sqrt(m)) (spec §3.6)."""
    return max(1, int(channels * base_width * math.sqrt(multiplier)))
