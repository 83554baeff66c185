"""Where a run stands: per task its state, width, ratio, accuracy against its goal and share of the
one network; the running stage and its epoch; the elapsed time and an estimate of the rest.

Usage: python tools/run_status.py --root checkpoints/CPG/experiment1/scratch_mul_1.5/custom_vgg_cifar100 \
           [--tasks T1 T2 ...] [--json] [--watch SECONDS] [--png run.png] [--exact]
       bash experiment1/status.sh [same flags]   (experiment2/, experiment3/: their root and tasks)

It only reads: JSON files the stages replace atomically, logs they append to (a line still being
written is skipped), and /proc to see whether a process holds the run's lock; it never takes the
lock (a run starting at that moment would be refused). So it is safe while a run writes.
Task states: done, running, stopped (killed or interrupted: a rerun resumes it), failed (its
exit_status), waiting (learned, waits for a pick by hand), pending (not started; from --tasks).
The run: running (a live process holds its lock, also between two tasks), failed, stopped,
waiting, idle (tasks left, none begun: experiments 2 and 3 learn one TARGET_TASK_ID per run),
finished, empty.
Shares are of the network at the task's width when its model was picked: owned + earlier tasks'
(of which it picks some) + free = 100%; by default from the picked epoch's log.jsonl line, with
--exact (implied by --png) counted in the picked checkpoints. --png draws per task a stacked bar of
those weights, the width over the tasks and the accuracy against the goal.
A folder where no run has started yet (empty, or not created yet): one line, exit 0. A folder
that is not a run, or another error: one line `error: ...` on stderr, exit 1.
"""
import datetime
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import ArgumentParser, run_tool  # noqa: E402
from utils.errors import CPGError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_NAMES = {'finetune': 'Phase A', 'prune': 'pruning', 'retrain': 'retrain'}
TASK_MARKERS = ('train.log', 'width', 'DONE', 'exit_status', 'scratch', 'gradual_prune')
PICKED = os.path.join('gradual_prune', 'checkpoint.pth.tar')


def get_args_parser():
    parser = ArgumentParser('run_status.py', description='where a CPG run stands (reads only; safe while it runs)')
    # Inputs
    parser.add_argument('--root', required=True,
                        help="the method's checkpoint root, e.g. "
                             'checkpoints/CPG/experiment1/scratch_mul_1.5/custom_vgg_cifar100')
    parser.add_argument('--tasks', nargs='*', default=None,
                        help='every task of the run in order (the script\'s TASK_LIST), to list the pending ones; '
                             'default: the tasks found, in the order of their checkpoints\' task tables')
    parser.add_argument('--exact', action='store_true',
                        help='count the shares in the picked checkpoints (loads them on the CPU) instead of the logs')
    # Output
    parser.add_argument('--json', action='store_true',
                        help='print the status as JSON (one object per line with --watch)')
    parser.add_argument('--watch', type=float, default=None, metavar='SECONDS',
                        help='print it again every SECONDS until Ctrl-C')
    parser.add_argument('--png', default=None, help='also draw the run into this PNG file (implies --exact)')
    return parser


# ---------------------------------------------------------------- reading what the run wrote
def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_jsonl(path):
    """The JSON lines of an append-only log; a torn last line (being written) is skipped."""
    lines = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return [e for e in lines if isinstance(e, dict)]


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


def read_train_log(path):
    """(args of the task process's last start, time of the log's first line) from its train.log:
    each start logs `args: {json}` (utils/logger.py log_run_header)."""
    args, started = {}, None
    try:
        with open(path, errors='replace') as f:
            for number, line in enumerate(f):
                if number == 0:
                    try:   # '2026-01-31 20:41:15,123 - CPG - INFO - ...', local time
                        started = time.mktime(time.strptime(line[:19], '%Y-%m-%d %H:%M:%S'))
                    except ValueError:
                        pass
                at = line.find(' - args: ')
                if at >= 0:
                    try:
                        args = json.loads(line[at + len(' - args: '):])
                    except ValueError:
                        pass
    except OSError:
        pass
    return args, started


def lock_holders(lock_paths):
    """{lock file: pids of the processes that have it open}, from the /proc/*/fd links as
    tools/stages.sh lock_holders finds them. The flock itself is never tried: taking it, even for
    a moment, would refuse a run that starts then."""
    wanted = {os.path.realpath(p): p for p in lock_paths if os.path.isfile(p)}
    held = {p: [] for p in wanted.values()}
    for pid in os.listdir('/proc') if wanted else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f'/proc/{pid}/fd')
        except OSError:   # gone, or another user's
            continue
        for fd in fds:
            try:
                target = os.readlink(f'/proc/{pid}/fd/{fd}')
            except OSError:
                continue
            if target in wanted and int(pid) not in held[wanted[target]]:
                held[wanted[target]].append(int(pid))
    return held


