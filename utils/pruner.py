"""Gradual magnitude pruning of the current task's weights (compacting, spec §3.2).

Schedule (Zhu & Gupta, cubic): s(t) = s_f + (s_i - s_f) * (1 - p)^3, p = clamp((t - t0)/(t1 - t0)).
Per layer, the pool is every entry owned by the task or free; the r = round(s * |pool|) smallest
magnitudes of the pool become free (free entries count first, as they hold zeros). Deviations from
the original, both deliberate (spec §12 items 3 and 6):
  * exactly r entries are free after an update (ties at the cutoff broken by position), and the
    target s_f is always applied at t1 (or at the end of a stage shorter than the interval);
  * the order statistic is taken over the task's own entries only (free ones are zeros and come
    first), which gives the same cutoff with far less work than sorting the whole pool.
  * released weights are zeroed at once and lose their momentum, so they leave the forward pass
    immediately instead of at the next validation.
"""
import torch


def sparsity_at(step, initial_sparsity, target_sparsity, begin_step, end_step):
    """The cubic schedule's sparsity after optimizer step `step` (0-based)."""
    if end_step <= begin_step:
        return target_sparsity
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return target_sparsity + (initial_sparsity - target_sparsity) * (1.0 - progress) ** 3


def kth_smallest(values, k):
    """k-th smallest (1-based) entry of a 1-D tensor; numpy's in-place introselect is ~7x faster
    than torch.kthvalue on CPU. `values` may be reordered (callers pass a scratch copy)."""
    if values.device.type == 'cpu':
        array = values.numpy()
        array.partition(k - 1)
        return float(array[k - 1])
    return torch.kthvalue(values, k).values


class LayerScratch:
    """Buffers of one layer's shape, reused by every mask update of a stage.

    Full-size temporaries are the expensive part of a mask update (allocation costs more than the
    arithmetic); with `out=` buffers an update is a handful of in-place passes plus one selection.
    """

    def __init__(self, weight):
        self.magnitude = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
        self.own = torch.empty(weight.shape, dtype=torch.bool, device=weight.device)
        self.released = torch.empty_like(self.own)
        self.keep = torch.empty_like(self.own)
        self.keep_float = torch.empty_like(self.magnitude)
        self.inf = torch.tensor(float('inf'), dtype=weight.dtype, device=weight.device)


@torch.no_grad()
def release_smallest(layer, task, sparsity, pool_size, momentum_buffer=None, scratch=None):
    """Free the task's smallest weights so exactly round(sparsity * pool) pool entries are free.

    Free entries hold zeros and count first, so this releases the (rank - free)-th smallest
    magnitudes among the task's own entries, ties at the cutoff broken by position.
    """
    rank = round(sparsity * pool_size)  # Python round: half to even, as the original
    scratch = scratch or LayerScratch(layer.weight)
    own = torch.eq(layer.owner, task, out=scratch.own)
    num_own = int(torch.count_nonzero(own))
    to_release = rank - (pool_size - num_own)
    if to_release <= 0:
        return
    magnitude = torch.abs(layer.weight, out=scratch.magnitude)
    if num_own < magnitude.numel():  # entries of other tasks (and free ones) never qualify
        torch.where(own, magnitude, scratch.inf, out=magnitude)
    cutoff = kth_smallest(magnitude.view(-1), to_release)   # reorders the scratch on CPU
    torch.abs(layer.weight, out=magnitude)
    released = torch.lt(magnitude, cutoff, out=scratch.released).logical_and_(own)
    missing = to_release - int(torch.count_nonzero(released))
    if missing > 0:  # equal magnitudes at the cutoff: take the first ones by position
        ties = (own & (magnitude == cutoff)).view(-1).nonzero().squeeze(1)[:missing]
        released.view(-1)[ties] = True
    keep = torch.logical_not(released, out=scratch.keep)
    keep_float = scratch.keep_float.copy_(keep)
    layer.release_(keep, keep_float)
    if momentum_buffer is not None:
        momentum_buffer.mul_(keep_float)


class GradualPruner:
    """Drives release_smallest over all masked layers on the cubic schedule of one stage."""

    def __init__(self, model, task, initial_sparsity, target_sparsity, begin_step, end_step,
                 frequency, optimizer=None):
        self.layers = [layer for _, layer in model.masked_layers()]
        self.task = task
        self.initial_sparsity, self.target_sparsity = initial_sparsity, target_sparsity
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self.optimizer = optimizer
        self.last_update = begin_step
        self.applied = None  # sparsity of the last update
        self.after_update = None  # e.g. broadcast owner masks from rank 0 under DDP
        # The pool (owned by the task or free) is constant during a task: releases move k -> 0.
        self.pool_sizes = [int(torch.count_nonzero((l.owner == task) | (l.owner == 0))) for l in self.layers]
        self.scratch = None  # per-layer buffers, allocated at the first update

    def state_dict(self):
        return {'last_update': self.last_update, 'applied': self.applied}

    def load_state_dict(self, state):
        self.last_update, self.applied = state['last_update'], state['applied']

    def _momentum(self, layer):
        if self.optimizer is None:
            return None
        return self.optimizer.state.get(layer.weight, {}).get('momentum_buffer')

    def apply(self, sparsity):
        if self.scratch is None:
            self.scratch = [LayerScratch(layer.weight) for layer in self.layers]
        for layer, pool, scratch in zip(self.layers, self.pool_sizes, self.scratch):
            release_smallest(layer, self.task, sparsity, pool, self._momentum(layer), scratch)
        if self.after_update is not None:
            self.after_update(self)
        self.applied = sparsity

    def step(self, step):
        """Call after the optimizer step with the stage's 0-based step counter."""
        in_window = self.begin_step <= step <= self.end_step
        due = step >= self.last_update + self.frequency
        final = step == self.end_step and self.applied != self.target_sparsity
        if in_window and (due or final):
            self.apply(sparsity_at(step, self.initial_sparsity, self.target_sparsity,
                                   self.begin_step, self.end_step))
            self.last_update = step
            return True
        return False

    def finalize(self):
        """Make sure the stage ends exactly at the target (stages shorter than the interval)."""
        if self.applied != self.target_sparsity:
            self.apply(self.target_sparsity)
