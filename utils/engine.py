"""The entry-script skeleton every experiment shares: flags, checks, device, one stage per run.

An experiment's CPG_<name>_main.py holds only its data provider, its model choice and its
defaults (`get_args_parser(prog, description, defaults, add_flags)`), then calls `main(args,
provider)` (mae/dino's get_args_parser() + main(args)). The stage writes its exit status to
<save_folder>/exit_status (rank 0), which the bash loops read (tools/stages.sh, run_stage).
"""
import argparse
import logging
import os
import sys

import torch

from models import HEAD_KINDS, MODELS
from models.dist_norm import set_global_statistics

from .checkpoint import DiskFull, is_disk_full, atomic_write_json
from .cli import ArgumentParser, write_exit_status
from .context import EXIT_ERROR, EXIT_NO_GOAL, PROTOCOL_STATUSES, PhaseContext
from .data import seed_everything
from .distributed import Distributed
from .errors import CPGError
from .inference import format_results_table, run_inference
from .logger import log_run_header, setup_logger
from .phases import run_finetune, run_prune, run_retrain
from .sequence import add_task_flags, check_task_args, run_task
from .records import GoalFileMissing
from .recipes import add_recipe_flags, check_recipe_args, train_acc_gate


def get_args_parser(prog, description, defaults, add_flags=None):
    """The shared flags; `defaults` sets an experiment's values (the paper's), `add_flags(parser)`
    adds its own (e.g. experiment 2's --image_size)."""
    parser = ArgumentParser(prog, description=description)
    # Task and model
    parser.add_argument('--mode', choices=['task', 'finetune', 'prune', 'inference'], required=True,
                        help='task = every stage of one task in this process (the scripts\' mode, '
                             'utils/sequence.py); finetune = Phase A (or retrain with --finetune_again); '
                             'prune = one gradual pruning stage; inference = evaluate tasks of a final checkpoint')
    parser.add_argument('--arch', choices=sorted(MODELS), help='backbone, looked up in the model registry')
    parser.add_argument('--dataset', default=None, help='task (its folder name); inference: evaluate only it')
    parser.add_argument('--tasks', nargs='*', default=None,
                        help='inference: tasks to evaluate (default: every task in the checkpoint)')
    parser.add_argument('--num_classes', type=int, default=None,
                        help='classes of the task, checked against its folders (default: from the folders)')
    parser.add_argument('--head', choices=HEAD_KINDS, default='linear', help='kind of the new task\'s head')
    parser.add_argument('--base_width', type=float, default=1.0,
                        help='scales every channel and FC width; 1.0 is the paper\'s network')
    parser.add_argument('--network_width_multiplier', type=float, default=1.0,
                        help='raw growth multiplier m (channels scale by sqrt(m)); never below the checkpoint\'s')
    parser.add_argument('--max_allowed_network_width_multiplier', type=float, default=1.5,
                        help='growing stops here; a task missing its goal at this width is accepted')
    parser.add_argument('--pretrained', default=None,
                        help='first task only: torchvision-format state dict of the backbone (and of the '
                             'head when the task has 1000 classes); nothing is downloaded')
    # Data
    parser.add_argument('--data_root', help='dataset root (layout: docs/experiment1.md "Data")')
    parser.add_argument('--batch_size', type=int, default=32, help='training batch size (global)')
    parser.add_argument('--val_batch_size', type=int, default=100, help='evaluation batch size')
    parser.add_argument('--workers', type=int, default=None, help='data loader workers (default: by core count)')
    parser.add_argument('--val_fraction', type=float, default=0.0,
                        help='hold out this share of each class\'s training images for every selection '
                             '(goals, growth, record.txt, ratio choice, retrain); 0 = the paper: select on '
                             'the test split')
    # Optimization
    parser.add_argument('--epochs', type=int, default=100,
                        help='epochs of this stage (plateau schedule: at most this many)')
    parser.add_argument('--lr', type=float, default=1e-2, help='SGD learning rate of the weights')
    parser.add_argument('--lr_mask', type=float, default=5e-4, help='Adam learning rate of the pick masks')
    parser.add_argument('--weight_decay', type=float, default=4e-5,
                        help='manual L2 on the task\'s own shared weights (not on BN, biases, heads)')
    parser.add_argument('--lr_schedule', choices=['milestones', 'plateau'], default='milestones',
                        help='milestones: fixed epochs with step decays (experiment 1); plateau: decay '
                             'after --patience epochs without a new best, stop after --max_decays (experiment 2)')
    parser.add_argument('--lr_decay_epochs', type=int, nargs='*', default=[50, 80],
                        help='milestones: weights\' LR is multiplied by --lr_decay_factor after these epochs')
    parser.add_argument('--lr_decay_factor', type=float, default=0.1, help='weights\' LR decay factor')
    parser.add_argument('--mask_lr_decay_epochs', type=int, nargs='*', default=[50, 70],
                        help='milestones: mask LR milestones (paired with --mask_lr_decay_factors)')
    parser.add_argument('--mask_lr_decay_factors', type=float, nargs='*', default=[0.2, 0.0],
                        help='milestones: mask LR factors; a 0 factor is skipped when the task owns no weights')
    parser.add_argument('--patience', type=int, default=5, help='plateau: epochs without a new best before a decay')
    parser.add_argument('--max_decays', type=int, default=3, help='plateau: the stage stops after this many decays')
    parser.add_argument('--plateau_mask_factor', type=float, default=0.2,
                        help='plateau: mask LR factor, applied at the first decay only')
    parser.add_argument('--selection', choices=['last', 'best', 'goal'], default='last',
                        help='last: the last epoch, gated by --train_acc_gate (experiment 1); best: the best '
                             'validation epoch (experiment 2; pruning: epochs after the interval); goal: best, '
                             'but a pruning stage keeps only epochs above goal - --goal_margin (experiment 3)')
    parser.add_argument('--train_acc_gate', type=train_acc_gate, default=0.95,
                        help='selection last: a stage counts only if its last-epoch train accuracy exceeds this; '
                             'relative:D (any selection): Phase A accepts on the goal alone, a pruning stage '
                             'passes while its train accuracy stays within D of Phase A\'s (utils/recipes.py)')
    parser.add_argument('--goal_margin', type=float, default=0.0,
                        help='Phase A reaches its goal when accuracy >= goal - margin (experiment 2: 0.005)')
    parser.add_argument('--learn_pick', action=argparse.BooleanOptionalAction, default=True,
                        help='learn pick masks over earlier tasks\' weights (off = PAE: use them all)')
    # Stages
    parser.add_argument('--finetune_again', action='store_true',
                        help='finetune mode: Phase C, re-learn the pick mask of the last task (retrain)')
    parser.add_argument('--retrain_patience', type=int, default=5,
                        help='retrain stops after this many epochs without improvement')
    # Pruning
    parser.add_argument('--initial_sparsity', type=float, default=0.0, help='sparsity at the start of the stage')
    parser.add_argument('--target_sparsity', type=float, default=0.1, help='sparsity at the end of the stage')
    parser.add_argument('--pruning_interval', type=int, default=4,
                        help='epochs over which the sparsity ramps; 0 = one-shot pruning before training (PackNet)')
    parser.add_argument('--prune_lr_decay_epochs', type=int, nargs='*', default=[],
                        help='pruning stage: LR x --lr_decay_factor after these epochs (PackNet\'s retrain); '
                             'none = constant LR (CPG)')
    parser.add_argument('--pruning_frequency', type=int, default=10, help='batches between mask updates')
    parser.add_argument('--total_num_tasks', type=int, default=20,
                        help='tasks in the sequence (must-prune rule); 0 disables the rule')
    # Paths
    parser.add_argument('--load_folder', default=None, help='folder (or file) of the checkpoint to start from')
    parser.add_argument('--save_folder', default=None, help='where this stage writes checkpoint.pth.tar')
    parser.add_argument('--baseline_acc_file', help='JSON task -> accuracy goal (exit 3 when missing)')
    parser.add_argument('--pruning_ratio_to_acc_record_file', default=None,
                        help='record.txt of the task (JSON sparsity -> accuracy)')
    parser.add_argument('--save_goal_file', default=None,
                        help='baseline run: train one task on its own and write its accuracy here')
    parser.add_argument('--initial_from', default=None,
                        help='finetune baseline: start from this single-task checkpoint (all tensors copied)')
    parser.add_argument('--log_path', default=None, help='append the log to this file (e.g. <task>/train.log)')
    parser.add_argument('--resume_every_minutes', type=float, default=10.0,
                        help='write <save_folder>/resume.pth.tar at most this often (and after the '
                             'last epoch and each saved best epoch); 0 = after every epoch')
    parser.add_argument('--results_file', default=None, help='inference: write the results table as JSON')
    parser.add_argument('--method', default='CPG',
                        help='inference: the method named in the results file (CPG, PAE, PackNet, Piggyback, ...)')
    # Runtime
    parser.add_argument('--device', default='auto', help='auto (CUDA if present), cpu, cuda or cuda:N')
    parser.add_argument('--amp', choices=['bf16', 'fp16'], default=None,
                        help='mixed-precision training (autocast; fp16 with a grad scaler); off by default '
                             'for fidelity. Earlier tasks stay bit-exact either way')
    parser.add_argument('--channels_last', action='store_true',
                        help='channels-last memory format for the model, its phase buffers and the batches '
                             '(faster convs on recent GPUs)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the model\'s forward for training (recompiles per task width)')
    parser.add_argument('--deterministic', action='store_true',
                        help='deterministic cuDNN algorithms (default: cudnn.benchmark picks the fastest)')
    parser.add_argument('--sync_bn', action=argparse.BooleanOptionalAction, default=True,
                        help='under torchrun, BatchNorm normalises over the global batch, so that N ranks '
                             'compute what one process computes (--no-sync_bn: per-rank statistics)')
    parser.add_argument('--verbose', action='store_true', help='print every argument of the run (default: to its log)')
    parser.add_argument('--seed', type=int, default=1, help='seed of python, numpy and torch')
    # Task sequence (--mode task)
    add_task_flags(parser)
    add_recipe_flags(parser)
    if add_flags is not None:
        add_flags(parser)
    parser.set_defaults(**defaults)
    return parser


