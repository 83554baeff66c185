"""Choose the sparsity to keep for a task and promote its checkpoint (spec §3.4).

Usage:
  python tools/choose_appropriate_pruning_ratio_for_next_task.py --task_folder CKPT/<task> \
      --dataset <task> --baseline_acc_file logs/baseline_cifar100_acc.txt

Rule: the highest recorded sparsity whose accuracy + allow_acc_loss >= goal; when the network is at
its maximum width and the unpruned accuracy missed the goal, the highest sparsity reached (the
must-prune result). Nothing qualifies -> the unpruned scratch/ model. The chosen checkpoint is
copied atomically to <task>/gradual_prune/checkpoint.pth.tar, where the next task loads from, and
the choice is recorded in gradual_prune/chosen.json (its `source` is what the retrain starts from).
The choice is made again on every run (it is cheap, and a fresh Phase A resets record.txt); the
copy is skipped when the target already is the chosen file. Nothing is deleted here: the script
drops the stage checkpoints once the task is DONE.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import CHECKPOINT_NAME, atomic_write_json, copy_checkpoint, read_sidecar  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.logger import setup_logger  # noqa: E402
from utils.records import CHOICE_MARKER, GoalFileMissing, read_goal, read_record  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('choose pruning ratio')
    parser.add_argument('--task_folder', required=True, help='<checkpoint root>/<task> (holds scratch/, gradual_prune/)')
    parser.add_argument('--dataset', required=True, help='task name (key of the goal file)')
    parser.add_argument('--baseline_acc_file', required=True, help='JSON task -> accuracy goal')
    parser.add_argument('--allow_acc_loss', type=float, default=0.0, help='tolerated accuracy below the goal')
    parser.add_argument('--max_allowed_network_width_multiplier', type=float, default=1.5,
                        help='maximum raw width; at it a task that missed its goal keeps its highest sparsity')
    parser.add_argument('--log_path', default=None, help='append the decision to this log (the task\'s train.log)')
    return parser


def choose_ratio(record, goal, allow_acc_loss, at_max_width):
    """Sparsity key to keep, or None for the unpruned model. record: {"0.0": acc, "0.1": acc, ...}."""
    acc0 = record.get('0.0')
    stages = sorted((k for k in record if float(k) > 0), key=float, reverse=True)
    if at_max_width and acc0 is not None and acc0 < goal and stages:
        return stages[0]
    for key in stages:
        if record[key] + allow_acc_loss >= goal:
            return key
    return None


def main(args):
    logger = setup_logger(args.log_path, name='chooser')
    prune_dir = os.path.join(args.task_folder, 'gradual_prune')
    target = os.path.join(prune_dir, CHECKPOINT_NAME)
    marker = os.path.join(prune_dir, CHOICE_MARKER)
    goal = read_goal(args.baseline_acc_file, args.dataset)
    record = read_record(os.path.join(prune_dir, 'record.txt'))
    scratch = os.path.join(args.task_folder, 'scratch', CHECKPOINT_NAME)
    meta = read_sidecar(scratch)
    if meta is None:
        raise CPGError(f'no Phase A checkpoint at {scratch}; run Phase A (--mode finetune) for {args.dataset} first')
    width = meta['network_width_multiplier']
    chosen = choose_ratio(record, goal, args.allow_acc_loss,
                          width >= args.max_allowed_network_width_multiplier - 1e-9)
    source = scratch if chosen is None else os.path.join(prune_dir, chosen, CHECKPOINT_NAME)
    if not os.path.isfile(source):
        raise CPGError(f'record.txt lists sparsity {chosen} but {source} is missing; rerun that pruning stage')
    copied = copy_checkpoint(source, target)
    chosen_ratio = 0.0 if chosen is None else float(chosen)
    atomic_write_json(marker, {'task': args.dataset, 'chosen_pruning_ratio': chosen_ratio,
                               'accuracy': record.get(chosen or '0.0'), 'goal': goal,
                               'network_width_multiplier': width, 'source': source})
    logger.info('chosen pruning ratio for %s: %s (accuracy %s, goal %.4f, width %s)%s', args.dataset,
                chosen_ratio, record.get(chosen or '0.0'), goal, width,
                '' if copied else ' (already in place)')
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(get_args_parser().parse_args()))
    except GoalFileMissing as exc:
        sys.stderr.write(f'error: {exc}\n')
        sys.exit(3)
    except CPGError as exc:
        sys.stderr.write(f'error: {exc}\n')
        sys.exit(1)
