"""The methods' comparison tables (spec §11) from the results files their inference runs write.

Usage: python tools/benchmark_table.py logs/*_results.json [--paper] [--png logs/benchmark.png]

Each RESULTS.json is either one run_inference result (experiments 1 and 2, or one experiment-3
fold: utils/inference.py) or experiment 3's combination of the age folds (tools/face_results.py).
Prints one Markdown table per experiment: a row per method, a column per task (accuracy %), the
mean over the task columns shown, and the model size of the file read and of the compact export.
--paper puts the published rows beside the measured ones (for experiment 2 also the model sizes
tools/model_sizes.py computes for this repository's models at the paper's settings, beside the
paper's size column); --png draws the accuracies and, for CPG and PAE, which share of the final
model each task owns, picks from earlier tasks, or leaves free.
"""
import importlib.util
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.atomic import save_figure  # noqa: E402
from utils.cifar100_config import CIFAR100_TASKS  # noqa: E402
from utils.cli import ArgumentParser, run_tool  # noqa: E402
from utils.errors import CPGError  # noqa: E402

DASH = '–'
TITLES = {1: 'CIFAR-100, 20 tasks, VGG16-BN', 2: 'fine-grained tasks, ResNet-50',
          3: 'facial tasks, SphereNet20 (CNN20)'}
OWNERSHIP_METHODS = ('cpg', 'pae')  # method families whose picture shows ownership panels


@dataclass
class Result:
    """One table row: a measured results file, normalized, or a paper row."""
    method: str
    experiment: int
    tasks: list                 # task names in the file's order
    accuracy: dict              # task -> (accuracy %, std % or None)
    file_mb: object             # MB (float), text for paper rows ("×1.5 VGG16"), or None
    compact_mb: object = None   # MB of the compact export, or None
    ownership: list = None      # [(task, owned, picked, free)], run_inference's fractions, or None
    paper: bool = False
    notes: list = field(default_factory=list)

    @property
    def label(self):
        return f'{self.method} (paper)' if self.paper else self.method


def family(method):
    """The paper's method a row belongs to ('cpg' for "CPG avg"), or None: orders rows for --paper."""
    key = re.sub(r'[^a-z0-9]', '', method.lower())
    if key.startswith(('scratch', 'trainfromscratch', 'individual', 'baseline')):
        return 'scratch'
    if key.startswith('fine'):
        return 'finetune'
    for name in ('progressive', 'packnet', 'pae', 'piggyback', 'cpg'):
        if key.startswith(name):
            return name
    return None


# ---------------------------------------------------------------- reading the results files

def read_results(path, method=None, experiment=None):
    """A results file of either shape -> Result; CPGError naming the file when it cannot be used."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise CPGError(f'cannot read {path}: {exc.strerror or exc}') from None
    except ValueError as exc:
        raise CPGError(f'{path} is not valid JSON ({exc})') from None
    if not isinstance(data, dict) or not isinstance(data.get('tasks'), list) or not data['tasks']:
        raise CPGError(f'{path} lists no tasks (no "tasks" rows): is it an inference results file?')
    combined = isinstance(data.get('checkpoint_mb'), list) or 'age_folds' in data
    return (from_face_combined if combined else from_inference)(path, data, method, experiment)


def from_inference(path, data, method, experiment):
    """run_inference's shape: experiments 1 and 2, or one experiment-3 fold."""
    name, exp = _method_and_experiment(path, data, method, experiment)
    rows = _task_rows(path, data)
    return Result(name, exp, [r['task'] for r in rows], {r['task']: _accuracy(path, r) for r in rows},
                  _megabytes(path, data, 'checkpoint_mb'), _megabytes(path, data, 'compact_mb'),
                  _ownership(rows))


