"""Choose the sparsity to keep for a task and promote its checkpoint (spec §3.4).

Usage:
  python tools/choose_appropriate_pruning_ratio_for_next_task.py --task_folder CKPT/<task> \
      --dataset <task> --baseline_acc_file logs/baseline_cifar100_acc.txt

Rule: the highest recorded sparsity whose accuracy + allow_acc_loss >= goal; when the network is at
its maximum width and the unpruned accuracy missed the goal, the highest sparsity reached (the
must-prune result). Nothing qualifies -> the unpruned scratch/ model. The chosen checkpoint is
copied atomically to <task>/gradual_prune/checkpoint.pth.tar, where the next task loads from, and
the choice is recorded in gradual_prune/chosen.json (its `source` is what the retrain starts from).
The rule and the promotion live in utils/ratio_choice.py, shared with tools/pick_pruning_ratio.py
(the hand pick of experiment 2).
The choice is made again on every run (it is cheap, and a fresh Phase A resets record.txt); the
copy is skipped when the target already is the chosen file. Nothing is deleted here: the script
drops the stage checkpoints once the task is DONE.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_tool  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.logger import setup_logger  # noqa: E402
from utils.ratio_choice import (choose_ratio, is_at_max_width, promote, required_sparsity,  # noqa: E402,F401
                                task_goal_margin, task_width)
from utils.records import check_fraction, read_goal, read_record  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('choose pruning ratio')
    parser.add_argument('--task_folder', required=True, help='<checkpoint root>/<task> (holds scratch/, gradual_prune/)')
    parser.add_argument('--dataset', required=True, help='task name (key of the goal file)')
    parser.add_argument('--baseline_acc_file', required=True, help='JSON task -> accuracy goal')
    parser.add_argument('--allow_acc_loss', type=float, default=None,
                        help='tolerated accuracy below the goal (default: the goal margin of the task\'s Phase A, else 0)')
    parser.add_argument('--max_allowed_network_width_multiplier', type=float, default=1.5,
                        help='maximum raw width; at it a task that missed its goal keeps its highest sparsity')
    parser.add_argument('--log_path', default=None, help='append the decision to this log (the task\'s train.log)')
    return parser


def main(args):
    logger = setup_logger(args.log_path, name='chooser')
    if args.allow_acc_loss is None:
        args.allow_acc_loss = task_goal_margin(args.task_folder)
    problem = check_fraction('--allow_acc_loss (ALLOW_ACC_LOSS)', args.allow_acc_loss)
    if problem:
        raise CPGError(problem)
    goal = read_goal(args.baseline_acc_file, args.dataset)
    record = read_record(os.path.join(args.task_folder, 'gradual_prune', 'record.txt'))
    width = task_width(args.task_folder, args.dataset)
    chosen = choose_ratio(record, goal, args.allow_acc_loss,
                          is_at_max_width(width, args.max_allowed_network_width_multiplier),
                          required_sparsity(args.task_folder))
    choice, copied = promote(args.task_folder, chosen, record, args.dataset, goal, picked_by='auto')
    logger.info('chosen pruning ratio for %s: %s (accuracy %s, goal %.4f, width %s)%s', args.dataset,
                choice['chosen_pruning_ratio'], choice['accuracy'], goal, choice['network_width_multiplier'],
                '' if copied else ' (already in place)')
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
