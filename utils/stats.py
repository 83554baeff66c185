"""Capacity statistics over all masked layers, computed on demand (once per epoch, never per step)."""
import torch


@torch.no_grad()
def ownership_stats(model, task):
    """Counts for task `task`: its own weights, free ones, earlier tasks' ones and how many it picks.

    Returns a dict of Python numbers:
      total        entries of all masked layers (current width)
      owned        entries owned by `task`;  free: entries owned by nobody
      earlier      entries inside task's blocks owned by tasks 1..task-1
      picked       of those, the ones task's pick mask keeps
      sparsity     free / (free + owned)  (the spec's displayed "sparsity", meaningful for the newest task)
      owned_fraction, picked_fraction, free_fraction
    """
    total = owned = free = earlier = picked = 0
    for _, layer in model.masked_layers():
        owner = layer.owner
        total += owner.numel()
        owned += int((owner == task).sum())
        free += int((owner == 0).sum())
        out_f, in_f = layer.task_shapes[task]
        block = owner[:out_f, :in_f]
        old = (block >= 1) & (block < task)
        earlier += int(old.sum())
        picked += int((layer.task_keep_mask(task) & old).sum())
    return {
        'total': total, 'owned': owned, 'free': free, 'earlier': earlier, 'picked': picked,
        'sparsity': free / max(free + owned, 1),
        'owned_fraction': owned / max(total, 1),
        'free_fraction': free / max(total, 1),
        'picked_fraction': picked / earlier if earlier else 0.0,
    }
