"""Pick by hand the sparsity a task keeps (the paper's workflow, experiment 2).

After a task's pruning stages the CPG script stops; look at the record, then pick:

  python tools/pick_pruning_ratio.py --task_folder CKPT/<task> --baseline_acc_file GOALS.json
      prints gradual_prune/record.txt as a table: accuracy, difference to the goal, whether the
      stage's checkpoint is there, the ratio the automatic rule suggests, the current choice
  python tools/pick_pruning_ratio.py --task_folder CKPT/<task> --ratio 0.4
      promotes that stage (0 = the unpruned scratch/ model)
  python tools/pick_pruning_ratio.py --task_folder CKPT/<task> --baseline_acc_file GOALS.json --auto
      applies experiment 1's automatic rule (as tools/choose_appropriate_pruning_ratio_for_next_task.py)

Picking copies the stage's checkpoint atomically to <task>/gradual_prune/checkpoint.pth.tar (what
the next task loads) and writes gradual_prune/chosen.json: task, chosen_pruning_ratio, accuracy,
goal, network_width_multiplier, source (the stage's own checkpoint, where the retrain starts from)
and picked_by ('hand' or 'auto'). Picking again replaces both; nothing is deleted.
The goal is read from --baseline_acc_file (JSON task -> accuracy) under --dataset (default: the
task folder's name); the table and --ratio work without one.
Errors: one line `error: ...` on stderr; exit 1 (exit 3: --auto and the goal file is missing).
"""
import logging
import math
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import ArgumentParser, run_tool  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.ratio_choice import (PICK_TOOL as TOOL, check_required, choose_ratio, is_at_max_width,  # noqa: E402
                                promote, record_report, required_sparsity, task_goal_margin, task_width)
from utils.records import check_fraction, ratio_key, read_goal, read_record  # noqa: E402



def get_args_parser():
    parser = ArgumentParser('pick_pruning_ratio.py', description='print a task\'s pruning record, or pick the '
                            'sparsity it keeps (promote that checkpoint for the next task)')
    parser.add_argument('--task_folder', required=True,
                        help='<checkpoint root>/<task>: holds scratch/ and gradual_prune/ (record.txt, <ratio>/)')
    parser.add_argument('--dataset', default=None,
                        help='task name, the key of the goal file (default: the task folder\'s name)')
    parser.add_argument('--baseline_acc_file', default=None,
                        help='JSON task -> accuracy goal; optional for the table and --ratio, needed by --auto')
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument('--ratio', default=None,
                      help='promote the stage of this sparsity, as recorded in record.txt (0 = unpruned scratch/)')
    pick.add_argument('--auto', action='store_true',
                      help='promote what experiment 1\'s automatic rule chooses (needs the goal)')
    parser.add_argument('--allow_acc_loss', type=float, default=None,
                        help='rule: tolerated accuracy below the goal (fraction, e.g. 0.01; default: the goal '
                             'margin the task\'s Phase A accepted with, else 0)')
    parser.add_argument('--max_allowed_network_width_multiplier', type=float, default=1.5,
                        help='rule: maximum raw width; at it a task that missed its goal unpruned keeps '
                             'its highest sparsity')
    parser.add_argument('--log_path', default=None,
                        help='also append the pick to this log (the task\'s train.log); the table is not logged')
    return parser


def append_to_log(path, message):
    """Append `message` to the log file in the repository's `time - name - level - message` format."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter('%(asctime)s - %(name)s - %(levelname)s - %(message)s'))
    logger = logging.getLogger('picker')
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.info(message)
    finally:
        logger.removeHandler(handler)
        handler.close()


def task_name(args):
    return args.dataset or os.path.basename(os.path.normpath(args.task_folder))


def load_record(task_folder):
    """record.txt, or one CPGError saying to run the task first."""
    path = os.path.join(task_folder, 'gradual_prune', 'record.txt')
    run_first = 'run the task\'s CPG script with TARGET_TASK_ID=<its task id> first'
    if not os.path.isdir(task_folder):
        raise CPGError(f'task folder {task_folder} does not exist; {run_first}')
    record = read_record(path)
    if not record:
        raise CPGError(f'no pruning record at {path}; {run_first}')
    return record


def optional_goal(args, task):
    """(goal or None, why there is none)."""
    if not args.baseline_acc_file:
        return None, 'no --baseline_acc_file given'
    try:
        return read_goal(args.baseline_acc_file, task), None
    except CPGError as exc:
        return None, str(exc).split(';')[0]


def parse_ratio(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CPGError(f'--ratio {text!r} is not a number; give a sparsity from record.txt, e.g. --ratio 0.4')
    return ratio_key(0.0 if value == 0 else value)  # -0 is 0


def print_table(args, task, record):
    goal, why = optional_goal(args, task)
    for line in record_report(args.task_folder, task, record, goal, args.baseline_acc_file, args.allow_acc_loss,
                              args.max_allowed_network_width_multiplier, dataset=args.dataset, why=why):
        print(line)
    return 0


def main(args):
    if args.allow_acc_loss is None:   # a stage accepted within the goal margin is suggested too
        args.allow_acc_loss = task_goal_margin(args.task_folder)
    problem = check_fraction('--allow_acc_loss (ALLOW_ACC_LOSS)', args.allow_acc_loss)
    if problem:
        raise CPGError(problem)
    task = task_name(args)
    key = parse_ratio(args.ratio) if args.ratio is not None else None
    record = load_record(args.task_folder)
    if args.ratio is None and not args.auto:
        return print_table(args, task, record)
    if args.auto:
        if not args.baseline_acc_file:
            raise CPGError('--auto needs the accuracy goal: pass --baseline_acc_file GOALS.json '
                           '(or pick by hand with --ratio)')
        goal = read_goal(args.baseline_acc_file, task)
        width = task_width(args.task_folder, task)
        key = choose_ratio(record, goal, args.allow_acc_loss,
                           is_at_max_width(width, args.max_allowed_network_width_multiplier),
                           required_sparsity(args.task_folder)) or '0.0'
    else:
        goal, _ = optional_goal(args, task)
        if key not in record:
            raise CPGError(f'sparsity {key} is not in {os.path.join(args.task_folder, "gradual_prune", "record.txt")} '
                           f'(recorded: {", ".join(sorted(record, key=float))}); print the table with: '
                           f'python {TOOL} --task_folder {shlex.quote(args.task_folder)}')
        required = required_sparsity(args.task_folder)
        if required:   # the must-prune rule: a hand pick may not undo it either
            check_required(record, required, key)
    chosen, copied = promote(os.path.abspath(args.task_folder), key, record, task, goal,
                             picked_by='auto' if args.auto else 'hand')
    acc = chosen['accuracy']
    acc_text = f'accuracy {100 * acc:.2f}%' if acc is not None else 'accuracy not recorded'
    goal_text = f'goal {100 * goal:.2f}%' if goal is not None else 'no goal given'
    lines = [f'picked sparsity {key} for {task} ({"automatic rule" if args.auto else "by hand"}): '
             f'{acc_text}, {goal_text}{"" if copied else " (already in place)"}; the next task can now load '
             f'{os.path.join(args.task_folder, "gradual_prune")} (run the CPG script with '
             f'TARGET_TASK_ID=<next task id>)']
    if os.path.exists(os.path.join(args.task_folder, 'DONE')):
        lines.append(f'note: {task} is marked DONE: tasks already learned after it were built on its '
                     f'previous choice and keep it until they are learned again')
    for line in lines:
        print(line)
        append_to_log(args.log_path, line)
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