def from_face_combined(path, data, method, experiment):
    """tools/face_results.py's shape: verification mean ± std, the age task as the mean over folds.

    Each fold's file is one whole model (the folds share tasks 1-3), so the size is their mean.
    Ownership comes from the first fold's model: its rows of the shared tasks and its age task.
    """
    result = from_inference(path, data, method, experiment)   # sizes: lists -> their mean
    folds = data.get('age_folds')
    if isinstance(folds, dict) and folds and all(isinstance(v, dict) for v in folds.values()):
        first = next(iter(folds))
        result.ownership = _ownership(data['tasks'][:-1] + [dict(folds[first], task=first)])
        accs = ', '.join(f'{k} {100 * v.get("accuracy", math.nan):.2f}' for k, v in folds.items())
        result.notes.append(f'{result.method}: {result.tasks[-1]} = mean of {len(folds)} folds ({accs}); '
                            f'model size = mean of the {len(folds)} fold files')
    if data.get('shared_tasks_agree') is False:
        result.notes.append(f'{result.method}: WARNING the shared tasks differ between the folds ({path})')
    return result


def _method_and_experiment(path, data, method, experiment):
    name = data.get('method') or method
    if not name:
        raise CPGError(f'{path} has no "method" field (an older results file?): pass --method NAME')
    exp = data.get('experiment') if data.get('experiment') is not None else experiment
    if exp is None:
        raise CPGError(f'{path} has no "experiment" field (an older results file?): pass --experiment N')
    try:
        return str(name), int(exp)
    except (TypeError, ValueError):
        raise CPGError(f'{path}: "experiment" is {exp!r}, not an experiment number') from None


def _task_rows(path, data):
    rows = data['tasks']
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get('task'), str):
            raise CPGError(f'{path}: task row {i + 1} has no "task" name')
        if [r['task'] for r in rows[:i]].count(row['task']):
            raise CPGError(f'{path}: task {row["task"]!r} is listed twice')
    return rows


def _accuracy(path, row):
    """(accuracy %, std % or None); the files hold fractions in [0, 1]."""
    acc, std = row.get('accuracy'), row.get('accuracy_std')
    if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not 0 <= acc <= 1:
        raise CPGError(f'{path}: task {row["task"]!r} has accuracy {acc!r}, not a fraction in [0, 1]')
    return 100 * acc, (100 * std if isinstance(std, (int, float)) else None)


def _megabytes(path, data, key):
    """A size in MB; a list (one per experiment-3 fold) gives its mean; None when absent."""
    value = data.get(key)
    values = [v for v in (value if isinstance(value, list) else [value]) if v is not None]
    if values and not all(isinstance(v, (int, float)) for v in values):
        raise CPGError(f'{path}: "{key}" is {value!r}, not megabytes')
    return sum(values) / len(values) if values else None


def _ownership(rows):
    """[(task, owned, picked, free)] when every row has run_inference's ownership fields."""
    keys = ('owned_fraction', 'picked_fraction')
    if not rows or not all(isinstance(r.get(k), (int, float)) for r in rows for k in keys):
        return None
    return [(r['task'], r['owned_fraction'], r['picked_fraction'], r.get('free_fraction')) for r in rows]


def ownership_shares(ownership):
    """Per task, shares of the final model's weights: owned, picked, earlier-not-picked, later, free.

    run_inference's picked_fraction is relative to the earlier tasks' weights; those all lie in
    the task's (nested, leading) block and never change owner, so they are the sum of the earlier
    tasks' owned fractions. None when the rows do not cover the model (owned + free != 1).
    """
    owned = [o for _, o, _, _ in ownership]
    free = ownership[-1][3] if ownership[-1][3] is not None else max(0.0, 1 - sum(owned))
    if abs(sum(owned) + free - 1) > 1e-3:
        return None
    shares = []
    for k, (task, own, picked, _) in enumerate(ownership):
        earlier, later = sum(owned[:k]), sum(owned[k + 1:])
        shares.append((task, own, picked * earlier, earlier - picked * earlier, later, free))
    return shares


