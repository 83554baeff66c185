"""Shared helpers of the CPG core tests: tiny models, data-free task learning, logits snapshots.

Everything runs on CPU with the tiny VGG (base_width 0.0625: channels 4..32, FC 256) and random
inputs, so a whole task (finetune + prune + retrain) takes well under a second.
"""
import os
import sys

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from models import build_model  # noqa: E402
from utils.grower import assign_free_capacity  # noqa: E402
from utils.manager import build_weight_optimizer  # noqa: E402
from utils.picker import build_pick_optimizer, reset_picks  # noqa: E402
from utils.pruner import release_smallest  # noqa: E402

ARCH = 'custom_vgg_cifar100'
TINY = 0.0625
WD = 4e-5


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(ARCH, base_width=TINY)


def fixed_inputs(n=4, seed=123):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen)


def begin_all(model, task, learn_pick=False, fixed_pick=False, weight_decay=WD):
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=learn_pick, fixed_pick=fixed_pick, weight_decay=weight_decay)


def end_all(model):
    for _, layer in model.masked_layers():
        layer.end_phase()


def train_steps(model, task, optimizers, steps, gen, classes=5, batch=4):
    """`steps` optimizer steps of task `task` on random images/labels (train mode)."""
    model.set_task(task)
    model.train()
    optimizers = [opt for opt in optimizers if opt is not None]
    for _ in range(steps):
        x = torch.randn(batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for opt in optimizers:
            opt.step()


def momentum_of(optimizer, param):
    return optimizer.state.get(param, {}).get('momentum_buffer')


def prune_all(model, task, sparsity, optimizer=None):
    """One-shot release to `sparsity` of the pool (task's entries + free) in every layer."""
    for _, layer in model.masked_layers():
        pool = int(((layer.owner == task) | (layer.owner == 0)).sum())
        release_smallest(layer, task, sparsity, pool,
                         momentum_of(optimizer, layer.weight) if optimizer is not None else None)


def learn_task(model, task, steps=3, sparsity=None, retrain=False, seed=0, lr=0.05, lr_mask=0.01,
               learn_pick=None):
    """CPG's phases of `task` without data: Phase A (+ pick), optional prune, optional retrain.

    The task must already be added (model.add_task). lr_mask is large so that some picks flip.
    """
    gen = torch.Generator().manual_seed(1000 + seed)
    learn_pick = task >= 2 if learn_pick is None else learn_pick
    assign_free_capacity(model, task)
    # Phase A
    begin_all(model, task, learn_pick=learn_pick)
    sgd = build_weight_optimizer(model, task, lr)
    adam = build_pick_optimizer(model, lr_mask) if learn_pick else None
    train_steps(model, task, [sgd, adam], steps, gen)
    end_all(model)
    if sparsity:
        # Phase B: pick frozen, release then fine-tune the survivors
        begin_all(model, task, learn_pick=False, fixed_pick=learn_pick)
        sgd = build_weight_optimizer(model, task, lr)
        train_steps(model, task, [sgd], 1, gen)
        prune_all(model, task, sparsity, sgd)
        train_steps(model, task, [sgd], steps, gen)
        end_all(model)
    if retrain and learn_pick:
        # Phase C: a fresh pick mask is learned again with the surviving weights
        reset_picks(model, task)
        begin_all(model, task, learn_pick=True)
        sgd = build_weight_optimizer(model, task, lr)
        adam = build_pick_optimizer(model, lr_mask)
        train_steps(model, task, [sgd, adam], steps, gen)
        end_all(model)


@torch.no_grad()
def task_logits(model, x, tasks=None):
    """{task: logits} in eval mode (per-task BN running statistics, frozen effective weights)."""
    was_training = model.training
    model.eval()
    tasks = range(1, len(model.tasks) + 1) if tasks is None else tasks
    out = {}
    for task in tasks:
        model.set_task(task)
        out[task] = model(x).clone()
    model.train(was_training)
    return out


def snapshot(model):
    """Detached copies of the whole state dict (weights, owners, picks, BN, heads)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def subprocess_env(**extra):
    """Environment for the CLI / script subprocesses: one OpenMP thread, this interpreter first on PATH."""
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
    env.update({k: str(v) for k, v in extra.items()})
    return env
