"""LFW face verification (spec §6.3): the pairs file, a dataset of image pairs, the angular
distance between embeddings and the 10-fold accuracy protocol; evaluate_verification runs a
model's embedding over a pair loader.

A dedicated pair dataset over the pairs file replaces the original's LFWDataset, which scanned the
whole LFW tree as an image-folder classifier only to reuse its loader (spec §12 item 36). The
accuracy is reported as mean +- std over the folds; VAL@FAR is not computed (the original
computed it and dropped it).
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import CPGError
from .finegrained_dataset import open_rgb

LFW_FOLDS = 10
THRESHOLDS = np.arange(0, 4, 0.01)  # the original's grid; d never exceeds 2, kept for fidelity
PAIRS_HINT = ('the pairs file lists one pair per line after a header line: "name i j" (same '
              'person) or "name1 i name2 j" (different people); see docs/experiment3.md '
              '"Data"')


# ----- the pairs file -----------------------------------------------------------------------------
def lfw_image_path(lfw_root, name, index):
    """<lfw_root>/<name>/<name>_<index as 4 digits>.jpg (aligned LFW's naming)."""
    return os.path.join(lfw_root, name, f'{name}_{index:04d}.jpg')


def _index(field, pairs_file, number):
    """A pair line's image number (a non-negative integer) or CPGError naming the line."""
    if not (field.isascii() and field.isdigit()):
        raise CPGError(f'{pairs_file}, line {number}: image number {field!r} is not a whole '
                       f'number; fix or delete the line ({PAIRS_HINT})')
    return int(field)


def read_pairs(pairs_file, lfw_root):
    """(pairs, skipped): pairs = [(path1, path2, same)] in file order, skipped = the number of
    pairs naming an image that does not exist under `lfw_root` (left out, as the original does).

    The first line is a header and is skipped; blank lines are ignored. A line that is neither
    "name i j" nor "name1 i name2 j" raises CPGError naming the file and line.
    """
    if not os.path.isfile(pairs_file):
        raise CPGError(f'no pairs file {pairs_file}; set --pairs_file (PAIRS_FILE) to the LFW '
                       'pairs list (lfw_pairs.txt, docs/experiment3.md "Data")')
    with open(pairs_file, encoding='utf-8', errors='replace') as f:
        lines = f.read().splitlines()
    pairs, skipped, exists = [], 0, {}
    for number, line in enumerate(lines[1:], start=2):  # line 1: the header
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 3:
            name, i, j = fields
            path1 = lfw_image_path(lfw_root, name, _index(i, pairs_file, number))
            path2 = lfw_image_path(lfw_root, name, _index(j, pairs_file, number))
            same = True
        elif len(fields) == 4:
            name1, i, name2, j = fields
            path1 = lfw_image_path(lfw_root, name1, _index(i, pairs_file, number))
            path2 = lfw_image_path(lfw_root, name2, _index(j, pairs_file, number))
            same = False
        else:
            raise CPGError(f'{pairs_file}, line {number}: {len(fields)} fields in {line.strip()!r}, '
                           f'expected 3 or 4; fix or delete the line ({PAIRS_HINT})')
        for path in (path1, path2):
            if path not in exists:
                exists[path] = os.path.isfile(path)
        if exists[path1] and exists[path2]:
            pairs.append((path1, path2, same))
        else:
            skipped += 1
    return pairs, skipped


def pairs_problems(pairs_file, lfw_root, task):
    """(pairs, skipped, problems) for tools/preflight.py and tools/check_data.py: a missing or
    malformed pairs file, or fewer resolving pairs than the protocol's folds, is a problem."""
    if not os.path.isfile(pairs_file):
        return [], 0, [f'{task}: no pairs file {pairs_file} (the LFW pairs list, --pairs_file / '
                       'PAIRS_FILE)']
    try:
        pairs, skipped = read_pairs(pairs_file, lfw_root)
    except CPGError as exc:
        return [], 0, [f'{task}: {exc}']
    except OSError as exc:  # e.g. no read permission
        return [], 0, [f'{task}: cannot read {pairs_file} ({exc.strerror or exc})']
    if len(pairs) < LFW_FOLDS:
        return pairs, skipped, [
            f'{task}: {len(pairs)} pair(s) of {pairs_file} resolve to images under {lfw_root} '
            f'({skipped} skipped for missing images); the {LFW_FOLDS}-fold protocol needs at '
            f'least {LFW_FOLDS}']
    return pairs, skipped, []


class PairDataset(Dataset):
    """Items (image1 (3, S, S), image2 (3, S, S), same) of a pair list, decoded per item."""

    def __init__(self, pairs, transform, open_image=open_rgb):
        self.pairs, self.transform, self.open_image = list(pairs), transform, open_image

    @property
    def same(self):
        """The labels in pair order (bool tensor)."""
        return torch.tensor([same for _, _, same in self.pairs], dtype=torch.bool)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        path1, path2, same = self.pairs[index]
        return (self.transform(self.open_image(path1)), self.transform(self.open_image(path2)),
                bool(same))


# ----- the protocol -------------------------------------------------------------------------------
def angular_distance(e1, e2):
    """(N,) distances of embeddings e1, e2 (N, D): d = arccos(clip(cos(e1, e2), 0, 1)) * 4 / pi,
    so d is in [0, 2] (spec §6.3; cosine needs no L2 normalization beforehand)."""
    cos = F.cosine_similarity(e1.float(), e2.float(), dim=1).clamp(0.0, 1.0)  # (N,)
    return torch.arccos(cos) * (4.0 / math.pi)


def fold_slices(n, folds=LFW_FOLDS):
    """Consecutive folds in file order, sklearn KFold(shuffle=False) sizes: the first n % folds
    folds hold one pair more."""
    base, extra = divmod(n, folds)
    slices, start = [], 0
    for k in range(folds):
        size = base + (1 if k < extra else 0)
        slices.append(slice(start, start + size))
        start += size
    return slices


def verification_accuracy(distances, same, folds=LFW_FOLDS):
    """The LFW protocol (spec §6.3): for each fold, the threshold of THRESHOLDS with the best
    accuracy on the other folds' pairs together (predict "same" iff d < threshold; the first
    maximum wins), then the accuracy on the fold.

    Returns {'accuracy': mean over folds, 'accuracy_std': their std (ddof 0), 'fold_accuracies',
    'thresholds' (one per fold), 'pairs'}.
    """
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)  # (n,)
    same = np.asarray(same, dtype=bool).reshape(-1)  # (n,)
    n = distances.shape[0]
    if same.shape[0] != n:
        raise CPGError(f'{n} distances but {same.shape[0]} same/different labels')
    if n < folds:
        raise CPGError(f'{n} verification pair(s) for a {folds}-fold protocol; the pairs file '
                       f'needs at least {folds} pairs whose images exist')
    # hits[t, p]: the prediction of threshold t on pair p is right
    hits = (distances[None, :] < THRESHOLDS[:, None]) == same[None, :]  # (T, n)
    slices = fold_slices(n, folds)
    fold_hits = np.stack([hits[:, s].sum(axis=1) for s in slices], axis=1)  # (T, folds)
    all_hits = hits.sum(axis=1)  # (T,)
    fold_accuracies, thresholds = [], []
    for k, s in enumerate(slices):
        size = s.stop - s.start
        other_accuracy = (all_hits - fold_hits[:, k]) / (n - size)  # (T,)
        best = int(np.argmax(other_accuracy))  # the first maximum
        thresholds.append(float(THRESHOLDS[best]))
        fold_accuracies.append(float(fold_hits[best, k]) / size)
    return {'accuracy': float(np.mean(fold_accuracies)),
            'accuracy_std': float(np.std(fold_accuracies)),
            'fold_accuracies': fold_accuracies, 'thresholds': thresholds, 'pairs': n}


