"""The exact shares and the picture of tools/run_status.py (--exact, --png). They load the picked
checkpoints (torch) and draw with matplotlib, which the text status needs neither of: it imports
this module only for those two flags."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.atomic import save_figure  # noqa: E402
from utils.errors import CPGError  # noqa: E402

PICKED = os.path.join('gradual_prune', 'checkpoint.pth.tar')   # a task's picked model


def exact_shares(root, tasks):
    """Count each learned task's shares in the picked checkpoints, one load per checkpoint: a task
    from the latest one whose task table holds it. Counted on the task's own leading block (its
    width): entries later tasks own there were free when it ended (ownership_stats counts the
    whole, newest network instead)."""
    import torch
    from utils.checkpoint import load_checkpoint, model_from_checkpoint, read_sidecar
    todo = {t['name']: t for t in tasks if t['state'] == 'done'}
    for holder in reversed(tasks):
        path = os.path.join(root, holder['name'], PICKED)
        names = [e.get('name') for e in (read_sidecar(path) or {}).get('tasks', [])]
        if not set(names) & set(todo):
            continue
        model = model_from_checkpoint(load_checkpoint(path))
        for k, name in enumerate(names, 1):
            if name not in todo:
                continue
            total = owned = earlier = picked = 0
            with torch.no_grad():
                for _, layer in model.masked_layers():
                    out_f, in_f = layer.task_shapes[k]
                    block = layer.owner[:out_f, :in_f]
                    old = (block >= 1) & (block < k)
                    total += block.numel()
                    owned += int((block == k).sum())
                    earlier += int(old.sum())
                    picked += int((layer.task_keep_mask(k) & old).sum())
            todo.pop(name)['shares'] = {'owned': owned / total, 'picked': picked / total,
                                        'earlier': earlier / total, 'free': (total - owned - earlier) / total,
                                        'weights': total, 'from': 'checkpoint'}


def draw_png(status, path):
    """Three panels over the tasks: the stacked shares of each task's network, the width, and the
    accuracy against the goal."""
    try:
        import matplotlib
    except ImportError:
        raise CPGError('--png needs matplotlib: pip install matplotlib') from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = status['tasks']
    x = list(range(len(tasks)))
    fig, (ax_s, ax_w, ax_a) = plt.subplots(3, 1, figsize=(max(7.0, 3 + 0.6 * len(tasks)), 9.5), sharex=True,
                                           layout='constrained', gridspec_kw={'height_ratios': [3, 1.3, 1.7]})
    # weights, not fractions: the bars grow with the width, which is how CPG's growing looks
    scale = max([(t['shares'] or {}).get('weights') or 0 for t in tasks] + [1])
    unit, div = ('M', 1e6) if scale >= 1e6 else ('k', 1e3)
    parts = (('owned', 'owned', 'tab:blue', None), ('picked', 'picked from earlier tasks', 'tab:orange', None),
             ('unpicked', 'earlier tasks\', not picked', '0.82', None), ('free', 'left free', 'white', '//'))
    for part, label, color, hatch in parts:
        heights, bottoms = [], []
        for t in tasks:
            s = t['shares'] or {}
            size = (s.get('weights') or 0) / div if s.get('weights') else 0
            values = {'owned': s.get('owned', 0), 'picked': s.get('picked', 0),
                      'unpicked': s.get('earlier', 0) - s.get('picked', 0), 'free': s.get('free', 0)}
            order = [p[0] for p in parts]
            bottoms.append(size * sum(values[p] for p in order[:order.index(part)]))
            heights.append(size * values[part])
        bars = ax_s.bar(x, heights, bottom=bottoms, color=color, hatch=hatch, edgecolor='0.35', linewidth=0.6,
                        label=label)
        for bar, t in zip(bars, tasks):
            bar.set_alpha(1.0 if t['state'] == 'done' else 0.45)   # a task in progress: its shares so far
    for i, t in enumerate(tasks):
        s = t['shares'] or {}
        top = (s.get('weights') or 0) / div
        note = t['state'] if t['state'] != 'done' else f'r={t["ratio"]}' if t['ratio'] is not None else ''
        ax_s.text(i, top, (f'{100 * s["owned"]:.0f}% own\n' if s else '') + note, ha='center', va='bottom', fontsize=7)
    ax_s.set_ylabel(f'weights at the task\'s width ({unit})')
    ax_s.set_title(f'{os.path.join(*status["root"].split(os.sep)[-3:])}: {status["state"]}, '
                   f'{sum(t["state"] == "done" for t in tasks)}/{len(tasks)} tasks done', fontsize=10)
    ax_s.legend(fontsize=8, loc='upper left', ncol=4)
    ax_s.set_ylim(0, scale / div * 1.3)

    widths = [t['width'] for t in tasks]
    known = [(i, w) for i, w in zip(x, widths) if w is not None]
    if known:
        ax_w.plot(*zip(*known), 'o-', color='tab:green')
    top_width = next((t['max_width'] for t in tasks if t['max_width']), None)
    if top_width:
        ax_w.axhline(top_width, ls='--', color='0.5', lw=1, label=f'maximum {top_width}')
        ax_w.legend(fontsize=8, loc='lower right')
    ax_w.set_ylabel('width multiplier')
    ax_w.set_ylim(0, max([w for w in widths if w] + [top_width or 1]) * 1.2)

    colors = {'met': 'tab:green', 'missed': 'tab:red', 'so far': '0.75'}
    for i, t in enumerate(tasks):
        if t['accuracy'] is None:
            continue
        met = t['goal'] is None or t['accuracy'] >= t['goal'] - t['goal_margin'] - 1e-9
        ax_a.bar(i, 100 * t['accuracy'], width=0.6,
                 color=colors['so far' if t['state'] != 'done' else 'met' if met else 'missed'])
    for label, color in colors.items():   # legend entries, drawn off the axes
        ax_a.bar([0], [0], color=color, label={'met': 'goal met', 'missed': 'goal missed',
                                               'so far': 'in progress: last epoch'}[label])
    goals = [(i, 100 * t['goal']) for i, t in enumerate(tasks) if t['goal'] is not None]
    if goals:
        ax_a.plot(*zip(*goals), '_', color='black', markersize=22, markeredgewidth=2, label='goal')
    ax_a.legend(fontsize=8, loc='upper left', ncol=4)
    ax_a.set_ylabel('accuracy (%)')
    ax_a.set_ylim(0, 125)
    ax_a.set_yticks(range(0, 101, 20))
    labels = [f'{t["index"]} {t["name"] if len(t["name"]) <= 14 else t["name"][:13] + "…"}' for t in tasks]
    tilt = len(labels) * max(len(s) for s in labels) > 60
    ax_a.set_xticks(x)
    ax_a.set_xticklabels(labels, rotation=35 if tilt else 0, ha='right' if tilt else 'center',
                         rotation_mode='anchor', fontsize=8)
    ax_a.set_xlabel('task (learning order)')
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