def check_args(parser, args):
    """Reject bad flag combinations before any work (one line each, via parser.error)."""
    if args.mode in ('finetune', 'prune') and not args.dataset:
        parser.error(f'--mode {args.mode} needs --dataset TASK')
    if args.mode in ('finetune', 'prune') and not args.save_folder:
        parser.error(f'--mode {args.mode} needs --save_folder')
    if args.mode in ('prune', 'inference') and not args.load_folder:
        parser.error(f'--mode {args.mode} needs --load_folder')
    if args.mode == 'finetune' and args.finetune_again and not args.load_folder:
        parser.error('--finetune_again needs --load_folder (the task\'s gradual_prune folder)')
    if args.save_goal_file and (args.load_folder or args.mode != 'finetune'):
        parser.error('--save_goal_file is for a baseline: --mode finetune without --load_folder')
    if args.initial_from and not args.save_goal_file:
        parser.error('--initial_from is for the finetune baseline: give --save_goal_file too')
    every_task = getattr(MODELS.get(args.arch), 'pretrained_every_task', False)   # ProgressiveNet's columns
    if args.pretrained and ((args.load_folder and not every_task) or args.mode not in ('finetune', 'task')
                            or args.finetune_again):
        parser.error('--pretrained is for the first task\'s Phase A (--mode finetune or task, without '
                     '--load_folder; progressive_resnet50: every task)')
    check_recipe_args(parser, args)
    if args.mode == 'task':
        check_task_args(parser, args)
    if not 0.0 <= args.initial_sparsity < args.target_sparsity < 1.0 and args.mode == 'prune':
        parser.error(f'need 0 <= --initial_sparsity ({args.initial_sparsity}) < --target_sparsity '
                     f'({args.target_sparsity}) < 1')
    if len(args.mask_lr_decay_epochs) != len(args.mask_lr_decay_factors):
        parser.error('--mask_lr_decay_epochs and --mask_lr_decay_factors need the same length')
    if args.network_width_multiplier < 1.0 or args.max_allowed_network_width_multiplier < 1.0:
        parser.error('width multipliers are >= 1.0 (growth only)')
    if args.base_width <= 0:
        parser.error('--base_width must be positive')
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f'--val_fraction {args.val_fraction} must be in [0, 1)')
    if args.epochs < 0 or args.patience < 1 or args.max_decays < 1:
        parser.error('--epochs must be >= 0, --patience and --max_decays >= 1')
    for flag in ('lr_decay_epochs', 'mask_lr_decay_epochs', 'prune_lr_decay_epochs'):
        early = [m for m in getattr(args, flag) if m < 1]
        if early:
            parser.error(f'--{flag} {" ".join(map(str, getattr(args, flag)))}: a milestone at epoch '
                         f'{early[0]} decays the learning rate before the first step; milestones are '
                         f'epochs >= 1 (check the *_EPOCHS budget)')
    if not 0.0 <= args.goal_margin < 1.0:
        parser.error(f'--goal_margin {args.goal_margin} (GOAL_MARGIN): a fraction in [0, 1) is expected, e.g. 0.005')
    if args.total_num_tasks == 0:
        args.total_num_tasks = None