# ---------------------------------------------------------------- the paper's rows (spec §11)

def _values(text):
    return [None if v == '-' else float(v) for v in text.split()]


# experiment -> task names, size unit, rows (label, family, size ×unit or MB, free share, accuracies %, stds %)
PAPER = {
    1: {'tasks': CIFAR100_TASKS, 'unit': 'VGG16', 'rows': [   # the slides' method comparison
        ('Scratch', 'scratch', 20, 0,
         '65.8 78.4 76.6 82.4 82.2 84.6 78.6 84.8 83.4 89.4 87.8 80.2 84.4 80.2 52.0 69.4 66.4 70.0 87.2 91.2'),
        ('fine-Avg', 'finetune', 20, 0,
         '65.2 76.1 76.1 77.8 85.4 82.5 79.4 82.4 82.0 87.4 87.4 81.5 84.6 80.8 52.0 72.1 68.1 71.9 88.1 91.5'),
        ('fine-Max', 'finetune', 20, 0,
         '65.8 76.8 78.6 80.0 86.2 84.8 80.4 84.0 83.8 88.4 89.4 83.8 87.2 82.8 53.6 74.6 68.8 74.4 89.2 92.2'),
        ('PackNet', 'packnet', 1, 0,
         '66.4 80.0 76.2 78.4 80.0 79.8 67.8 61.4 68.8 77.2 79.0 59.4 66.4 57.2 36.0 54.2 51.6 58.8 67.8 83.2'),
        ('PAE', 'pae', 2, 0,
         '67.2 77.0 78.6 76.0 84.4 81.2 77.6 80.0 80.4 87.8 85.4 77.8 79.4 79.6 51.2 68.4 68.6 68.6 83.2 88.8'),
        ('CPG avg', 'cpg', 1.5, 0.41,
         '65.2 76.6 79.8 81.4 86.6 84.8 83.4 85.0 87.2 89.2 90.8 82.4 85.6 85.2 53.2 74.4 70.0 73.4 88.8 94.8'),
        ('CPG max', 'cpg', 1.5, 0,
         '67.0 79.2 77.2 82.0 86.8 87.2 82.0 85.6 86.4 89.6 90.0 84.0 87.2 84.8 55.4 73.8 72.0 71.6 89.6 92.8'),
        ('CPG top', 'cpg', 1.5, 0,
         '66.6 77.2 78.6 83.2 88.2 85.8 82.4 85.4 87.6 90.8 91.0 84.6 89.2 83.0 56.2 75.4 71.0 73.8 90.6 93.6')],
        'notes': ['paper: the slides\' method comparison; CPG avg / max / top = CPG with the fine-Avg / '
                  'fine-Max / above-both goals; size = ×N one VGG16, "free" = redundant capacity left']},
    2: {'tasks': ['imagenet', 'cubs_cropped', 'stanford_cars_cropped', 'flowers', 'wikiart', 'sketches'], 'rows': [
        ('Train from scratch', 'scratch', '554', 0, '76.16 40.96 61.56 59.73 56.50 75.40'),
        ('Finetune', 'finetune', '551 / 554', 0, '- 82.83 91.83 96.56 75.60 80.78'),
        ('ProgressiveNet', 'progressive', '563', 0, '76.16 78.94 89.21 93.41 74.94 76.35'),
        ('PackNet', 'packnet', '115', 0, '75.71 80.41 86.11 93.04 69.40 76.17'),
        ('Piggyback', 'piggyback', '121', 0, '76.16 84.59 89.62 94.77 71.33 79.91'),
        ('CPG', 'cpg', '121', 0, '75.81 83.59 92.80 96.62 77.15 80.33')],
        'notes': ['paper: Finetune\'s size is 551 MB in the README, 554 in the slides; Piggyback\'s '
                  'CUBS is 84.59 in the README (shown), 81.59 in the slides']},
    3: {'tasks': ['face_verification', 'gender', 'emotion', 'age'], 'unit': 'CNN20', 'rows': [
        # face: mean ± std over the 10 LFW folds; age: the mean over the 5 age folds
        ('Train from scratch', 'scratch', 4, 0, '99.417 83.70 57.64 46.14', '0.367 - - -'),
        ('Finetune', 'finetune', 4, 0, '- 90.80 62.54 57.27'),
        ('CPG', 'cpg', 1, 0.003, '99.300 89.66 63.57 57.66', '0.348 - - -')],
        'notes': ['paper: CPG\'s face std is ± 0.348 in the README (shown), ± 0.384 in the slides; '
                  'size = ×N one CNN20, "free" = redundant capacity left']},
}


