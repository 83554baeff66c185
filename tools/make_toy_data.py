"""Generate small, deterministic, learnable toy tasks in the CIFAR, fine-grained or face layout.

--layout cifar (default, experiment 1):
    <out>/{train,test}/<task>/<class>/<i>.png (i zero-padded to 5 digits), --size x --size.
--layout finegrained (experiment 2):
    <out>/<task>/{train,test}/<class>/<i>.jpg ('imagenet' gets {train,val}), JPEG images of
    varying, non-square sizes: each side drawn between 0.75x and 1.5x --size, so that the
    resize / crop paths of the experiment-2 transforms are exercised.
--layout face (experiment 3; default tasks face_verification gender emotion age0..age4):
    <out>/<task>/{train,val}/<class>/<i>.jpg, --size x --size JPEG "aligned faces"; the
    verification task (--verification_task) gets --identities training identities,
    <out>/<task>/val as an LFW tree of --lfw_people OTHER people,
    <person>/<person>_<NNNN>.jpg, and a pairs file (--pairs_out, default <out>/lfw_pairs.txt)
    with a header line, --pairs pairs alternating same-person and different-people lines, then
    --missing_pairs lines naming images that do not exist (tools/toy_faces.py).

Each (task, class) has its own prototype (task-specific background tint and stripes plus a few
class-specific coloured blobs); every image is the prototype shifted by up to +-2 px plus
Gaussian pixel noise (fine-grained: then resized to its own size). The same flags and seed always
give byte-identical files.
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/: toy_faces
import toy_faces  # noqa: E402

SPLITS = ('train', 'test')
LAYOUTS = ('cifar', 'finegrained', 'face')
FACE_TASKS = ('face_verification', 'gender', 'emotion', 'age0', 'age1', 'age2', 'age3', 'age4')
SIZE_RANGE = (0.75, 1.5)  # fine-grained: each side between these multiples of --size
JPEG_QUALITY = 90
SHIFT = 2  # maximal shift in pixels, each direction
BLOBS = 3  # coloured blobs per class prototype


def get_args_parser():
    """Command-line flags of the toy-data generator."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/toy', help='output data folder')
    parser.add_argument('--layout', choices=LAYOUTS, default='cifar',
                        help='cifar: <out>/<split>/<task>/<class>/*.png (experiment 1); finegrained: '
                             '<out>/<task>/<split>/<class>/*.jpg of varying sizes (experiment 2; '
                             '"imagenet" gets train/val); face: <out>/<task>/{train,val}/<class>/*.jpg, '
                             'the verification task with identities, an LFW tree and a pairs file '
                             '(experiment 3)')
    parser.add_argument('--tasks', type=int, default=3,
                        help='number of tasks toy_task_1..N (cifar and finegrained layouts)')
    parser.add_argument('--task_names', nargs='+', default=None,
                        help='explicit task names (overrides --tasks; face layout default: '
                             + ' '.join(FACE_TASKS) + ')')
    parser.add_argument('--classes', type=int, default=5, help='classes per task')
    parser.add_argument('--train', type=int, default=100, help='train images per class')
    parser.add_argument('--test', type=int, default=40, help='test images per class')
    parser.add_argument('--size', type=int, default=32, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--noise', type=float, default=0.35,
                        help='std of the Gaussian pixel noise, in [0, 1] pixel units (difficulty)')
    # Face verification (--layout face)
    parser.add_argument('--verification_task', default='face_verification',
                        help='the task written as identities + LFW tree + pairs file')
    parser.add_argument('--identities', type=int, default=20,
                        help='training identities of the verification task (--train images each)')
    parser.add_argument('--lfw_people', type=int, default=12,
                        help='people of the LFW tree (none of them a training identity)')
    parser.add_argument('--lfw_images', type=int, default=4, help='images per LFW person')
    parser.add_argument('--pairs', type=int, default=120,
                        help='pairs in the pairs file, half same-person (10 folds of 12 by default)')
    parser.add_argument('--missing_pairs', type=int, default=0,
                        help='extra pairs naming images that do not exist (skipped by the readers)')
    parser.add_argument('--if_missing', action='store_true',
                        help='keep a complete earlier copy made with the same settings (its manifest and '
                             'every file\'s size match); a partial or damaged one is made again')
    parser.add_argument('--pairs_out', default=None,
                        help='where the pairs file goes (default: <out>/lfw_pairs.txt)')
    return parser