def resolve_device(name):
    """--device as a torch device name; one clear error for a device this machine cannot run."""
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CPGError(f'--device {name!r} is not a device; use auto, cpu, cuda or cuda:N') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise CPGError(f'--device {name} asked for CUDA but none is available; use --device cpu or auto')
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CPGError(f'--device {name}: only {count} CUDA device(s) are visible '
                           f'(cuda:0..cuda:{count - 1}); use one of them or --device auto')
    return name


def main(args, provider):
    """Run one stage (or a task's stages, --mode task) with the data provider class `provider`;
    its exit status is also written to <save_folder>/exit_status (task mode: <task_folder>/) by
    rank 0, for the scripts (torchrun reports every failure as 1)."""
    status = run_stage(args, provider)
    folder = args.task_folder if args.mode == 'task' else args.save_folder
    if folder and int(os.environ.get('RANK', '0')) == 0:
        write_exit_status(folder, status)
    return status


def run_stage(args, provider):
    try:
        dist = Distributed.from_env(args.device)
    except CPGError as exc:
        sys.stderr.write(f'error: {exc}\n')
        return EXIT_ERROR
    logger = setup_logger(args.log_path if (dist is None or dist.is_main) else None,
                          verbose=getattr(args, 'verbose', False))
    if dist is not None and not dist.is_main:
        logger.setLevel(logging.WARNING)  # rank 0 speaks for everyone
    try:
        device = dist.device if dist is not None else resolve_device(args.device)
        log_run_header(logger, args)
        for note in getattr(args, 'notes', None) or ():
            logger.info('note: %s', note)
        seed_everything(args.seed)
        set_backends(args, device)
        data = provider(args, device, dist)
        if args.mode == 'task':
            return run_task(args, data, logger, device, dist)
        ctx = PhaseContext(args, data, logger, device, dist)
        if args.mode == 'finetune':
            return run_retrain(ctx) if args.finetune_again else run_finetune(ctx)
        if args.mode == 'prune':
            return run_prune(ctx)
        status, results = run_inference(ctx)
        print(format_results_table(results))
        if args.results_file and ctx.is_main:
            os.makedirs(os.path.dirname(os.path.abspath(args.results_file)), exist_ok=True)
            atomic_write_json(args.results_file, results)
            logger.info('results written to %s', args.results_file)
        return status
    except GoalFileMissing as exc:
        logger.error('%s', exc)
        return EXIT_NO_GOAL
    except CPGError as exc:
        logger.error('%s', exc)
        return EXIT_ERROR
    except OSError as exc:   # e.g. a log line on a full disk: one line, not a traceback
        if not is_disk_full(exc):
            raise
        logger.error('%s', DiskFull(exc.filename or args.save_folder or '.'))
        return EXIT_ERROR
    finally:
        if dist is not None:
            dist.close()


