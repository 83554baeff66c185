"""Convert a checkpoint written by the original CPG code (ivclab/CPG) into this repository's format.

Usage:
  python tools/import_original_checkpoint.py \
      --source checkpoints/CPG/experiment2/resnet50/sketches/gradual_prune

--source is the original's checkpoint-<E>.pth.tar or a folder holding some (the highest <E> is
taken, as the original does). The result goes to checkpoint.pth.tar in the same folder (or --out),
where inference (--mode inference --load_folder FOLDER), tools/export.py and further training
(--mode finetune --load_folder FOLDER --dataset NEW_TASK) read it like any model trained here.
Architecture (VGG16-BN CIFAR, ResNet-50, SphereNet20), engine (CPG or PackNet), width and head
kinds come from the file itself (utils/original_format.py); every key and shape is checked first,
and a file that does not fit gets one `error:` line naming the file, the key and what was expected.
Each task computes exactly what it computed in the original: the same effective weights
W * ([M == j] + [1 <= M < j] * [P_j > 5e-3]) and its own BN / biases / PReLU / head.
The inference scripts call it with --if_needed (docs/original-checkpoints.md).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from utils.checkpoint import CHECKPOINT_NAME, read_sidecar, save_checkpoint  # noqa: E402
from utils.cli import ArgumentParser, run_tool  # noqa: E402
from utils.errors import CPGError  # noqa: E402
from utils.original_format import (OriginalCheckpoint, find_original_checkpoint,  # noqa: E402
                                   read_original)

ORIGIN = 'ivclab/CPG'


def get_args_parser():
    parser = ArgumentParser('import_original_checkpoint.py',
                            description="convert the original CPG code's checkpoint into this repository's format")
    # Paths
    parser.add_argument('--source', required=True,
                        help="the original's checkpoint-<E>.pth.tar, or a folder holding some (highest <E> taken)")
    parser.add_argument('--out', default=None,
                        help=f'output file, or a folder to hold {CHECKPOINT_NAME} (default: {CHECKPOINT_NAME} '
                             "in the source's folder)")
    parser.add_argument('--restore_epoch', type=int, default=None,
                        help='with a folder --source: take checkpoint-<this>.pth.tar instead of the highest')
    # Behaviour
    parser.add_argument('--if_needed', action='store_true',
                        help='for the inference scripts: do nothing unless the source folder holds an original '
                             'checkpoint whose import is missing or older than it; never replace a checkpoint '
                             'that was trained here')
    return parser


def identity(path):
    """What identifies the source file, kept in the output's metadata (`imported_from`)."""
    stat = os.stat(path)
    return {'repository': ORIGIN, 'path': os.path.abspath(path), 'size': stat.st_size,
            'mtime_ns': stat.st_mtime_ns}


def resolve(source, out, restore_epoch=None):
    """(source file or None, output path) for --source / --out."""
    if os.path.isdir(source):
        found = find_original_checkpoint(source, restore_epoch)
        folder = source
    else:
        found = source if os.path.isfile(source) else None
        folder = os.path.dirname(source) or '.'
    if out is None:
        out = os.path.join(folder, CHECKPOINT_NAME)
    elif os.path.isdir(out):
        out = os.path.join(out, CHECKPOINT_NAME)
    return found, out


def up_to_date(src, out):
    """True when `out` already holds the import of exactly this source file."""
    meta = read_sidecar(out) if os.path.isfile(out) else None
    if not meta or not meta.get('imported_from'):
        return False
    seen = meta['imported_from']
    now = identity(src)
    return all(seen.get(k) == now[k] for k in ('path', 'size', 'mtime_ns'))


def import_original(src, out, log=print):
    """Convert the original's file `src` into our checkpoint `out`; returns the converted model."""
    started = time.monotonic()
    log(f'reading {src}')
    original = OriginalCheckpoint(read_original(src), src)
    model, stats = original.to_model(progress=lambda layers: tqdm(layers, desc='shared layers',
                                                                  unit='layer', disable=None))
    log(f"{src}: the original's {original.engine} engine, {len(original.names)} tasks, "
        f'{original.layout.arch} at base width {original.base_width:g}'
        + ''.join(f', {k} {v}' for k, v in original.model_kwargs.items()))
    for j, (task, head) in enumerate(zip(model.tasks, original.heads), 1):
        store = original.stores[task['name']]
        stored = store.get('network_width_multiplier')
        width = f'width multiplier {task["multiplier"]:g}' + (f' (stored as sqrt {stored:.6g})' if stored else '')
        picks = (f'picks {stats["picked"][j - 1]}/{stats["earlier"][j - 1]} earlier-task weights'
                 if task['picks'] else 'uses every earlier-task weight')
        log(f'  task {j} {task["name"]!r}: {task["num_classes"]} classes, {head["kind"]} head on '
            f'{head["in"]} features, {width}, {picks}')
    n_modules = len(model.per_task_modules())
    log(f'  mapped: {len(model.masked_layers())} shared layers (weight, owner ids masks[module.*]), '
        f'per task: {n_modules} BN/PReLU modules, shared-layer biases, head classifiers.<i>'
        + (', piggymask > 5e-3 as packed picks' if original.engine == 'CPG' else ''))
    copies, alias = original.ignored['last task copies'], original.ignored['classifier alias']
    top = ''.join(f', top-level {k!r}' for k in original.ignored['top-level'])
    log(f'  ignored: {len(copies)} model_state_dict copies of the last task\'s piggymask/BN/biases/PReLU '
        f'(its shared_layer_info entry is used), {len(alias)} classifier.* alias keys, BN num_batches_tracked'
        f'{top}; {stats["zeroed_free"]} non-zero free weights (owner 0) set to 0')
    nbytes = save_checkpoint(out, model, original.layout.arch,
                             meta_extra={'imported_from': dict(identity(src), engine=original.engine)})
    log(f'wrote {out} ({nbytes / 2 ** 20:.1f} MB) in {time.monotonic() - started:.1f} s')
    return model


def main(args):
    src, out = resolve(args.source, args.out, args.restore_epoch)
    if src is None:
        if args.if_needed:
            return 0   # not the original's layout: the caller's own checkpoint (or error) stands
        what = f'checkpoint-{args.restore_epoch}.pth.tar' if args.restore_epoch else 'checkpoint-<E>.pth.tar'
        raise CPGError(f'no original checkpoint at {args.source}; expected a file or a folder holding {what}')
    if os.path.abspath(out) == os.path.abspath(src):
        raise CPGError(f'--out {out} is the original checkpoint itself; give another --out')
    if os.path.isfile(out) and not (read_sidecar(out) or {}).get('imported_from'):
        if args.if_needed:
            return 0   # a checkpoint trained here sits next to the original's file: it wins
        raise CPGError(f'{out} holds a checkpoint that was not imported; give another --out')
    if args.if_needed and up_to_date(src, out):
        return 0
    import_original(src, out)
    return 0


if __name__ == '__main__':
    run_tool(main, get_args_parser())