def _check_args(parser, args):
    """Reject flag values that cannot produce a data set."""
    for name in ('tasks', 'classes', 'train', 'test'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
    if args.size < 8:
        parser.error(f'--size must be at least 8, got {args.size}')
    if args.noise < 0:
        parser.error(f'--noise must be >= 0, got {args.noise}')
    if args.seed < 0:
        parser.error(f'--seed must be >= 0, got {args.seed}')
    for name, least in (('identities', 1), ('lfw_people', 2), ('lfw_images', 2), ('pairs', 1),
                        ('missing_pairs', 0)):
        if getattr(args, name) < least:
            parser.error(f'--{name} must be at least {least}, got {getattr(args, name)}')
    names = args.task_names
    if names is not None and (len(set(names)) != len(names)
                              or any(not n or '/' in n or n in ('.', '..') for n in names)):
        parser.error(f'--task_names must be distinct plain folder names, got {names}')


def task_prototypes(seed, task_index, classes, size):
    """Return float prototypes in [0, 1] of shape (classes, size+4, size+4, 3) for one task."""
    canvas = size + 2 * SHIFT  # prototypes are drawn larger so shifted crops need no padding
    rng = np.random.default_rng([seed, task_index])
    ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float64)  # (canvas, canvas) each
    # Task identity: a background tint and a stripe pattern shared by all its classes.
    tint = rng.uniform(0.2, 0.8, size=3)  # (3,)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.4)
    stripes = np.sin(freq * (xs * np.cos(angle) + ys * np.sin(angle)))  # (canvas, canvas)
    background = tint + 0.15 * stripes[..., None]  # (canvas, canvas, 3)

    prototypes = []
    for class_index in range(classes):
        class_rng = np.random.default_rng([seed, task_index, class_index])
        proto = background.copy()
        for _ in range(BLOBS):
            cy, cx = class_rng.uniform(canvas / 6, 5 * canvas / 6, size=2)
            sigma = class_rng.uniform(canvas / 10, canvas / 6)
            colour = class_rng.uniform(0.0, 1.0, size=3)  # (3,)
            alpha = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma ** 2))[..., None]
            proto = proto * (1 - alpha) + colour * alpha
        prototypes.append(proto)
    return np.clip(np.stack(prototypes), 0.0, 1.0)


def class_images(prototype, count, noise, rng):
    """Return `count` uint8 images (count, size, size, 3): shifted prototype plus pixel noise."""
    canvas = prototype.shape[0]
    size = canvas - 2 * SHIFT
    offsets = rng.integers(0, 2 * SHIFT + 1, size=(count, 2))  # (count, 2) crop corners
    # (count, size, size, 3)
    crops = np.stack([prototype[y:y + size, x:x + size] for y, x in offsets])
    noisy = crops + rng.normal(0.0, noise, size=crops.shape)
    return np.round(np.clip(noisy, 0.0, 1.0) * 255).astype(np.uint8)


def _varied_size(image, rng, size):
    """`image` (size, size, 3) resized to a random (h, w), each in SIZE_RANGE x size (bilinear)."""
    low, high = (int(round(f * size)) for f in SIZE_RANGE)
    height, width = (int(v) for v in rng.integers(low, high + 1, size=2))
    return Image.fromarray(image).resize((width, height), Image.BILINEAR)


def write_task(out, task, task_index, args):
    """Rewrite both splits of one task from scratch; returns the number of images written."""
    prototypes = task_prototypes(args.seed, task_index, args.classes, args.size)
    finegrained = args.layout == 'finegrained'
    task_first = args.layout in ('finegrained', 'face')
    if task_first and os.path.isdir(os.path.join(out, task)):
        shutil.rmtree(os.path.join(out, task))  # also a stale val/ or test/ of another name
    written = 0
    for split_index, split in enumerate(SPLITS):
        if task_first:
            val = split == 'test' and (args.layout == 'face' or task == 'imagenet')
            task_dir = os.path.join(out, task, 'val' if val else split)
        else:
            task_dir = os.path.join(out, split, task)
        # Delete-and-rewrite: stale files from a run with other flags must not survive.
        if os.path.isdir(task_dir):
            shutil.rmtree(task_dir)
        count = args.train if split == 'train' else args.test
        for class_index, prototype in enumerate(prototypes):
            rng = np.random.default_rng([args.seed, task_index, class_index, split_index])
            class_dir = os.path.join(task_dir, f'class_{class_index}')
            os.makedirs(class_dir)
            for i, image in enumerate(class_images(prototype, count, args.noise, rng)):
                if finegrained:
                    _varied_size(image, rng, args.size).save(
                        os.path.join(class_dir, f'{i:05d}.jpg'), format='JPEG', quality=JPEG_QUALITY)
                elif task_first:  # face: aligned, --size x --size
                    Image.fromarray(image).save(os.path.join(class_dir, f'{i:05d}.jpg'),
                                                format='JPEG', quality=JPEG_QUALITY)
                else:
                    Image.fromarray(image).save(os.path.join(class_dir, f'{i:05d}.png'), format='PNG')
            written += count
    return written


