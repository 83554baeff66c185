"""Inference (spec §10): every task of a final checkpoint evaluated in one process, each with its
own width, pick and head, on the test split (the only phase that reads it when VAL_FRACTION > 0).
No weight is ever zeroed in place: the layers form each task's effective weights functionally.
"""
import os

from models.layers import PICK_THRESHOLD

from .checkpoint import resolve_checkpoint
from .compact import compact_state_dict
from .context import EXIT_OK
from .errors import CPGError
from .stats import ownership_stats


def run_inference(ctx):
    """Evaluate tasks of a final checkpoint; returns (status, results dict)."""
    a = ctx.args
    ckpt_path = a.load_folder
    model = ctx.load_model(ckpt_path, 'train the tasks first (the last task\'s gradual_prune folder)')
    names = [t['name'] for t in model.tasks]
    wanted = a.tasks if getattr(a, 'tasks', None) else ([a.dataset] if a.dataset else names)
    for name in wanted:
        if name not in names:
            raise CPGError(f'task {name!r} is not in the checkpoint {ckpt_path} (it holds: {", ".join(names)})')
    size_mb = os.path.getsize(resolve_checkpoint(ckpt_path)) / 2 ** 20
    rows = []
    for name in wanted:
        task = model.task_id(name)
        val = ctx.manager(model, task, None, ctx.data.test_loader(name)).validate()
        stats = ownership_stats(model, task)
        info = model.tasks[task - 1]
        rows.append({'task': name, 'accuracy': val['accuracy'],
                     'accuracy_when_learned': info.get('accuracy'),
                     'network_width_multiplier': info['multiplier'],
                     'pruning_ratio': info.get('pruning_ratio'),
                     'owned_fraction': stats['owned_fraction'],
                     'picked_fraction': stats['picked_fraction'],
                     'free_fraction': stats['free_fraction']})
        if 'accuracy_std' in val:   # face verification: mean ± std over the 10 LFW folds
            rows[-1].update(accuracy_std=val['accuracy_std'], pairs=val.get('pairs'))
        ctx.logger.info('inference task %d %r: accuracy %.4f (when learned %s)', task, name,
                        val['accuracy'], info.get('accuracy'))
    average = sum(r['accuracy'] for r in rows) / max(len(rows), 1)
    return EXIT_OK, {'method': getattr(a, 'method', 'CPG'), 'experiment': getattr(a, 'experiment', None),
                     'checkpoint': resolve_checkpoint(ckpt_path), 'tasks': rows,
                     'average_accuracy': average, 'checkpoint_mb': size_mb,
                     'compact_mb': compact_megabytes(model), 'pick_threshold': PICK_THRESHOLD}


def compact_megabytes(model):
    """The model's size as the paper counts it: fp32 shared weights, owner ids at the fewest
    bits, pick masks at 1 bit per earlier-task entry, per-task norms, biases and heads (the
    tensors of tools/export.py's file, without the file's metadata)."""
    return sum(t.numel() * t.element_size() for t in compact_state_dict(model).values()) / 2 ** 20


def format_results_table(results):
    """Plain-text table of run_inference's results."""
    head = f'{"task":<32} {"acc %":>13} {"learned %":>9} {"width":>5} {"pruned":>6} {"owned":>6} {"picked":>6}'
    lines = [head, '-' * len(head)]
    for r in results['tasks']:
        learned = '' if r['accuracy_when_learned'] is None else f'{100 * r["accuracy_when_learned"]:.2f}'
        acc = f'{100 * r["accuracy"]:.2f}'
        if r.get('accuracy_std') is not None:
            acc += f' ± {100 * r["accuracy_std"]:.2f}'
        lines.append(f'{r["task"]:<32} {acc:>13} {learned:>9} '
                     f'{r["network_width_multiplier"]:>5.2f} {r["pruning_ratio"] or 0:>6.2f} '
                     f'{r["owned_fraction"]:>6.3f} {r["picked_fraction"]:>6.3f}')
    lines.append('-' * len(head))
    lines.append(f'average accuracy {100 * results["average_accuracy"]:.2f}% | checkpoint '
                 f'{results["checkpoint_mb"]:.2f} MB')
    return '\n'.join(lines)
