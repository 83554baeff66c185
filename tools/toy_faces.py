"""The face-verification part of tools/make_toy_data.py --layout face: toy identities, an
LFW-style tree of other identities and its pairs file.

Every identity is a prototype "face": a mid-grey canvas with a few coloured blobs placed
symmetrically about the vertical axis (a face is roughly left-right symmetric, so the train
flip keeps it one identity). Its images are the prototype shifted by up to +-2 px plus Gaussian
pixel noise (make_toy_data.class_images), so that images of one identity are close in pixel space
and those of two identities far apart. Train identities and LFW people never coincide.
"""
import os
import shutil

import numpy as np
from PIL import Image

FACE_BLOBS = 12  # coloured blobs per identity prototype
BLOB_COLOUR = 0.5  # largest offset of a blob's colour from mid-grey, per channel
LFW_FOLDS = 10  # the header of the pairs file: folds and pairs per fold and kind, as LFW's
TRAIN_KEY, LFW_KEY, PAIRS_KEY = 0, 1, 2  # random streams of one verification task
JPEG_QUALITY = 90


def identity_prototype(seed, task_index, kind, identity, size, shift):
    """Float prototype in [0, 1] of shape (size + 2 shift, size + 2 shift, 3) of one identity."""
    canvas = size + 2 * shift  # drawn larger so that shifted crops need no padding
    rng = np.random.default_rng([seed, task_index, kind, identity])
    ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float64)  # (canvas, canvas) each
    mirrored = np.abs(xs - (canvas - 1) / 2)  # distance from the vertical axis
    proto = np.full((canvas, canvas, 3), 0.5)
    for _ in range(FACE_BLOBS):
        cy = rng.uniform(canvas / 6, 5 * canvas / 6)
        dx = rng.uniform(0, canvas / 3)  # a blob at +-dx from the axis
        sigma = rng.uniform(canvas / 10, canvas / 5)
        colour = rng.uniform(-BLOB_COLOUR, BLOB_COLOUR, size=3)  # (3,)
        bump = np.exp(-((ys - cy) ** 2 + (mirrored - dx) ** 2) / (2 * sigma ** 2))  # (canvas, canvas)
        proto += bump[..., None] * colour
    return np.clip(proto, 0.0, 1.0)


def _save_jpeg(image, path):
    Image.fromarray(image).save(path, format='JPEG', quality=JPEG_QUALITY)


def person_name(person):
    """Folder name of LFW toy person `person`."""
    return f'person_{person:03d}'


def write_verification_task(out, task, task_index, args, draw_images, shift):
    """<out>/<task>/train/id_<k>/<i>.jpg (args.identities identities, args.train images each) and
    the LFW tree <out>/<task>/val/<person>/<person>_<NNNN>.jpg (args.lfw_people people,
    args.lfw_images images each, numbered from 1). Returns the number of images written."""
    task_dir = os.path.join(out, task)
    if os.path.isdir(task_dir):
        shutil.rmtree(task_dir)  # stale files from a run with other flags must not survive
    def write_person(folder_name, kind, person, count, file_name):
        # one identity's images in <task>/<split>/<folder_name>/, numbered by file_name(i)
        folder = os.path.join(task_dir, 'train' if kind == TRAIN_KEY else 'val', folder_name)
        os.makedirs(folder)
        prototype = identity_prototype(args.seed, task_index, kind, person, args.size, shift)
        rng = np.random.default_rng([args.seed, task_index, kind, person, 1])
        for i, image in enumerate(draw_images(prototype, count, args.noise, rng)):
            _save_jpeg(image, os.path.join(folder, file_name(i)))
        return count

    written = 0
    for identity in range(args.identities):
        written += write_person(f'id_{identity:04d}', TRAIN_KEY, identity, args.train, lambda i: f'{i:05d}.jpg')
    for person in range(args.lfw_people):
        name = person_name(person)
        written += write_person(name, LFW_KEY, person, args.lfw_images, lambda i: f'{name}_{i + 1:04d}.jpg')
    return written


def pair_lines(seed, task_index, people, images, pairs, missing):
    """The lines of the pairs file: a header, then `pairs` pairs alternating same-person
    ("name i j") and different-people ("name1 i name2 j") lines, so that every fold of the
    protocol holds both kinds, then `missing` lines naming images that do not exist."""
    rng = np.random.default_rng([seed, task_index, PAIRS_KEY])
    lines = [f'{LFW_FOLDS}\t{pairs // (2 * LFW_FOLDS)}']
    for k in range(pairs):
        if k % 2 == 0:
            person = int(rng.integers(people))
            i, j = sorted(int(v) + 1 for v in rng.choice(images, size=2, replace=False))
            lines.append(f'{person_name(person)}\t{i}\t{j}')
        else:
            first, second = (int(v) for v in rng.choice(people, size=2, replace=False))
            i, j = (int(v) + 1 for v in rng.integers(images, size=2))
            lines.append(f'{person_name(first)}\t{i}\t{person_name(second)}\t{j}')
    for k in range(missing):
        if k % 2 == 0:  # a same-person line with an image number past the person's images
            lines.append(f'{person_name(k % people)}\t1\t{images + 1 + k}')
        else:  # a different-people line naming a person who is not in the tree
            lines.append(f'{person_name(k % people)}\t1\tmissing_person_{k:03d}\t1')
    return lines


def write_pairs(path, seed, task_index, args):
    """Write the pairs file (pair_lines) to `path`; returns the number of pair lines."""
    lines = pair_lines(seed, task_index, args.lfw_people, args.lfw_images, args.pairs,
                       args.missing_pairs)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write('\n'.join(lines) + '\n')
    return len(lines) - 1
