"""The sparsity a task keeps (spec §3.4): the automatic rule, the promotion, the record as a table.

Shared by tools/choose_appropriate_pruning_ratio_for_next_task.py (experiment 1: the rule, every
run) and tools/pick_pruning_ratio.py (experiment 2: the user picks by hand, or asks for the rule).

Promoting copies the chosen stage's checkpoint atomically to <task>/gradual_prune/checkpoint.pth.tar
(what the next task loads) and records the choice in gradual_prune/chosen.json; its `source` is the
chosen stage's own checkpoint, where the retrain starts from. Nothing is deleted here.
"""
import json
import os

import shlex

from .checkpoint import CHECKPOINT_NAME, atomic_write_json, checkpoint_info, copy_checkpoint, read_sidecar
from .errors import CPGError
from .records import CHOICE_MARKER, ratio_key, read_required

PICK_TOOL = 'tools/pick_pruning_ratio.py'


def choose_ratio(record, goal, allow_acc_loss, at_max_width, required=None):
    """Sparsity key to keep, or None for the unpruned model. record: {"0.0": acc, "0.1": acc, ...}.

    The highest sparsity whose accuracy + allow_acc_loss >= goal; at the maximum width, when the
    unpruned accuracy missed the goal (by more than allow_acc_loss), the highest sparsity reached
    (the must-prune result). `required`: the sparsity the must-prune rule requires (must_prune.json):
    nothing below it is chosen (CPGError when no stage reached it).
    """
    acc0 = record.get('0.0')
    stages = sorted((k for k in record if float(k) > 0), key=float, reverse=True)
    if required:
        check_required(record, required)
        stages = [k for k in stages if float(k) >= required - 1e-9]
        if not any(record[k] + allow_acc_loss >= goal for k in stages):
            return stages[0]
    if at_max_width and acc0 is not None and acc0 + allow_acc_loss < goal and stages:
        return stages[0]
    for key in stages:
        if record[key] + allow_acc_loss >= goal:
            return key
    return None


def check_required(record, required, key=None):
    """CPGError unless `key` (default: the highest recorded sparsity) reaches `required`."""
    reached = max((float(k) for k in record), default=0.0) if key is None else float(key)
    if reached < required - 1e-9:
        what = f'sparsity {key}' if key is not None else f'the highest recorded sparsity ({ratio_key(reached)})'
        raise CPGError(f'the must-prune rule requires this task to free {required:g} of its capacity '
                       f'(it missed its goal at the maximum width), but {what} is below it; '
                       + ('pick a recorded sparsity >= %g' % required if key is not None else
                          'rerun its pruning stages up to that sparsity (PRUNING_RATIOS)'))