def write_any_task(out, task, task_index, args):
    """One task of any layout: the face layout's verification task has its own (toy_faces)."""
    if args.layout == 'face' and task == args.verification_task:
        return toy_faces.write_verification_task(out, task, task_index, args, class_images, SHIFT)
    return write_task(out, task, task_index, args)


def pairs_path(args):
    """Where the face layout's pairs file goes."""
    return args.pairs_out or os.path.join(args.out, 'lfw_pairs.txt')


MANIFEST = '.toy_data.json'   # <out>/: the settings and every file's size, written last


def _settings(args):
    return {k: v for k, v in sorted(vars(args).items()) if k not in ('if_missing',)}


def _files(out):
    """{relative path: bytes} of every file under `out` but the manifest."""
    found = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out)
            if rel != MANIFEST:
                found[rel] = os.path.getsize(path)
    return found


def complete_copy(args):
    """True when `args.out` holds what these settings make, whole (manifest and sizes match)."""
    try:
        with open(os.path.join(args.out, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (manifest.get('settings') == json.loads(json.dumps(_settings(args)))
            and manifest.get('files') == _files(args.out) and manifest.get('pairs') == _pairs_size(args))


def _pairs_size(args):
    """Bytes of the face layout's pairs file (it may lie outside --out), None if there is none."""
    path = pairs_path(args) if args.layout == 'face' else None
    return os.path.getsize(path) if path and os.path.isfile(path) else None


def main(args):
    """Generate all tasks; returns the process exit status."""
    if args.if_missing and complete_copy(args):
        print(f'{args.out}: complete (made before with the same settings), kept')
        return 0
    if args.if_missing and os.path.isdir(args.out):   # partial, damaged or other settings: anew
        shutil.rmtree(args.out)
    default_names = (FACE_TASKS if args.layout == 'face' else
                     [f'toy_task_{k}' for k in range(1, args.tasks + 1)])
    names = args.task_names or list(default_names)
    start = time.time()
    pairs_note = ''
    try:
        total = sum(write_any_task(args.out, name, index, args) for index, name in enumerate(names))
        if args.layout == 'face' and args.verification_task in names:
            index = names.index(args.verification_task)
            lines = toy_faces.write_pairs(pairs_path(args), args.seed, index, args)
            pairs_note = (f'; {args.verification_task}: {args.identities} identities x {args.train}, '
                          f'LFW {args.lfw_people} people x {args.lfw_images}, {lines} pairs '
                          f'({args.missing_pairs} missing) in {pairs_path(args)}')
    except OSError as exc:
        message = ' '.join(str(exc).split())
        print(f'error: cannot write under {args.out} ({message}); choose a writable --out',
              file=sys.stderr)
        return 1
    size = {'cifar': f'{args.size}px', 'face': f'JPEG, {args.size}px',
            'finegrained': f'JPEG, sides {int(round(SIZE_RANGE[0] * args.size))}-'
                           f'{int(round(SIZE_RANGE[1] * args.size))}px'}[args.layout]
    if args.if_missing:   # last: a copy without it is partial, and is made again next time
        with open(os.path.join(args.out, MANIFEST), 'w') as f:
            json.dump({'settings': _settings(args), 'files': _files(args.out), 'pairs': _pairs_size(args)}, f)
    print(f'{args.out}: {len(names)} tasks x {args.classes} classes, {args.train} train + '
          f'{args.test} test images per class ({total} images, {args.layout} layout, {size}, '
          f'noise {args.noise}{pairs_note}) in {time.time() - start:.1f}s')
    return 0


if __name__ == '__main__':
    parser = get_args_parser()
    arguments = parser.parse_args()
    _check_args(parser, arguments)
    sys.exit(main(arguments))