def goal_of(args, task):
    """The task's goal from the goal file its args name (relative paths: from where the script ran,
    the repository), or None."""
    path = args.get('baseline_acc_file')
    for candidate in ([path, os.path.join(REPO, path)] if path else []):
        goals = read_json(candidate)
        if isinstance(goals, dict) and task in goals:
            try:
                return float(goals[task])
            except (TypeError, ValueError):
                return None
    return None


# ---------------------------------------------------------------- one task
def stage_list(args, task_dir=None):
    """[(folder, kind, ratio)] in the order the task process runs them (utils/sequence.py): its
    args' ratios, and those of the pruning folders a run with other ratios left in task_dir."""
    if args.get('mode', 'task') != 'task' or task_dir and os.path.isfile(os.path.join(task_dir, 'log.jsonl')):
        return [('.', 'finetune', None)]   # a single stage in the task's folder (a baseline run)
    ratios = list(args.get('pruning_ratios') or [])
    prune_dir = os.path.join(task_dir or '', 'gradual_prune')
    for name in sorted(os.listdir(prune_dir)) if task_dir and os.path.isdir(prune_dir) else []:
        if name not in ratios and os.path.isdir(os.path.join(prune_dir, name)):
            ratios.append(name)
    ratios.sort(key=float)
    return ([('scratch', 'finetune', None)] + [(f'gradual_prune/{r}', 'prune', r) for r in ratios]
            + [('retrain', 'retrain', None)])


def stage_epochs(kind, args):
    """Epochs of one stage of this kind by the task's args."""
    phase_a = args.get('epochs') or 0
    if kind == 'prune':
        return phase_a if args.get('prune_epochs') is None else args['prune_epochs']
    return phase_a if kind == 'finetune' else args.get('retrain_epochs') or 0


def read_stage(task_dir, folder, kind, ratio, args):
    path = os.path.join(task_dir, folder)
    if not os.path.isdir(path):
        return None
    lines = read_jsonl(os.path.join(path, 'log.jsonl'))
    result = read_json(os.path.join(path, 'result.json'))
    run = lines[-1].get('run') if lines else None
    current = [e for e in lines if e.get('run') == run]   # Phase A retried wider: the newest attempt
    # finished: its result belongs to the newest attempt (a widened retry logs under a new run id)
    finished = isinstance(result, dict) and (not lines or result.get('run') == run)
    epochs = (result or {}).get('signature', {}).get('epochs') if finished else stage_epochs(kind, args)
    activity = [t for t in (mtime(os.path.join(path, n)) for n in ('log.jsonl', 'result.json', 'resume.pth.tar'))
                if t]
    return {'folder': folder, 'kind': kind, 'ratio': ratio, 'finished': finished,
            'status': result.get('status') if finished else None,
            'accuracy': (result or {}).get('accuracy') if finished else (current[-1]['val'].get('accuracy')
                                                                         if current else None),
            'epochs_done': 1 + max(e.get('epoch', -1) for e in current) if current else 0,
            'epochs': epochs, 'resume_state': os.path.isfile(os.path.join(path, 'resume.pth.tar')),
            'last_epoch_time': current[-1].get('time') if current else None,
            'active': max(activity) if activity else mtime(path),
            '_lines': lines, '_result': result}


def shares_of(line):
    """Fractions of the network at the task's width from one log.jsonl line (utils/stats.py)."""
    if not line:
        return None
    total = line.get('total')
    if total:
        owned, earlier, picked, free = (line.get(k, 0) / total for k in ('owned', 'earlier', 'picked', 'free'))
    else:
        owned, free = line.get('owned_fraction', 0.0), line.get('free_fraction', 0.0)
        earlier = max(0.0, 1.0 - owned - free)
        picked = line.get('picked_fraction', 0.0) * earlier
    return {'owned': owned, 'picked': picked, 'earlier': earlier, 'free': free, 'weights': total,
            'from': 'log'}


def picked_line(stage):
    """The log line of the epoch a stage kept: result.json's epoch if it names one, else its last."""
    result = stage['_result'] or {}
    lines = [e for e in stage['_lines'] if e.get('run') == result.get('run')] or stage['_lines']
    chosen = [e for e in lines if e.get('epoch') == result.get('epoch')]
    return (chosen or lines or [None])[-1]