def task_goal_margin(task_folder):
    """The goal margin the task's Phase A accepted with (its scratch/result.json), else 0.0."""
    try:
        with open(os.path.join(task_folder, 'scratch', 'result.json')) as f:
            return float(json.load(f)['signature'].get('goal_margin') or 0.0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0.0


def required_sparsity(task_folder):
    """The must-prune rule's required sparsity of the task (gradual_prune/must_prune.json) or None."""
    return read_required(os.path.join(task_folder, 'gradual_prune'))


def is_at_max_width(width, max_width):
    return width is not None and width >= max_width - 1e-9


def stage_checkpoint(task_folder, key):
    """The checkpoint of the stage that recorded sparsity `key` (None or "0.0": Phase A's scratch/)."""
    if key is None or float(key) == 0:
        return os.path.join(task_folder, 'scratch', CHECKPOINT_NAME)
    return os.path.join(task_folder, 'gradual_prune', key, CHECKPOINT_NAME)


def task_width(task_folder, task):
    """Raw width multiplier of the task's Phase A checkpoint (from its sidecar)."""
    scratch = stage_checkpoint(task_folder, None)
    meta = read_sidecar(scratch)
    if meta is None:
        raise CPGError(f'no Phase A checkpoint at {scratch}; run Phase A (--mode finetune) for {task} first')
    return meta['network_width_multiplier']


def read_choice(task_folder):
    """gradual_prune/chosen.json as a dict, or None (absent or unreadable)."""
    try:
        with open(os.path.join(task_folder, 'gradual_prune', CHOICE_MARKER)) as f:
            chosen = json.load(f)
        return chosen if isinstance(chosen, dict) else None
    except (OSError, ValueError):
        return None


def chosen_source(task_folder, chosen):
    """The chosen stage's checkpoint path: chosen.json stores it relative to the task folder."""
    return os.path.normpath(os.path.join(task_folder, chosen['source']))


def promote(task_folder, key, record, task, goal, picked_by='auto'):
    """Promote sparsity `key` (None: the unpruned scratch/ model) and write chosen.json.

    Returns (chosen, copied): the dict written to chosen.json, and False when the promoted file
    already was this checkpoint (nothing copied).
    """
    prune_dir = os.path.join(task_folder, 'gradual_prune')
    source = stage_checkpoint(task_folder, key)
    relative = os.path.relpath(source, task_folder)   # chosen.json survives moving the run folder
    shown = '0.0' if key is None else key
    current = read_choice(task_folder)
    if (not os.path.isfile(source) and current is not None and chosen_source(task_folder, current) == source
            and os.path.isfile(os.path.join(prune_dir, CHECKPOINT_NAME))):
        return current, False  # already promoted; its stage copy went when the task was DONE
    if not os.path.isfile(source):
        rerun = 'Phase A' if key is None or float(key) == 0 else 'that pruning stage'
        raise CPGError(f'record.txt lists sparsity {shown} but its checkpoint {source} is missing; '
                       f'rerun {rerun} (run the task\'s CPG script again)')
    width = checkpoint_info(source, 'rerun the stage that wrote it')['network_width_multiplier']
    copied = copy_checkpoint(source, os.path.join(prune_dir, CHECKPOINT_NAME))
    chosen = {'task': task, 'chosen_pruning_ratio': float(shown), 'accuracy': record.get(shown),
              'goal': goal, 'network_width_multiplier': width, 'source': relative, 'picked_by': picked_by}
    atomic_write_json(os.path.join(prune_dir, CHOICE_MARKER), chosen)
    return chosen, copied


def format_record_table(record, goal=None, suggested=None, chosen=None, has_checkpoint=None):
    """The record as text lines, one row per sparsity in numeric order.

    goal: accuracy goal or None (no goal column); suggested: the rule's key (None = "0.0");
    chosen: the chosen.json dict or None; has_checkpoint: {key: bool} (no column if None).
    """
    chosen_key = None
    if chosen and chosen.get('chosen_pruning_ratio') is not None:
        chosen_key = ratio_key(chosen['chosen_pruning_ratio'])
    if goal is not None and suggested is None:
        suggested = '0.0'
    header = ['sparsity', 'accuracy'] + (['vs goal'] if goal is not None else []) \
        + (['checkpoint'] if has_checkpoint is not None else [])
    rows = []
    for key in sorted(record, key=float):
        row = [key, f'{100 * record[key]:.2f}%']
        if goal is not None:
            row.append(f'{100 * (record[key] - goal):+.2f}')
        if has_checkpoint is not None:
            row.append('yes' if has_checkpoint.get(key) else 'missing')
        marks = []
        if goal is not None and key == suggested:
            marks.append('suggested')
        if key == chosen_key:
            marks.append(f'chosen ({chosen.get("picked_by", "auto")})')
        rows.append((row, marks))
    widths = [max(len(header[i]), *(len(r[i]) for r, _ in rows)) if rows else len(header[i])
              for i in range(len(header))]
    lines = ['  '.join(h.rjust(w) for h, w in zip(header, widths))]
    for row, marks in rows:
        line = '  '.join(c.rjust(w) for c, w in zip(row, widths))
        lines.append(line + ('  <- ' + ', '.join(marks) if marks else ''))
    return lines


def pick_command(task_folder, ratio, task=None, goals_file=None):
    """The command that picks `ratio` for the task in `task_folder` by hand."""
    argv = ['python', PICK_TOOL, '--task_folder', task_folder]
    if task:
        argv += ['--dataset', task]
    if goals_file:
        argv += ['--baseline_acc_file', goals_file]
    return ' '.join(shlex.quote(a) for a in argv) + f' --ratio {ratio}'


def record_report(task_folder, task, record, goal, goals_file, allow_acc_loss, max_width, dataset=None,
                  why=None):
    """The record as the lines a user picks from: the table, the goal and the rule's suggestion,
    and the command that picks it (`dataset`: the --dataset it needs, when the task is not the
    folder's name; `why`: why there is no goal)."""
    scratch_meta = read_sidecar(stage_checkpoint(task_folder, None))
    width = scratch_meta.get('network_width_multiplier') if scratch_meta else None
    required = required_sparsity(task_folder)
    suggested, problem = None, None
    if goal is not None:
        try:
            suggested = choose_ratio(record, goal, allow_acc_loss, is_at_max_width(width, max_width),
                                     required) or '0.0'
        except CPGError as exc:
            problem = str(exc)
    exists = {key: os.path.isfile(stage_checkpoint(task_folder, key)) for key in record}
    lines = [f'{task}: {os.path.join(task_folder, "gradual_prune", "record.txt")}'
             + (f' (width multiplier {width})' if width is not None else '')]
    lines += format_record_table(record, goal, suggested, read_choice(task_folder), exists)
    if required:
        lines.append(f'must-prune rule: this task missed its goal at the maximum width and must free '
                     f'{required:g} of its capacity; no sparsity below it can be picked')
    if problem:
        lines.append(problem)
        return lines
    if goal is None:
        lines.append(f'no accuracy goal ({why or "no goal file given"}): no goal column and no suggestion; '
                     f'pass --baseline_acc_file GOALS.json to see them')
        lines.append(f'pick one: {pick_command(task_folder, "<sparsity>", dataset)}')
        return lines
    lines.append(f'goal {100 * goal:.2f}% ({task} in {goals_file}); the automatic rule '
                 f'(allow_acc_loss {allow_acc_loss}, max width {max_width}) suggests {suggested}')
    lines.append(f'pick it: {pick_command(task_folder, suggested, dataset, goals_file)}')
    return lines


def keep_retrain_if_improved(task_folder):
    """After the retrain (spec §3.5): its model replaces the picked one in gradual_prune/ only if
    its result.json says it improved; retrain/promoted.json records the decision. Returns it."""
    retrain_dir = os.path.join(task_folder, 'retrain')
    path = os.path.join(retrain_dir, 'result.json')
    try:
        with open(path) as f:
            result = json.load(f)
    except FileNotFoundError:
        raise CPGError(f'no retrain result at {path}; run the retrain (--finetune_again) first') from None
    except (OSError, ValueError):
        raise CPGError(f'cannot read {path}; delete it and rerun the retrain') from None
    keep = bool(result.get('improved'))
    retrained = os.path.join(retrain_dir, CHECKPOINT_NAME)
    if keep:
        if not os.path.isfile(retrained):
            raise CPGError(f'{path} says the retrain improved but {retrained} is missing; delete '
                           f'result.json and rerun the retrain')
        copy_checkpoint(retrained, os.path.join(task_folder, 'gradual_prune', CHECKPOINT_NAME))
    atomic_write_json(os.path.join(retrain_dir, 'promoted.json'),
                      {'retrained_model_kept': keep, 'accuracy': result.get('accuracy')})
    return keep
