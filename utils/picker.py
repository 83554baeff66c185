"""Picking (spec §2.3): the pick masks of the task in training and their Adam optimizer."""
import torch


def pick_parameters(model):
    """The float pick scores of the task in training (empty when it does not pick)."""
    return [layer.pick_score for _, layer in model.masked_layers() if layer.pick_score is not None]


def build_pick_optimizer(model, lr_mask):
    """Adam (default betas/eps, no weight decay) over the pick scores; None if nothing to pick.

    The fused kernel matters: a foreach Adam over a VGG-sized mask costs ~15x more on CPU.
    """
    params = pick_parameters(model)
    if not params:
        return None
    try:
        return torch.optim.Adam(params, lr=lr_mask, fused=True)
    except (RuntimeError, TypeError):  # fused kernel unavailable for this device/dtype
        return torch.optim.Adam(params, lr=lr_mask)


@torch.no_grad()
def reset_picks(model, task):
    """Drop task's stored binary pick so the next phase learns a fresh one (retrain, spec §3.5)."""
    for _, layer in model.masked_layers():
        name = f'pick_bits_{task}'
        if hasattr(layer, name):
            delattr(layer, name)
        layer.pick_score = None
