"""Write the deployable multi-task file of a checkpoint: weights, bit-packed owner ids, packed pick
masks, per-task BN/biases/heads; no optimizer or resume state, no float pick mask (spec §12 item 4).

Usage: python tools/export.py --checkpoint CKPT/<task>/gradual_prune/0.5 --out model.pth.tar

--checkpoint takes a checkpoint file or a folder holding checkpoint.pth.tar. A resume file works
too: model_from_checkpoint binarizes and packs its float pick mask (the newest task's), and the
optimizer/resume entries are left behind. Owner ids take ceil(log2(T+1)) bits each (utils/compact.py),
so a T-task file holds at most about 4 + T/8 bytes per shared weight plus the per-task norms, biases
and heads. Every task of the exported file gives exactly the outputs of the source model, and the
file loads wherever a checkpoint loads (model_from_checkpoint unpacks the owner ids).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import (CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint,  # noqa: E402
                              resolve_checkpoint, save_compact_checkpoint)
from utils.compact import owner_bits  # noqa: E402
from utils.errors import CPGError  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('export a compact multi-task inference file')
    # Paths
    parser.add_argument('--checkpoint', required=True,
                        help='checkpoint file, or a folder holding checkpoint.pth.tar')
    parser.add_argument('--out', required=True,
                        help='output file (an existing folder gets checkpoint.pth.tar inside)')
    return parser


def shared_weight_count(model):
    return sum(layer.weight.numel() for _, layer in model.masked_layers())


def export(checkpoint, out):
    """Export `checkpoint` to `out`; returns (source path, out path, bytes before, after, model)."""
    source = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(source, hint='pass a checkpoint file or a folder holding one')
    before = os.path.getsize(source)  # before writing: --out may name the source itself
    model = model_from_checkpoint(ckpt)  # packs a resume file's float pick, as end_phase would
    if os.path.isdir(out):
        out = os.path.join(out, CHECKPOINT_NAME)
    try:
        after = save_compact_checkpoint(out, model, ckpt['arch'])
    except OSError as exc:
        raise CPGError(f'cannot write {out}: {exc.strerror or exc}') from None
    return source, out, before, after, model


def main(args):
    try:
        source, out, before, after, model = export(args.checkpoint, args.out)
    except CPGError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    n = shared_weight_count(model)
    print(f'{source}: {before} bytes ({before / n:.3f} per shared weight)')
    tasks = len(model.tasks)
    print(f'{out}: {after} bytes ({after / n:.3f} per shared weight; target 4 + T/8 = {4 + tasks / 8:.3f} '
          f'(+5%) plus the per-task norms, biases and heads), {tasks} tasks, owner ids in '
          f'{owner_bits(tasks)} bits, {n} shared weights ({100 * after / before:.1f}% of the source)')
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
