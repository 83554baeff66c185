"""Gradual magnitude pruning of the current task's weights (compacting, spec §3.2).

Schedule (Zhu & Gupta, cubic): s(t) = s_f + (s_i - s_f) * (1 - p)^3, p = clamp((t - t0)/(t1 - t0)).
Per layer, the pool is every entry owned by the task or free; the r = round(s * |pool|) smallest
magnitudes of the pool become free (free entries count first, as they hold zeros). Deviations from
the original, both deliberate (spec §12 items 3 and 6):
  * exactly r entries are free after an update (ties at the cutoff broken by position), and the
    target s_f is always applied at t1 (or at the end of a stage shorter than the interval);
  * the order statistic is taken over the task's own entries only (free ones are zeros and come
    first), which gives the same cutoff with far less work than sorting the whole pool; on a GPU a
    stable sort ranks them instead, on the device and without a host sync (the same entries);
  * released weights are zeroed at once and lose their momentum, so they leave the forward pass
    immediately instead of at the next validation.
The original's way is one switch each (utils/recipes.py): --sparsity_rule original (the r-th
smallest magnitude of the pool as the cutoff, stale released values included, ties released, no
forced final update) and --release_zeroing validation (released weights keep their values and
momentum until before_validation() zeroes them).
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


def _release_mask_by_sort(magnitude, to_release, scratch):
    """The `to_release` smallest entries of `magnitude` (inf where not the task's), ties broken by
    position, without a host sync: a stable sort gives each entry its rank, and the released
    ones are those ranked below `to_release` (a 0-dim tensor on the device). On a GPU this
    replaces torch.kthvalue over a whole layer, which is slow for large tensors (pytorch#75599)."""
    flat = magnitude.view(-1)
    order = torch.sort(flat, stable=True).indices
    ranks = scratch.ranks
    ranks.scatter_(0, order, scratch.positions)
    return torch.lt(ranks.view(magnitude.shape), to_release, out=scratch.released)


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
        self.ranks = self.positions = None   # the sort path's, made at its first use

    def sort_buffers(self):
        if self.ranks is None:
            n = self.magnitude.numel()
            self.positions = torch.arange(n, device=self.magnitude.device)
            self.ranks = torch.empty(n, dtype=torch.int64, device=self.magnitude.device)


@torch.no_grad()
def release_smallest(layer, task, sparsity, pool_size, momentum_buffer=None, scratch=None, by_sort=None,
                     zero=True):
    """Free the task's smallest weights so exactly round(sparsity * pool) pool entries are free.

    Free entries hold zeros and count first, so this releases the (rank - free)-th smallest
    magnitudes among the task's own entries, ties at the cutoff broken by position. On the CPU
    an in-place selection finds the cutoff; on a GPU (by_sort, default there) a stable sort ranks
    the entries on the device, with no host sync: both release exactly the same entries.
    zero=False: the released entries keep their weights and momentum (see _release).
    """
    rank = round(sparsity * pool_size)  # Python round: half to even, as the original
    scratch = scratch or LayerScratch(layer.weight)
    own = torch.eq(layer.owner, task, out=scratch.own)
    if by_sort if by_sort is not None else layer.weight.is_cuda:
        scratch.sort_buffers()
        to_release = (rank - pool_size + own.sum()).clamp_min(0)   # a 0-dim tensor: no sync
        magnitude = torch.abs(layer.weight, out=scratch.magnitude)
        torch.where(own, magnitude, scratch.inf, out=magnitude)
        released = _release_mask_by_sort(magnitude, to_release, scratch).logical_and_(own)
        _release(layer, released, scratch, momentum_buffer, zero)
        return
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
    _release(layer, released, scratch, momentum_buffer, zero)


def _release(layer, released, scratch, momentum_buffer, zero=True):
    """Free the `released` entries (bool, weight shape): owner 0, weight 0, momentum 0 (zero=False:
    owner 0 only; weight and momentum as they are, the original's timing)."""
    keep = torch.logical_not(released, out=scratch.keep)
    keep_float = scratch.keep_float.copy_(keep)
    layer.release_(keep, keep_float, zero=zero)
    if momentum_buffer is not None and zero:
        momentum_buffer.mul_(keep_float)


@torch.no_grad()
def release_at_cutoff(layer, task, sparsity, pool_size, momentum_buffer=None, scratch=None, zero=True):
    """The original's cutoff (spec §3.2): c = the r-th smallest |W| of the pool (the task's and the
    free entries, whatever values released ones still hold), r = round(sparsity * pool); every
    entry of the task with |W| <= c is released, ties included. r = 0 releases nothing (the
    original failed there with "not enough weights" and exit 2)."""
    rank = round(sparsity * pool_size)
    if rank <= 0:
        return
    scratch = scratch or LayerScratch(layer.weight)
    own = torch.eq(layer.owner, task, out=scratch.own)
    magnitude = torch.abs(layer.weight, out=scratch.magnitude)
    pool = own | (layer.owner == 0)
    cutoff = kth_smallest(magnitude[pool].clone(), rank)
    released = torch.le(magnitude, cutoff, out=scratch.released).logical_and_(own)
    _release(layer, released, scratch, momentum_buffer, zero)


class GradualPruner:
    """Drives release_smallest over all masked layers on the cubic schedule of one stage."""

    def __init__(self, model, task, initial_sparsity, target_sparsity, begin_step, end_step,
                 frequency, optimizer=None, release_zeroing='release', sparsity_rule='exact'):
        self.layers = [layer for _, layer in model.masked_layers()]
        self.zero_at_release = release_zeroing == 'release'
        self.exact = sparsity_rule == 'exact'
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
        self.by_sort = None  # None: the device's way (sort on a GPU, selection on the CPU)

    def state_dict(self):
        return {'last_update': self.last_update, 'applied': self.applied}

    def load_state_dict(self, state):
        self.last_update, self.applied = state['last_update'], state['applied']

    def _momentum(self, layer):
        if self.optimizer is None or not self.zero_at_release:
            return None
        return self.optimizer.state.get(layer.weight, {}).get('momentum_buffer')

    def apply(self, sparsity):
        if self.scratch is None:
            self.scratch = [LayerScratch(layer.weight) for layer in self.layers]
        for layer, pool, scratch in zip(self.layers, self.pool_sizes, self.scratch):
            if self.exact:   # free entries count first whatever they still hold: exactly round(s x pool)
                release_smallest(layer, self.task, sparsity, pool, self._momentum(layer), scratch, self.by_sort,
                                 zero=self.zero_at_release)
            else:
                release_at_cutoff(layer, self.task, sparsity, pool, self._momentum(layer), scratch,
                                  zero=self.zero_at_release)
        if self.after_update is not None:
            self.after_update(self)
        self.applied = sparsity

    def step(self, step):
        """Call after the optimizer step with the stage's 0-based step counter."""
        in_window = self.begin_step <= step <= self.end_step
        due = step >= self.last_update + self.frequency
        final = self.exact and step == self.end_step and self.applied != self.target_sparsity
        if in_window and (due or final):
            self.apply(sparsity_at(step, self.initial_sparsity, self.target_sparsity,
                                   self.begin_step, self.end_step))
            self.last_update = step
            return True
        return False

    def finalize(self):
        """Make sure the stage ends exactly at the target (stages shorter than the interval). The
        original rule does so only for one-shot pruning: its ramp may end short of the target."""
        one_shot = self.end_step <= self.begin_step
        if self.applied != self.target_sparsity and (self.exact or one_shot):
            self.apply(self.target_sparsity)

    def before_validation(self):
        """--release_zeroing validation: the weights released since the last validation become 0."""
        if not self.zero_at_release:
            for layer in self.layers:
                layer.zero_free_()