def read_task(root, name, index, holders):
    task_dir = os.path.join(root, name)
    task = {'index': index, 'name': name, 'state': 'pending', 'width': None, 'max_width': None,
            'ratio': None, 'picked_by': None, 'accuracy': None, 'goal': None, 'goal_margin': 0.0,
            'shares': None, 'stage': None, 'record': None, 'exit_status': None, 'started': None,
            'ended': None, 'pids': [], '_args': {}, '_stages': []}
    if not os.path.isdir(task_dir) or not any(os.path.exists(os.path.join(task_dir, m)) for m in TASK_MARKERS):
        return task
    args, task['started'] = read_train_log(os.path.join(task_dir, 'train.log'))
    task['_args'] = args
    stages = [s for s in (read_stage(task_dir, *spec, args) for spec in stage_list(args, task_dir)) if s]
    task['_stages'] = stages
    single = [s['folder'] for s in stages] == ['.']
    choice = read_json(os.path.join(task_dir, 'gradual_prune', 'chosen.json')) or {}
    meta = read_json(os.path.join(task_dir, 'checkpoint.pth.tar.json' if single else PICKED + '.json')) or {}
    own = next((e for e in meta.get('tasks', []) if e.get('name') == name), {})
    exit_status = read_text(os.path.join(task_dir, 'exit_status'))
    task['exit_status'] = int(exit_status) if exit_status and exit_status.lstrip('-').isdigit() else None
    task['record'] = read_json(os.path.join(task_dir, 'gradual_prune', 'record.txt'))
    task['max_width'] = args.get('max_allowed_network_width_multiplier')
    task['goal_margin'] = args.get('goal_margin') or 0.0
    task['goal'] = choice.get('goal') if choice.get('goal') is not None else goal_of(args, name)
    # experiment 3's age folds also lock their own task folder
    task['pids'] = sorted(set(holders.get(os.path.join(root, '.lock'), []) +
                              holders.get(os.path.join(task_dir, '.lock'), [])))
    width = read_text(os.path.join(task_dir, 'width'))
    task['width'] = own.get('multiplier', choice.get('network_width_multiplier', float(width) if width else None))

    # the bash loop removes exit_status before it starts the task's process, which writes it when it ends
    if os.path.isfile(os.path.join(task_dir, 'DONE')) or (task['exit_status'] == 0 and (choice or single)):
        task['state'] = 'done'
    elif task['exit_status'] == 0:
        task['state'] = 'waiting'
    elif task['exit_status'] is not None:
        task['state'] = 'failed'
    else:
        task['state'] = 'running' if task['pids'] else 'stopped'
    ended = [mtime(os.path.join(task_dir, n)) for n in ('DONE', 'exit_status')] + [s['active'] for s in stages]
    task['ended'] = max([t for t in ended if t] or [None]) if task['state'] != 'running' else None

    if task['state'] == 'done':
        task['ratio'], task['picked_by'] = choice.get('chosen_pruning_ratio'), choice.get('picked_by')
        task['accuracy'] = own.get('accuracy', choice.get('accuracy'))
        kept = (read_json(os.path.join(task_dir, 'retrain', 'promoted.json')) or {}).get('retrained_model_kept')
        source = '.' if single else 'retrain' if kept else os.path.dirname(choice.get('source', 'scratch/x'))
        picked = next((s for s in stages if s['folder'] == source), None)
        task['shares'] = shares_of(picked_line(picked)) if picked else None
    elif stages:
        current = max(stages, key=lambda s: s['active'] or 0)
        task['stage'] = {k: v for k, v in current.items() if not k.startswith('_')}
        task['stage']['name'] = stage_label(current, task['width'])
        task['accuracy'] = current['accuracy']
        task['shares'] = shares_of(current['_lines'][-1] if current['_lines'] else None)
    return task


def stage_label(stage, width):
    if stage['folder'] == '.':
        return f'training at width {width}'
    if stage['kind'] == 'finetune':
        return f'Phase A at width {width}'
    return f'pruning to {stage["ratio"]}' if stage['kind'] == 'prune' else 'retrain'


# ---------------------------------------------------------------- the run
def find_tasks(root):
    return [d for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))
            and any(os.path.exists(os.path.join(root, d, m)) for m in TASK_MARKERS)]