def set_backends(args, device):
    """cuDNN picks the fastest algorithms for the run's fixed shapes unless determinism is asked
    for (--deterministic); the matmul precision stays full (fidelity). --sync_bn: BatchNorm over
    the global batch under torchrun."""
    set_global_statistics(args.sync_bn)
    if torch.device(device).type == 'cuda':
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cudnn.deterministic = bool(args.deterministic)


def process_exit_code(status):
    """What the process exits with. Under torchrun the protocol statuses (2 widen, 3 no goal file,
    5 no capacity, 6 stop pruning) exit 0: torchrun reports any non-zero child as a failure, with
    a traceback, and returns 1 anyway. The status itself is in <save_folder>/exit_status."""
    if int(os.environ.get('WORLD_SIZE', '1')) > 1 and status in PROTOCOL_STATUSES:
        return 0
    return status


def cli(get_parser, main_fn, check=None):
    """The `__main__` block of an entry script: parse, check (`check`: the experiment's own
    check_args, which calls this module's), run, exit with the status."""
    parser = get_parser()
    args = parser.parse_args()
    (check or check_args)(parser, args)
    try:
        status = main_fn(args)
    except KeyboardInterrupt:   # Ctrl-C on a stage run by hand: one line (the scripts send SIGTERM)
        if int(os.environ.get('WORLD_SIZE', '1')) == 1:   # under torchrun the launcher reports it
            sys.stderr.write(f'interrupted: {args.mode} stage stopped; what it saved before is intact '
                             f'and a rerun of the same command resumes it\n')
        sys.exit(130)
    sys.exit(process_exit_code(status))
