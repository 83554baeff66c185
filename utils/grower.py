"""Growing (spec §3.6): choose the width of a new task, widen, and hand it the free capacity."""
import torch

from .errors import CPGError


def width_for_new_task(requested, current, maximum):
    """The raw multiplier a new task trains at: never below the network's, never above the max.

    The current width comes from the checkpoint, so a rerun whose bash variable restarted at 1.0
    still continues at the widened size (spec §12 item 11).
    """
    width = max(requested, current)
    if maximum is not None and width > maximum + 1e-9:
        raise CPGError(f'network width multiplier {width} exceeds the maximum {maximum}; '
                       f'raise --max_allowed_network_width_multiplier or lower the multiplier')
    return width


@torch.no_grad()
def assign_free_capacity(model, task):
    """Every free entry (released by pruning or created by widening) becomes task's (spec §3.1 step 8)."""
    for _, layer in model.masked_layers():
        layer.owner.masked_fill_(layer.owner == 0, task)


@torch.no_grad()
def owns_any(model, task):
    return any(bool((layer.owner == task).any()) for _, layer in model.masked_layers())
