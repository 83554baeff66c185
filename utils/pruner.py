"""Gradual magnitude pruning of the current task's weights (compacting, spec §3.2).

Schedule (Zhu & Gupta, cubic): s(t) = s_f + (s_i - s_f) * (1 - p)^3, p = clamp((t - t0)/(t1 - t0)).
Per layer, the pool is every entry owned by the task or free; the r = round(s * |pool|) smallest
magnitudes of the pool become free (free entries count first, as they hold zeros). Deviations from
the original, both deliberate (spec §12 items 3 and 6):
  * exactly r entries are free after an update (ties at the cutoff broken by position), and the
    target s_f is always applied at t1 (or at the end of a stage shorter than the interval);
  * released weights are zeroed at once and lose their momentum, so they leave the forward pass
    immediately instead of at the next validation.
"""
import numpy as np
import torch


def sparsity_at(step, initial_sparsity, target_sparsity, begin_step, end_step):
    """The cubic schedule's sparsity after optimizer step `step` (0-based)."""
    if end_step <= begin_step:
        return target_sparsity
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return target_sparsity + (initial_sparsity - target_sparsity) * (1.0 - progress) ** 3


def kth_smallest(values, k):
    """k-th smallest (1-based) entry of a 1-D tensor; numpy's introselect is ~7x faster on CPU."""
    if values.device.type == 'cpu':
        return float(np.partition(values.numpy(), k - 1)[k - 1])
    return torch.kthvalue(values, k).values


@torch.no_grad()
def release_smallest(layer, task, sparsity, pool_size, momentum_buffer=None):
    """Free the task's smallest weights so exactly round(sparsity * pool) pool entries are free."""
    rank = round(sparsity * pool_size)  # Python round: half to even, as the original
    if rank <= 0:
        return
    owner, weight = layer.owner, layer.weight
    own = owner == task
    # free entries first (-1), then the task's weights by magnitude, everything else never (inf)
    score = torch.where(own, weight.abs(), torch.where(owner == 0, -1.0, float('inf')))
    flat = score.view(-1)
    cutoff = kth_smallest(flat, rank)
    below = flat < cutoff
    ties = flat == cutoff
    # release all entries below the cutoff and, of those equal to it, the first ones by position
    need = rank - below.sum()
    chosen = below | (ties & (ties.cumsum(0) <= need))
    released = chosen.view_as(own) & own
    owner.masked_fill_(released, 0)
    weight.masked_fill_(released, 0.0)
    if momentum_buffer is not None:
        momentum_buffer.masked_fill_(released, 0.0)
    layer.refresh_ownership()


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
        self.pool_sizes = [int(((l.owner == task) | (l.owner == 0)).sum()) for l in self.layers]

    def state_dict(self):
        return {'last_update': self.last_update, 'applied': self.applied}

    def load_state_dict(self, state):
        self.last_update, self.applied = state['last_update'], state['applied']

    def _momentum(self, layer):
        if self.optimizer is None:
            return None
        return self.optimizer.state.get(layer.weight, {}).get('momentum_buffer')

    def apply(self, sparsity):
        for layer, pool in zip(self.layers, self.pool_sizes):
            release_smallest(layer, self.task, sparsity, pool, self._momentum(layer))
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
