"""The results file of the methods with one network per task (train from scratch, finetune), in
the format of the continual methods' inference results (utils/inference.py), so that
tools/benchmark_table.py reads every method alike.

  python tools/baseline_results.py --method scratch --experiment 1 --tasks T1 T2 ... \
      --roots checkpoints/baseline/experiment1/custom_vgg_cifar100 --out logs/scratch_cifar100_results.json

Each task's accuracy is <root>/<task>/result.json's (the stage's selected epoch, as in the goal
file). With several roots (the finetune runs of experiment 1) the accuracy is their mean
(`--combine mean`: fine-Avg) or max (fine-Max). The model size is the sum over the tasks of one
run's checkpoint files, and of their compact sizes (fp32 weights, per-task norms and heads):
one network per task. Experiment 3's age folds (<age_task><f>) become one `age` row, the mean
over the folds, with the folds listed (tools/face_results.py's format).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import atomic_write_json, load_checkpoint, model_from_checkpoint  # noqa: E402
from utils.cli import ArgumentParser, run_tool  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.inference import compact_megabytes  # noqa: E402


def get_args_parser():
    parser = ArgumentParser('baseline_results.py', description='results file of a one-network-per-task method')
    parser.add_argument('--method', required=True, help='name in the results table (scratch, finetune, fine-Max, ...)')
    parser.add_argument('--experiment', type=int, required=True, choices=[1, 2, 3], help='the experiment')
    parser.add_argument('--tasks', nargs='+', required=True, help='task folder names, in order')
    parser.add_argument('--roots', nargs='+', required=True, help='folder(s) holding <task>/result.json')
    parser.add_argument('--combine', choices=['mean', 'max'], default='mean',
                        help='several roots (runs): per-task mean or max of the accuracies')
    parser.add_argument('--age_task', default='age', help='experiment 3: prefix of the age-fold tasks')
    parser.add_argument('--out', required=True, help='the results file to write (JSON)')
    return parser


def task_result(root, task):
    """(accuracy, accuracy_std or None) of <root>/<task>/result.json."""
    path = os.path.join(root, task, 'result.json')
    try:
        with open(path) as f:
            result = json.load(f)
        return float(result['accuracy']), result.get('accuracy_std')
    except (OSError, ValueError, KeyError, TypeError):
        raise CPGError(f'no readable result for task {task!r}: {path}; run the baseline script first') from None


def task_sizes(root, task):
    """(file MB, compact MB) of the task's own network."""
    ckpt = load_checkpoint(os.path.join(root, task), hint='run the baseline script first')
    path = os.path.join(root, task, 'checkpoint.pth.tar')
    return os.path.getsize(path) / 2 ** 20, compact_megabytes(model_from_checkpoint(ckpt))


def collect(args):
    pick = max if args.combine == 'max' else (lambda xs: sum(xs) / len(xs))
    rows, file_mb, compact_mb = [], 0.0, 0.0
    for task in args.tasks:
        results = [task_result(root, task) for root in args.roots]
        runs = [acc for acc, _ in results]
        size, compact = task_sizes(args.roots[0], task)
        file_mb, compact_mb = file_mb + size, compact_mb + compact
        rows.append({'task': task, 'accuracy': pick(runs), 'accuracy_when_learned': None,
                     'runs': runs if len(runs) > 1 else None})
        if len(results) == 1 and results[0][1] is not None:   # face verification: ± over the folds
            rows[-1]['accuracy_std'] = results[0][1]
    if args.experiment == 3:   # one `age` row: the mean over the folds (spec §11.3)
        folds = {r['task']: r['accuracy'] for r in rows
                 if r['task'].startswith(args.age_task) and r['task'][len(args.age_task):].isdigit()}
        if folds:
            rows = [r for r in rows if r['task'] not in folds]
            rows.append({'task': args.age_task, 'accuracy': sum(folds.values()) / len(folds), 'folds': folds})
    return {'method': args.method, 'experiment': args.experiment, 'tasks': rows,
            'average_accuracy': sum(r['accuracy'] for r in rows) / len(rows),
            'checkpoint_mb': file_mb, 'compact_mb': compact_mb, 'roots': args.roots,
            'networks': len(args.tasks)}


def main(args):
    results = collect(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_json(args.out, results)
    table = ', '.join(f'{r["task"]} {100 * r["accuracy"]:.2f}' for r in results['tasks'])
    print(f'{args.method} (experiment {args.experiment}): {table}; average '
          f'{100 * results["average_accuracy"]:.2f}%; {results["checkpoint_mb"]:.1f} MB in '
          f'{results["networks"]} networks -> {args.out}')
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