def task_order(root, found, listed):
    """--tasks first; else the longest task table among the checkpoints' sidecars, then the rest
    by start time (experiment 3's age folds branch from one prefix)."""
    if listed:
        return list(dict.fromkeys(listed)) + [t for t in found if t not in listed]
    longest = []
    for name in found:
        for folder in ('gradual_prune', 'scratch'):
            meta = read_json(os.path.join(root, name, folder, 'checkpoint.pth.tar.json')) or {}
            names = [e.get('name') for e in meta.get('tasks', [])]
            longest = names if len(names) > len(longest) else longest
    ordered = [t for t in longest if t in found]
    start = {t: read_train_log(os.path.join(root, t, 'train.log'))[1] or mtime(os.path.join(root, t)) or 0
             for t in found}
    return ordered + sorted((t for t in found if t not in ordered), key=lambda t: start[t])


def runs_below(root, depth=6, most=3):
    """Run roots (folders with a .lock) at most `depth` levels below root (the repository's
    checkpoints/CPG/experiment1/<setting>/<arch> is 5); a data folder given by mistake is not
    walked through (a folder of over 100 folders: classes, not runs)."""
    runs = []
    for folder, subdirs, files in os.walk(root):
        level = 0 if folder == root else os.path.relpath(folder, root).count(os.sep) + 1
        if '.lock' in files and folder != root:
            runs.append(os.path.relpath(folder, root))
        if level >= depth or len(runs) >= most or len(subdirs) > 100:
            subdirs.clear()
    return runs[:most]


def run_status(root, listed=None):
    """The whole status as a dict (what --json prints)."""
    root = os.path.abspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise CPGError(f'{root} is a file, not a run folder; give a method\'s checkpoint root')
    # a run creates its root when it starts: before that, the status of a run not started yet
    found = find_tasks(root) if os.path.isdir(root) else []
    status = {'root': root, 'exists': os.path.isdir(root), 'time': time.time(), 'state': 'empty', 'pids': [],
              'tasks': [], 'elapsed_s': None, 'remaining_s': None, 'estimate': None}
    if not found and status['exists'] and not os.path.isfile(os.path.join(root, '.lock')):
        entries = [e for e in os.listdir(root) if not e.startswith('.')]
        if entries:
            runs = runs_below(root)
            raise CPGError(f'{root} is not a run folder: no <task>/train.log, width or stage folders, no .lock'
                           + (f'; runs below it: {", ".join(runs)}' if runs else
                              "; give a method's checkpoint root, e.g. "
                              'checkpoints/CPG/experiment1/scratch_mul_1.5/custom_vgg_cifar100'))
    order = task_order(root, found, listed)
    holders = lock_holders([os.path.join(root, '.lock')] + [os.path.join(root, t, '.lock') for t in found])
    status['pids'] = sorted({p for pids in holders.values() for p in pids})
    status['tasks'] = tasks = [read_task(root, name, i + 1, holders) for i, name in enumerate(order)]
    pattern = next((t['_args'] for t in reversed(tasks) if t['_args']), {})
    for task in tasks:   # a pending task's goal: from the goal file the run's tasks read
        if task['state'] == 'pending':
            task['goal'] = goal_of(pattern, task['name'])
    states = [t['state'] for t in tasks]
    # a live holder of the lock is a running run, also between two tasks (the next one is loading)
    for state in ('running', 'failed', 'stopped', 'waiting'):
        if state in states or state == 'running' and status['pids']:
            status['state'] = state
            break
    else:
        status['state'] = 'finished' if states and all(s == 'done' for s in states) else (
            'idle' if 'done' in states else 'empty')
    started = [t['started'] for t in tasks if t['started']]
    if started:
        end = status['time'] if status['state'] == 'running' else max(t['ended'] or 0 for t in tasks)
        status['elapsed_s'] = max(0.0, end - min(started))
    status['estimate'] = estimate(tasks)
    status['remaining_s'] = status['estimate'].get('seconds')
    return status


def epochs_left(task, args):
    """{kind: epochs} the task still has to run by its args (the pending ones: a later task's args)."""
    by_folder = {s['folder']: s for s in task['_stages']}
    left = {'finetune': 0, 'prune': 0, 'retrain': 0}
    retrain = args.get('learn_pick', True) and task['index'] >= 2 and args.get('pick') != 'hand'
    pruning_stopped = owns_nothing = False
    for folder, kind, _ in stage_list(args):
        stage, total = by_folder.get(folder), stage_epochs(kind, args)
        if kind == 'retrain' and (not retrain or owns_nothing) or kind == 'prune' and pruning_stopped:
            continue
        if stage and stage['finished']:
            # exit 6 ends the pruning stages; exit 5 (owns nothing): no pruning, no retrain; exit 2: retried wider
            owns_nothing |= kind == 'finetune' and stage['status'] == 5
            pruning_stopped |= stage['status'] in (5, 6)
            left[kind] += total if stage['status'] == 2 else 0
        else:
            left[kind] += max(0, total - (stage['epochs_done'] if stage else 0))
    return left