def paper_rows(experiment, columns):
    """The paper's rows on the measured task columns, matched by name when every column is one of
    the paper's tasks (real runs), by position otherwise (toy data); and the notes to print."""
    paper = PAPER.get(experiment)
    if paper is None:
        return [], []
    names = paper['tasks']
    notes = list(paper['notes'])
    if all(c in names for c in columns):
        index = {c: names.index(c) for c in columns}
    else:
        index = {c: i for i, c in enumerate(columns) if i < len(names)}
        notes.append('paper values are matched to the measured task columns by position: the measured '
                     'task names are not the paper\'s (toy data?)')
    rows = []
    for label, fam, size, free, accs, *stds in paper['rows']:
        accs = _values(accs)
        stds = _values(stds[0]) if stds else [None] * len(accs)
        accuracy = {c: (accs[i], stds[i]) for c, i in index.items() if accs[i] is not None}
        if 'unit' in paper:   # the slides give the size as multiples of one network
            size = f'×{size:g} {paper["unit"]}' + (f', {free:g} free' if free else '')
        rows.append((fam, Result(label, experiment, list(names), accuracy, size, paper=True)))
    return rows, notes


def order_with_paper(measured, papers):
    """Rows in the paper's method order, each measured row followed by the paper's rows of its
    method; measured methods the paper lacks last, in the order given."""
    families = list(dict.fromkeys(fam for fam, _ in papers))
    ordered = []
    for fam in families:
        ordered += [r for r in measured if family(r.method) == fam]
        ordered += [r for f, r in papers if f == fam]
    return ordered + [r for r in measured if family(r.method) not in families]


# ---------------------------------------------------------------- the Markdown table

def task_columns(results):  # the union of the rows' tasks, in first-seen order
    return list(dict.fromkeys(t for r in results for t in r.tasks))


def row_average(result, columns):
    values = [result.accuracy[c][0] for c in columns if c in result.accuracy]
    return sum(values) / len(values) if values else None


def _cell(value):
    return DASH if value is None else value if isinstance(value, str) else f'{value:.2f}'