def evaluate_verification(model, task, loader, device, progress=None):
    """LFW accuracy of `task`'s embedding (model.embed) over a loader of (img1, img2, same).

    Distances stay on the device until the end: one host sync per evaluation. Returns
    verification_accuracy's dict plus 'loss' (NaN: no loss is defined), 'correct' and 'total'.
    """
    model.set_task(task)
    model.eval()
    distances, labels = [], []
    batches = progress(loader, f'{task} LFW pairs') if progress is not None else loader
    with torch.no_grad():
        for img1, img2, same in batches:
            img1 = img1.to(device, non_blocking=True)  # (N, 3, S, S)
            img2 = img2.to(device, non_blocking=True)
            distances.append(angular_distance(model.embed(img1), model.embed(img2)))  # (N,)
            labels.append(torch.as_tensor(same, dtype=torch.bool).reshape(-1))
    if not distances:
        raise CPGError(f'no verification pairs to evaluate task {task!r}; check the pairs file '
                       '(tools/check_data.py --experiment 3)')
    host = torch.cat(distances).cpu().numpy()  # the one sync
    result = verification_accuracy(host, torch.cat(labels).numpy())
    result.update(loss=float('nan'), correct=int(round(result['accuracy'] * result['pairs'])),
                  total=result['pairs'])
    return result