def estimate(tasks):
    """Remaining time: the epochs left (by each task's args) times the median epoch time this run
    measured per kind of stage. Medians, because a gap across a kill and resume is one long epoch."""
    durations = {'finetune': [], 'prune': [], 'retrain': []}
    for task in tasks:
        for stage in task['_stages']:
            previous = None
            for line in stage['_lines']:
                same_run = previous is not None and line.get('run') == previous.get('run')
                if same_run and line.get('epoch') == previous.get('epoch', -2) + 1 and stage['kind'] in durations:
                    durations[stage['kind']].append(line['time'] - previous['time'])
                previous = line
    pattern = next((t['_args'] for t in reversed(tasks) if t['_args']), None)
    left = {'finetune': 0, 'prune': 0, 'retrain': 0}
    counted = 0
    for task in tasks:
        if task['state'] in ('done', 'waiting', 'failed') or not (task['_args'] or pattern):
            continue
        counted += 1
        for kind, epochs in epochs_left(task, task['_args'] or pattern).items():
            left[kind] += epochs
    everything = [d for ds in durations.values() for d in ds]
    median = {k: statistics.median(ds or everything) for k, ds in durations.items() if ds or everything}
    out = {'epochs_left': left, 'tasks': counted, 'epoch_seconds': median,
           'measured_epochs': {k: len(ds) for k, ds in durations.items()}}
    if not any(left.values()):
        out['seconds'] = 0.0 if counted == 0 else None
    elif everything:
        out['seconds'] = sum(left[k] * median[k] for k in left)
    else:
        out['seconds'] = None
    return out


# ---------------------------------------------------------------- text
def duration(seconds):
    if seconds is None:
        return '-'
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    text = str(datetime.timedelta(seconds=rest))
    return f'{days}d {text}' if days else text


def percent(value):
    return '-' if value is None else f'{100 * value:.1f}%'


def stage_text(task):
    stage = task['stage']
    if task['state'] not in ('running', 'stopped') or stage is None:
        return f'exit status {task["exit_status"]} (see train.log)' if task['state'] == 'failed' else ''
    if stage['finished']:
        return f'after {stage["name"]} (status {stage["status"]}), before the next step'
    text = f'{stage["name"]}: {stage["epochs_done"]}/{stage["epochs"]} epochs'
    if task['state'] == 'stopped':
        text += ', resume state kept' if stage['resume_state'] else ', no resume state: restarts the stage'
    return text


