"""Recipes: what a stage trains and with which optimizer, per method; the original's rules.

Each compared method runs the settings of its own published code (docs/methods.md):

  --no-train_bn        the task's BatchNorm stays in eval mode: its running statistics and affine
                       parameters keep the values it started with (piggyback and PackNet's
                       fine-grained "nobias-nobn" runs, which pass no --train_bn)
  --no-train_biases    the task's biases of shared layers keep their starting values (idem)
  --no-nesterov        plain momentum SGD (PackNet's main.py; CPG uses Nesterov, spec §3.8)
  --lr_classifier LR   the head trains with its own Adam at LR, decayed as the weights' LR
                       (piggyback's --lr_classifier with Adam, run_piggyback_training.sh)

The original's rules that docs/differences.md corrects (ORIGINAL_RULES=1 of every CPG/PAE
script passes --original_rules, which sets each of these):

  --retrain_baseline fresh        the retrain is kept when it beats the fresh pick mask's first
                                  validation, not the pruned model (spec §3.5)
  --release_zeroing validation    released weights stay in the forward pass, moving on their
                                  momentum, until the next validation zeroes them (spec §3.2)
  --sparsity_rule original        the cutoff is the r-th smallest magnitude of the pool, stale
                                  released values included; every own entry at or below it goes
                                  (ties too); no forced update at the end of the ramp (spec §3.2)
  --gate_stops_must_prune         a pruning stage below the train-accuracy gate stops the loop even
                                  when the must-prune rule still requires sparsity, and only a
                                  missed goal (not a failed gate) starts the rule (spec §3.1, §3.3)
  --angle_lambda_restart          (experiment 3) AngleLoss's lambda restarts in every stage

The train-accuracy gate (--train_acc_gate) is a number (the paper: a stage counts only if its
train accuracy exceeds it) or relative:D: Phase A accepts on the accuracy goal alone, and a
pruning stage passes while its train accuracy stays within D of the task's Phase A train accuracy.
"""
import argparse

import torch

from .errors import CPGError
from .manager import task_parameters

RELATIVE = 'relative:'
# Recipe flags and their defaults: a setting enters a stage's replay signature only when it differs
# from its default, so the stages finished before these flags existed still replay.
RECIPE_DEFAULTS = {'train_bn': True, 'train_biases': True, 'nesterov': True, 'lr_classifier': None}
ORIGINAL_RULES = {'retrain_baseline': 'fresh', 'release_zeroing': 'validation', 'sparsity_rule': 'original',
                  'gate_stops_must_prune': True}


def train_acc_gate(text):
    """argparse type of --train_acc_gate: a number, or relative:D with D a fraction in [0, 1)."""
    value = str(text).strip()
    if value.startswith(RELATIVE):
        try:
            margin = float(value[len(RELATIVE):])
        except ValueError:
            margin = float('nan')
        if not 0.0 <= margin < 1.0:
            raise argparse.ArgumentTypeError(f'{text!r}: relative:D needs a fraction D in [0, 1), '
                                             f'e.g. relative:0.02 (TRAIN_ACC_GATE)')
        return f'{RELATIVE}{margin!r}'
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: give a train accuracy (0.95) or relative:D '
                                         f'(relative:0.02) (TRAIN_ACC_GATE)') from None


def relative_margin(gate):
    """D of a relative gate, None for an absolute one."""
    if isinstance(gate, str) and gate.startswith(RELATIVE):
        return float(gate[len(RELATIVE):])
    return None