def format_table(rows, columns):
    """Markdown lines: Method | tasks... | Avg. | Model size (MB): file | compact."""
    head = ['Method', *columns, 'Avg.', 'Model size (MB): file', 'Model size (MB): compact']
    lines = ['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]
    for r in rows:
        cells = [r.label]
        for c in columns:
            acc, std = r.accuracy.get(c, (None, None))
            cells.append(DASH if acc is None else f'{acc:.2f}' + ('' if std is None else f' ± {std:.2f}'))
        cells += [_cell(row_average(r, columns)), _cell(r.file_mb), _cell(r.compact_mb)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def build_tables(results, paper=False):
    """{experiment: (rows, columns, notes)} in experiment order; columns come from measured rows."""
    tables = {}
    for exp in sorted({r.experiment for r in results}):
        measured = [r for r in results if r.experiment == exp]
        columns = task_columns(measured)
        notes = [n for r in measured for n in r.notes]
        rows = measured
        if paper:
            papers, paper_notes = paper_rows(exp, columns)
            rows = order_with_paper(measured, papers)
            notes += paper_notes
            if exp == COMPUTED_SIZES_EXPERIMENT:
                notes += computed_size_notes()
        tables[exp] = (rows, columns, notes)
    return tables


COMPUTED_SIZES_EXPERIMENT = 2   # tools/model_sizes.py covers experiment 2's ResNet-50 methods


def load_model_sizes():
    """tools/model_sizes.py as a module (tools/ is not a package); it imports torch, so only --paper
    on an experiment-2 table pays for it."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'model_sizes.py')
    spec = importlib.util.spec_from_file_location('model_sizes', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def computed_size_notes():
    """The paper's size column beside this repository's models' sizes at the paper's settings
    (one note), and the reason of every size more than 10 % off (one note each)."""
    sizes = load_model_sizes().compute_sizes()
    listed = ', '.join(f'{r["method"]} {r["computed_mb"]:.1f} MB (paper {r["paper_mb"]})' for r in sizes)
    notes = [f'model size of this repository\'s models at the paper\'s settings (tools/model_sizes.py, '
             f'MB = 2^20 bytes of the exported tensors): {listed}']
    notes += [f'{r["method"]}\'s computed size is {r["ratio"]:.2f}x the paper\'s: {r["reason"]}'
              for r in sizes if r['off']]
    return notes


def format_tables(tables):
    lines = []
    for exp, (rows, columns, notes) in tables.items():
        title = f'Experiment {exp}' + (f': {TITLES[exp]}' if exp in TITLES else '')
        lines += [f'### {title} (accuracy %)', '', *format_table(rows, columns)]
        if notes:
            lines += [''] + [f'Note: {n}' for n in notes]
        lines.append('')
    return '\n'.join(lines)


# ---------------------------------------------------------------- the picture

def short_name(i, name, width=14):
    """Tick label "3 flowers"; long names cut so that 20 rotated labels stay apart."""
    return f'{i + 1} ' + (name if len(name) <= width else name[:width - 1] + '…')


def load_pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display); imported only for --png."""
    try:
        import matplotlib
    except ImportError:
        raise CPGError('--png needs matplotlib: pip install matplotlib') from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def write_png(tables, path, plt):
    """Per experiment an accuracy panel, then per CPG/PAE row with ownership a stacked-share panel."""
    panels = []
    for exp, (rows, columns, _) in tables.items():
        panels.append(('accuracy', exp, rows, columns))
        for r in rows:
            if not r.paper and r.ownership and family(r.method) in OWNERSHIP_METHODS:
                shares = ownership_shares(r.ownership)
                if shares is None:
                    print(f'note: {r.method} (experiment {exp}): its ownership rows do not cover the model '
                          '(owned + free != 1); ownership panel left out', file=sys.stderr)
                else:
                    panels.append(('ownership', exp, r, shares))
    widest = max(len(p[3]) for p in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 3 + 0.5 * widest), 3.6 * len(panels)),
                             layout='constrained', squeeze=False)
    for ax, (kind, exp, rows, data) in zip(axes[:, 0], panels):
        (_accuracy_panel if kind == 'accuracy' else _ownership_panel)(ax, exp, rows, data)
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def _task_axis(ax, columns):
    labels = [short_name(i, c) for i, c in enumerate(columns)]
    # rotate once the labels would not fit side by side (about 60 characters across a panel)
    tilt = len(labels) * max(len(t) for t in labels) > 60
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(labels, rotation=35 if tilt else 0, ha='right' if tilt else 'center',
                       rotation_mode='anchor', fontsize=8)
    ax.set_xlabel('task (learning order)')