def format_text(status):
    root, tasks = status['root'], status['tasks']
    done = sum(t['state'] == 'done' for t in tasks)
    if status['state'] == 'empty':
        return [f'{root}: no run has started here yet' + ('' if status['exists'] else ' (no such folder)')
                + (f'; {len(tasks)} tasks pending' if tasks else '')]
    pids = ' '.join(map(str, status['pids']))
    held = (f'process{"es" if len(status["pids"]) > 1 else ""} {pids} hold{"" if len(status["pids"]) > 1 else "s"} '
            'its lock' if pids else 'no process holds its lock')
    lines = [f'{root}: {status["state"]}, {done}/{len(tasks)} tasks done ({held})',
             f'{"#":>3}  {"task":<{max(4, *(len(t["name"]) for t in tasks))}}  {"state":<8} {"width":>5} {"ratio":>5} '
             f'{"acc":>7} {"goal":>7} {"owned":>6} {"picked":>6} {"earlier":>7} {"free":>6}  stage']
    for t in tasks:
        shares = t['shares'] or {}
        acc = '-' if t['accuracy'] is None else f'{100 * t["accuracy"]:.2f}'
        goal = '-' if t['goal'] is None else f'{100 * t["goal"]:.2f}'
        picked = percent(shares.get('picked') if shares.get('earlier') else None)   # task 1: nothing to pick
        lines.append(f'{t["index"]:>3}  {t["name"]:<{max(4, *(len(x["name"]) for x in tasks))}}  {t["state"]:<8} '
                     f'{"-" if t["width"] is None else t["width"]:>5} {"-" if t["ratio"] is None else t["ratio"]:>5} '
                     f'{acc:>7} {goal:>7} {percent(shares.get("owned")):>6} {picked:>6} '
                     f'{percent(shares.get("earlier")):>7} {percent(shares.get("free")):>6}  {stage_text(t)}'.rstrip())
    sources = {(t['shares'] or {}).get('from') for t in tasks} - {None}
    lines.append('acc, goal: % (the picked model; a running task: its last epoch). Shares of the network at the '
                 "task's width: owned + earlier tasks' (picked: those it uses) + free = 100%, "
                 + ('counted in the picked checkpoints' if sources == {'checkpoint'} else
                    "from the picked epoch's log line"))
    if status['state'] == 'running' and 'running' not in [t['state'] for t in tasks]:
        following = next((t['name'] for t in tasks if t['state'] == 'pending'), None)
        lines.append('running: between two tasks' + (f' (the next: {following})' if following else ''))
    for t in tasks:
        stage = t['stage']
        if t['state'] == 'running' and stage and stage['last_epoch_time']:
            lines.append(f'running: {t["name"]}, {stage_text(t)}; last epoch logged '
                         f'{duration(status["time"] - stage["last_epoch_time"])} ago')
        elif t['state'] == 'stopped':
            lines.append(f'stopped: {t["name"]}, {stage_text(t)}; rerun the same command (same settings) to resume')
        elif t['state'] == 'waiting':
            lines.append(f'waiting: {t["name"]} is learned; pick its pruning ratio: python tools/pick_pruning_ratio.py '
                         f'--task_folder {os.path.join(root, t["name"])}')
    until = 'now' if status['state'] == 'running' else 'its last write'
    lines.append(f'elapsed: {duration(status["elapsed_s"])} (wall clock, from the first task\'s start to {until})')
    lines.append('remaining: ' + estimate_text(status['estimate']))
    return lines


def estimate_text(est):
    left = est['epochs_left']
    if est['tasks'] == 0:
        return 'nothing (no task left to learn)'
    if est['seconds'] is None:
        return (f'no estimate yet: {sum(left.values())} epochs left, but no epoch time measured '
                f'(needs two consecutive epochs of one stage)')
    kinds = ', '.join(f'{STAGE_NAMES[k]} {left[k]} x {est["epoch_seconds"][k]:.3g} s'
                      + ('' if est['measured_epochs'][k] else ' (not measured: median of all)')
                      for k in left if left[k])
    return (f'~{duration(est["seconds"])}, an estimate: {sum(left.values())} epochs left in {est["tasks"]} '
            f'task{"s" if est["tasks"] != 1 else ""} by '
            f'their settings x the median epoch time this run measured per kind of stage ({kinds}); '
            f'a Phase A retried wider adds to it, an early stop (plateau, pruning stop) takes from it')


# ---------------------------------------------------------------- entry point
def public(status):
    """The status without the reader's own fields (those starting with _)."""
    return dict(status, tasks=[{k: v for k, v in t.items() if not k.startswith('_')} for t in status['tasks']])


def show(args):
    status = run_status(args.root, args.tasks)
    if args.exact or args.png:   # these load checkpoints (torch) and draw: their own module
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from status_picture import draw_png, exact_shares
        exact_shares(status['root'], status['tasks'])
    if args.png:
        if not any(t['state'] != 'pending' for t in status['tasks']):
            raise CPGError(f'{status["root"]}: no task has started yet, nothing to draw')
        draw_png(status, args.png)
    if args.json:
        print(json.dumps(public(status), indent=None if args.watch else 2, default=str), flush=True)
    else:
        print('\n'.join(format_text(status)) + (f'\npicture: {args.png}' if args.png else ''), flush=True)


def main(args):
    if args.watch is not None and args.watch <= 0:
        raise CPGError(f'--watch {args.watch}: give the seconds between refreshes, > 0')
    if args.watch is None:
        show(args)
        return 0
    clear = sys.stdout.isatty() and not args.json
    try:
        while True:
            if clear:
                sys.stdout.write('\033[H\033[2J')
            show(args)
            time.sleep(args.watch)
    except KeyboardInterrupt:   # Ctrl-C is how --watch ends: no traceback, exit 0
        return 0


def run(args):
    """main, quiet when the reader stops reading (`| head`)."""
    try:
        return main(args)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, 'w')   # the interpreter's final flush would raise again
        return 0


if __name__ == '__main__':
    run_tool(run, get_args_parser())
