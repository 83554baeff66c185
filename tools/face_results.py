"""Experiment 3's results table (spec §9.2, §11.3) from the inference results of every age fold.

  python tools/face_results.py --folds logs/FvGeEmAg0_results.json ... --out logs/face_inference_results.json

Each fold's file is what `CPG_face_main.py --mode inference --results_file` writes for the tasks
face verification, gender, emotion and the fold's age task. Face verification, gender and
emotion are the same frozen tasks in every fold (all folds branch from one emotion model), so
their accuracies must agree across folds; the tool says so when they do not. The age accuracy is
the mean over the folds, as the paper reports it.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import atomic_write_json  # noqa: E402
from utils.cli import ArgumentParser, run_tool  # noqa: E402
from utils.errors import CPGError  # noqa: E402


def get_args_parser():
    parser = ArgumentParser('face_results.py', description='experiment 3 results table over the age folds')
    parser.add_argument('--folds', nargs='+', required=True, help='per-fold inference results (JSON)')
    parser.add_argument('--age_task', default='age', help='prefix of the fold tasks (age0, age1, ...)')
    parser.add_argument('--out', default=None, help='write the combined results here (JSON)')
    return parser


def read_fold(path):
    try:
        with open(path) as f:
            results = json.load(f)
        return results, {row['task']: row for row in results['tasks']}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CPGError(f'cannot read fold results {path} ({type(exc).__name__}); rerun '
                       'experiment3/inference_FvGeEmAg.sh for that fold') from None


def combine(paths, age_task):
    """(combined results, lines of the printed table)."""
    folds = [read_fold(p) for p in paths]
    ages = {}
    for path, (_, rows) in zip(paths, folds):
        age = [name for name in rows if name.startswith(age_task) and name[len(age_task):].isdigit()]
        if len(age) != 1:
            raise CPGError(f'{path} holds no single {age_task}<fold> task (tasks: {", ".join(rows)})')
        ages[age[0]] = rows[age[0]]
    first = folds[0][1]
    shared = [name for name in first if name not in ages]
    disagree = [name for name in shared
                for _, rows in folds[1:] if name in rows and rows[name]['accuracy'] != first[name]['accuracy']]
    age_mean = sum(r['accuracy'] for r in ages.values()) / len(ages)
    tasks = [dict(first[name]) for name in shared]
    tasks.append({'task': age_task, 'accuracy': age_mean, 'folds': {k: r['accuracy'] for k, r in ages.items()}})
    combined = {'method': folds[0][0].get('method', 'CPG'), 'experiment': folds[0][0].get('experiment', 3),
                'tasks': tasks, 'age_folds': ages, 'average_accuracy': sum(t['accuracy'] for t in tasks) / len(tasks),
                'checkpoints': [res['checkpoint'] for res, _ in folds],
                'checkpoint_mb': [res['checkpoint_mb'] for res, _ in folds],
                'compact_mb': [res.get('compact_mb') for res, _ in folds],
                'shared_tasks_agree': not disagree}
    lines = [f'{"task":<24} {"accuracy %":>15}', '-' * 40]
    for t in tasks[:-1]:
        acc = f'{100 * t["accuracy"]:.2f}'
        if t.get('accuracy_std') is not None:
            acc += f' ± {100 * t["accuracy_std"]:.2f}'
        lines.append(f'{t["task"]:<24} {acc:>15}')
    lines.append(f'{f"{age_task} (mean of {len(ages)})":<24} {100 * age_mean:>15.2f}')
    lines.append('   ' + ', '.join(f'{k} {100 * v["accuracy"]:.2f}' for k, v in ages.items()))
    lines.append('-' * 40)
    if disagree:
        lines.append(f'WARNING: {", ".join(sorted(set(disagree)))} differ between folds: they should be '
                     'the same frozen tasks (were the folds learned from different emotion models?)')
    return combined, lines


def main(args):
    combined, lines = combine(args.folds, args.age_task)
    print('\n'.join(lines))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_json(args.out, combined)
        print(f'results written to {args.out}')
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