def _accuracy_panel(ax, exp, rows, columns):
    """Grouped bars up to 8 tasks, lines with markers beyond; a paper row takes its method's colour,
    hatched (bars) or dashed (lines)."""
    lines = len(columns) > 8
    keys = list(dict.fromkeys(family(r.method) or r.method for r in rows))  # one colour per method
    width = 0.8 / max(len(rows), 1)
    values, seen = [], {}
    for j, r in enumerate(rows):
        key = family(r.method) or r.method
        nth = seen[key, r.paper] = seen.get((key, r.paper), -1) + 1  # paper rows of one method apart
        xs = [i for i, c in enumerate(columns) if c in r.accuracy]
        ys = [r.accuracy[columns[i]][0] for i in xs]
        values += ys
        color = f'C{keys.index(key) % 10}'
        if lines:
            ax.plot(xs, ys, color=color, label=r.label, alpha=0.6 if r.paper else 1.0,
                    linestyle=('--', ':', '-.')[nth % 3] if r.paper else '-',
                    marker=('x', '+', '1')[nth % 3] if r.paper else 'o',
                    linewidth=1.2 if r.paper else 2, markersize=5 if r.paper else 4)
        else:
            ax.bar([x - 0.4 + width * (j + 0.5) for x in xs], ys, width, color=color, label=r.label,
                   alpha=0.45 if r.paper else 1.0, hatch=('//', '\\\\', 'xx')[nth % 3] if r.paper else None,
                   edgecolor='white' if r.paper else color, linewidth=0.3)
    low = min(values, default=0)
    ax.set_ylim(max(0, 10 * math.floor((low - 5) / 10)), 100)
    _task_axis(ax, columns)
    ax.set_ylabel('accuracy (%)')
    paper = sum(r.paper for r in rows)
    ax.set_title(f'Experiment {exp}: per-task accuracy ({len(rows) - paper} measured'
                 + (f', {paper} from the paper)' if paper else ')'))
    ax.grid(axis='y', alpha=0.3)
    ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)


OWNERSHIP_PARTS = (('owned by the task', '#1f77b4'), ('picked from earlier tasks', '#ff7f0e'),
                   ('earlier tasks\' weights, not picked', '#fdd9b5'), ('later tasks\' weights', '#d9d9d9'),
                   ('free', 'white'))


def _ownership_panel(ax, exp, result, shares):
    """One stacked bar per task: shares of the final model's weights (sum 1)."""
    columns = [s[0] for s in shares]
    bottom = [0.0] * len(shares)
    for part, (label, color) in enumerate(OWNERSHIP_PARTS):
        heights = [s[part + 1] for s in shares]
        ax.bar(range(len(shares)), heights, 0.7, bottom=bottom, label=label, color=color,
               edgecolor='#555555', linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights)]
    _task_axis(ax, columns)
    ax.set_ylim(0, 1)
    ax.set_ylabel('share of the final model\'s weights')
    ax.set_title(f'Experiment {exp}, {result.method}: weights each task owns, picks and leaves free')
    ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)


# ---------------------------------------------------------------- entry point

def get_args_parser():
    parser = ArgumentParser('benchmark_table.py', description='Markdown comparison tables of results files')
    # Inputs
    parser.add_argument('results', nargs='+', metavar='RESULTS.json',
                        help='results files: run_inference\'s (--results_file) or tools/face_results.py\'s')
    parser.add_argument('--method', default=None, help='method name for files without a "method" field (older files)')
    parser.add_argument('--experiment', type=int, default=None, help='experiment (1, 2, 3) for files without one')
    # Output
    parser.add_argument('--paper', action='store_true',
                        help='add the published rows (spec §11), marked "(paper)", in the paper\'s method order')
    parser.add_argument('--png', default=None, metavar='PATH',
                        help='also draw the accuracies and CPG/PAE ownership shares here (needs matplotlib)')
    return parser


def main(args):
    plt = load_pyplot() if args.png else None   # before any output: a missing matplotlib fails fast
    tables = build_tables([read_results(p, args.method, args.experiment) for p in args.results], args.paper)
    print(format_tables(tables), end='')
    if args.png:
        write_png(tables, args.png, plt)
        print(f'picture written to {args.png}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