def add_recipe_flags(parser):
    """The recipe flags (this module's docstring); called by utils.engine.get_args_parser."""
    # What trains
    parser.add_argument('--train_bn', action=argparse.BooleanOptionalAction, default=True,
                        help='train the task\'s BatchNorm (affine and running statistics); --no-train_bn '
                             'keeps it in eval mode at the values it starts with (piggyback, PackNet\'s '
                             'fine-grained runs)')
    parser.add_argument('--train_biases', action=argparse.BooleanOptionalAction, default=True,
                        help='train the task\'s biases of shared layers; --no-train_biases keeps their '
                             'starting values (piggyback, PackNet\'s fine-grained runs)')
    # Optimization
    parser.add_argument('--nesterov', action=argparse.BooleanOptionalAction, default=True,
                        help='Nesterov momentum for the weights\' SGD (CPG); --no-nesterov: plain '
                             'momentum 0.9 (PackNet)')
    parser.add_argument('--lr_classifier', type=float, default=None,
                        help='train the head with its own Adam at this LR, decayed as the weights\' LR '
                             '(piggyback); default: the head is in the weights\' SGD')
    # The original's rules (docs/differences.md)
    parser.add_argument('--retrain_baseline', choices=['pruned', 'fresh'], default='pruned',
                        help='the retrain replaces the pruned model only if it beats this: the pruned '
                             'model\'s accuracy, or (fresh, the original) the fresh pick mask\'s first validation')
    parser.add_argument('--release_zeroing', choices=['release', 'validation'], default='release',
                        help='released weights are zeroed (and lose their momentum) when released, or '
                             '(validation, the original) stay in the forward pass until the next validation')
    parser.add_argument('--sparsity_rule', choices=['exact', 'original'], default='exact',
                        help='exact: round(s x pool) entries free after each update, the target forced at '
                             'the end of the ramp; original: every own entry at or below the r-th smallest '
                             'magnitude of the pool (ties too), no forced update')
    parser.add_argument('--gate_stops_must_prune', action=argparse.BooleanOptionalAction, default=False,
                        help='the original: a stage below the train-accuracy gate stops the pruning even '
                             'when the must-prune rule still requires sparsity, and a failed gate does not '
                             'start the rule; default: a task at maximum width always frees its required share')
    parser.add_argument('--original_rules', action='store_true',
                        help='every rule above as the original ran it (ORIGINAL_RULES=1), and AngleLoss\'s '
                             'lambda restarting in every stage where the entry point has --angle_lambda_restart')


def check_recipe_args(parser, args):
    """--original_rules sets each original rule; one-line errors for impossible recipes."""
    if getattr(args, 'original_rules', False):
        for name, value in ORIGINAL_RULES.items():
            setattr(args, name, value)
        if hasattr(args, 'angle_lambda_restart'):
            args.angle_lambda_restart = True
    if args.lr_classifier is not None and args.lr_classifier <= 0:
        parser.error(f'--lr_classifier {args.lr_classifier}: a positive learning rate is expected')


def recipe_signature(args):
    """The recipe settings that differ from their defaults (part of every stage's signature)."""
    return {name: getattr(args, name) for name, default in RECIPE_DEFAULTS.items()
            if getattr(args, name, default) != default}


def train_bn(args):
    return getattr(args, 'train_bn', True)


def build_weight_optimizer(model, task, args, lr, train_weights=True):
    """SGD over what the task trains (utils.manager.task_parameters), momentum 0.9, Nesterov unless
    --no-nesterov, no built-in weight decay (manual L2 lives in the layers, spec §3.8). The head is
    left out when it has its own optimizer (--lr_classifier)."""
    params = task_parameters(model, task, train_weights, train_bn=train_bn(args),
                             train_biases=getattr(args, 'train_biases', True),
                             train_head=getattr(args, 'lr_classifier', None) is None)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=getattr(args, 'nesterov', True),
                           weight_decay=0.0)


def build_head_optimizer(model, task, args):
    """Adam (default betas/eps, no weight decay) over the task's head at --lr_classifier, or None
    when the head trains with the weights (piggyback's optimizer_classifier)."""
    lr = getattr(args, 'lr_classifier', None)
    if lr is None:
        return None
    params = list(model.heads[str(task)].parameters())
    for param in params:
        param.requires_grad_(True)
    return torch.optim.Adam(params, lr=lr)


def head_lr(args, lr, base_lr):
    """The head's LR when the weights' LR is `lr` (started at `base_lr`): --lr_classifier scaled
    by the same decays."""
    if base_lr == 0:
        raise CPGError('--lr_classifier follows the weights\' LR decays: give a positive --lr')
    return args.lr_classifier * lr / base_lr
