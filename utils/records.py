"""record.txt (sparsity -> accuracy, JSON) and accuracy-goal files (task -> "0.xxxx") (spec §4.3, §4.4)."""
import json
import os

from .atomic import atomic_write_json
from .errors import CPGError


CHOICE_MARKER = 'chosen.json'  # written by the ratio chooser beside record.txt
REQUIRED_MARKER = 'must_prune.json'  # written by the pruning stages beside record.txt (spec §3.3)


def reset_record(path):
    """Forget a task's pruning record, ratio choice and required sparsity (a fresh Phase A makes
    them stale)."""
    folder = os.path.dirname(os.path.abspath(path))
    for stale in (path, os.path.join(folder, CHOICE_MARKER), os.path.join(folder, REQUIRED_MARKER)):
        if os.path.isfile(stale):
            os.remove(stale)


def write_required(record_path, required, task):
    """Beside record.txt: the sparsity the must-prune rule requires of the task (None: no rule,
    the file goes). Every chooser refuses a sparsity below it."""
    path = os.path.join(os.path.dirname(os.path.abspath(record_path)), REQUIRED_MARKER)
    if required is None:
        if os.path.isfile(path):
            os.remove(path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_json(path, {'task': task, 'required_sparsity': required})


def read_required(prune_folder):
    """The required sparsity recorded in `prune_folder` (a task's gradual_prune/), or None."""
    try:
        with open(os.path.join(prune_folder, REQUIRED_MARKER)) as f:
            return float(json.load(f)['required_sparsity'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ratio_key(ratio):
    """Sparsity as the record's string key: 0.0 -> "0.0", 0.1 -> "0.1", 0.95 -> "0.95"."""
    return repr(round(float(ratio), 4))


def read_record(path):
    """{sparsity string: accuracy}; empty if the file does not exist yet."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return {ratio_key(k): float(v) for k, v in json.load(f).items()}
    except (json.JSONDecodeError, ValueError, AttributeError):
        raise CPGError(f'record file {path} is not a JSON object of sparsity -> accuracy; '
                       f'fix or delete it and rerun the task') from None


def write_record(path, ratio, accuracy):
    """Set record[ratio] = round(accuracy, 4); string keys only, one entry per ratio (spec §12.19)."""
    record = read_record(path)
    record[ratio_key(ratio)] = round(float(accuracy), 4)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ordered = dict(sorted(record.items(), key=lambda kv: float(kv[0])))
    atomic_write_json(path, ordered)
    return ordered


class GoalFileMissing(CPGError):
    """The accuracy-goal file does not exist (exit status 3 in the bash protocol)."""


def read_goal(path, task):
    """The accuracy goal of `task` as a float."""
    if not path or not os.path.isfile(path):
        raise GoalFileMissing(f'accuracy goal file not found: {path}; run experiment1/baseline_cifar100.sh '
                              f'first (or write the JSON {{"<task>": "0.xxxx"}} yourself)')
    goals = read_goals(path)
    if task not in goals:
        raise CPGError(f'task {task!r} has no accuracy goal in {path}; add it (known: '
                       f'{", ".join(sorted(goals)) or "none"})')
    return goals[task]


def goal_problems_of(path, goals):
    """One message per goal outside [0, 1] (a percentage such as 65.8, a negative value)."""
    problems = []
    for task, value in goals.items():
        if not 0.0 <= value <= 1.0:
            example = f'"{value / 100:.4f}" for {value:g}%' if 1.0 < value <= 100.0 else '"0.658" for 65.8%'
            problems.append(f'goal file {path}: task {task!r} has goal {value:g}; goals are accuracies '
                            f'as fractions in [0, 1], e.g. {example}')
    return problems


def read_goals(path, check=True):
    """{task: goal} of a goal file; CPGError for a file that is not a JSON object of numbers, or
    (check) for a goal outside [0, 1]."""
    try:
        with open(path) as f:
            goals = {k: float(v) for k, v in json.load(f).items()}
    except (json.JSONDecodeError, ValueError, AttributeError, TypeError):
        raise CPGError(f'goal file {path} is not a JSON object of task -> accuracy; fix or delete it') from None
    problems = goal_problems_of(path, goals) if check else []
    if problems:
        raise CPGError(problems[0])
    return goals


def check_fraction(name, value, upper_inclusive=False, example='0.005'):
    """None if `value` is a fraction in [0, 1) ([0, 1] when upper_inclusive), else one line
    naming the knob, the value and the expected form."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float('nan')
    if 0.0 <= number < 1.0 or (upper_inclusive and number == 1.0):
        return None
    interval = '[0, 1]' if upper_inclusive else '[0, 1)'
    return f'{name}={value}: a fraction in {interval} is expected, e.g. {example}'


def write_goal(path, task, accuracy):
    """goals[task] = "%.4f" % accuracy, keeping the other tasks' goals (the original's string values)."""
    goals = {}
    if os.path.isfile(path):
        with open(path) as f:
            goals = json.load(f)
    goals[task] = f'{accuracy:.4f}'
    os.makedirs(os.path.dirname(os.path.abspath(path)) or '.', exist_ok=True)
    atomic_write_json(path, goals)
