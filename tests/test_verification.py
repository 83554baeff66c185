"""The LFW protocol (spec §6.3, utils/verification.py): the pairs file, the angular distance, the
10-fold threshold choice and its accuracy, and the evaluator over a model's embedding."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from utils.errors import CPGError
from utils.verification import (THRESHOLDS, angular_distance, evaluate_verification, fold_slices,
                                lfw_image_path, read_pairs, verification_accuracy)


# ----- the metric ---------------------------------------------------------------------------------
def test_angular_distance_known_angles():
    e1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    e2 = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, math.sqrt(3.0)], [1.0, -1.0]])
    # angles 0, 90, 180 (cos -1 clipped to 0: as 90), 60, 45 degrees; d = angle / 90 * 2
    expected = torch.tensor([0.0, 2.0, 2.0, 4.0 / 3.0, 1.0])
    assert torch.allclose(angular_distance(e1, e2), expected, atol=1e-3)
    assert angular_distance(e1, e2).shape == (5,)


def test_separable_pairs_give_accuracy_one():
    """Same pairs at d = 0.505, different at 1.505: every threshold in 0.51..1.50 is perfect on
    the other folds; the first maximum is 0.51, and every fold is right."""
    same = np.array([True, False] * 10)  # 20 pairs, folds of 2
    distances = np.where(same, 0.505, 1.505)
    result = verification_accuracy(distances, same)
    assert result['accuracy'] == 1.0 and result['accuracy_std'] == 0.0
    assert result['fold_accuracies'] == [1.0] * 10 and result['pairs'] == 20
    assert result['thresholds'] == [pytest.approx(0.51)] * 10  # the first maximum wins


def test_mixed_case_hand_computed():
    """20 pairs, 10 folds of (same, different). Folds 2-9: same 0.305, different 1.505.
    Fold 0: a hard same pair (1.005) and different 1.505; fold 1: same 0.305 and a hard different
    pair (0.705). A same pair is right iff d < t, a different one iff d >= t.

    Fold 0 (train: folds 1-9, 9 same at 0.305, different 0.705 + 8 x 1.505): every pair is right
    for t in 0.31..0.70 (18/18), first maximum t = 0.31; on fold 0 the same pair (1.005) is
    wrong, the different one right: 1/2.
    Fold 1 (train: fold 0 + folds 2-9, same 1.005 + 8 x 0.305, different 9 x 1.505): t in
    0.31..1.00 gives 17/18, t in 1.01..1.50 gives 18/18, so t = 1.01; on fold 1 the different
    pair at 0.705 < 1.01 is called "same": 1/2.
    Folds 2-9 (train: same 1.005, 0.305 + 7 x 0.305; different 1.505, 0.705 + 7 x 1.505):
    0.31..0.70 -> 17/18 (1.005 wrong), 0.71..1.00 -> 16/18, 1.01..1.50 -> 17/18 (0.705 wrong);
    the first maximum is 0.31 (not the tied 1.01), and the fold (0.305, 1.505) is right: 2/2.
    Mean 9/10 = 0.9; deviations -0.4 (x2) and +0.1 (x8): variance (2 * 0.16 + 8 * 0.01) / 10 =
    0.04, std 0.2 (ddof 0).
    """
    same = np.array([True, False] * 10)
    distances = np.where(same, 0.305, 1.505)
    distances[0] = 1.005  # fold 0's same pair
    distances[3] = 0.705  # fold 1's different pair
    result = verification_accuracy(distances, same)
    assert result['fold_accuracies'] == [0.5, 0.5] + [1.0] * 8
    assert result['thresholds'] == pytest.approx([0.31, 1.01] + [0.31] * 8)
    assert result['accuracy'] == pytest.approx(0.9)
    assert result['accuracy_std'] == pytest.approx(0.2)


def test_threshold_from_the_other_folds_when_the_halves_disagree():
    """20 pairs, 10 folds of (same, different); folds 0-4 at (0.405, 0.605), folds 5-9 at
    (1.205, 1.405). Each fold is separable on its own, so a threshold chosen on the test fold
    would score 1.0 everywhere; the protocol chooses on the other 18 pairs.

    Fold k in 0-4 (train: 4 low folds + 5 high folds): t in 0.41..0.60 -> 8 + 5 = 13/18,
    t in 1.21..1.40 -> 4 + 10 = 14/18 (every other t: 9/18), so t = 1.21; on the fold the
    different pair at 0.605 < 1.21 is called "same": 1/2.
    Fold k in 5-9 (train: 5 low + 4 high): 0.41..0.60 -> 10 + 4 = 14/18, 1.21..1.40 -> 5 + 8 =
    13/18, so t = 0.41; on the fold the same pair at 1.205 >= 0.41 is called "different": 1/2.
    Mean 0.5, std 0 (chosen on all 20 pairs instead: t = 0.41 for every fold, mean 0.75).
    """
    same = np.array([True, False] * 10)
    low = np.arange(20) < 10
    distances = np.where(same, np.where(low, 0.405, 1.205), np.where(low, 0.605, 1.405))
    result = verification_accuracy(distances, same)
    assert result['thresholds'] == pytest.approx([1.21] * 5 + [0.41] * 5)
    assert result['fold_accuracies'] == [0.5] * 10
    assert result['accuracy'] == 0.5 and result['accuracy_std'] == 0.0


def test_fold_sizes_follow_kfold_for_n_not_divisible_by_ten():
    """23 pairs: the first 23 % 10 = 3 folds hold 3 pairs, the other 7 hold 2 (sklearn KFold)."""
    slices = fold_slices(23)
    assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 6), (6, 9)] + [
        (9 + 2 * k, 11 + 2 * k) for k in range(7)]
    assert [s.stop - s.start for s in fold_slices(10)] == [1] * 10
    # Pair 2 (a same pair at 1.905, wrong for every useful threshold) falls in fold 0 = pairs
    # 0, 1, 2. Every fold's training pairs choose t = 0.31 (all right but pair 2 when it is
    # there), so fold 0 scores 2/3 and the others 1 (with equal folds of 2 it would be fold 1).
    same = np.array([True, False] * 11 + [True])
    distances = np.where(same, 0.305, 1.505)
    distances[2] = 1.905
    result = verification_accuracy(distances, same)
    assert result['fold_accuracies'] == pytest.approx([2 / 3] + [1.0] * 9)
    assert result['thresholds'] == pytest.approx([0.31] * 10) and result['pairs'] == 23


def test_first_maximum_threshold_choice():
    """Only different pairs, at 0.505: t = 0 .. 0.50 is right on all (d >= t), the rest wrong;
    the first maximum is t = 0 (the grid's first value), not the last one (0.50)."""
    same = np.zeros(10, dtype=bool)
    result = verification_accuracy(np.full(10, 0.505), same)
    assert result['thresholds'] == [0.0] * 10 and result['accuracy'] == 1.0
    assert THRESHOLDS[0] == 0.0 and len(THRESHOLDS) == 400 and THRESHOLDS[-1] == pytest.approx(3.99)


def test_too_few_pairs_is_an_error():
    with pytest.raises(CPGError, match='9 verification pair.*10-fold'):
        verification_accuracy(np.zeros(9), np.ones(9, dtype=bool))
    with pytest.raises(CPGError, match='12 distances but 11'):
        verification_accuracy(np.zeros(12), np.ones(11, dtype=bool))


# ----- the pairs file -----------------------------------------------------------------------------
def _lfw(tmp_path, people):
    """An LFW tree of empty files (read_pairs only checks that images exist)."""
    root = tmp_path / 'lfw'
    for name, count in people.items():
        (root / name).mkdir(parents=True)
        for i in range(1, count + 1):
            (root / name / f'{name}_{i:04d}.jpg').write_bytes(b'')
    return root


def test_read_pairs(tmp_path):
    root = _lfw(tmp_path, {'Ann_A': 2, 'Bob_B': 1, 'Cy_C': 12})
    pairs_file = tmp_path / 'pairs.txt'
    pairs_file.write_text('10\t300\n'  # header
                          'Ann_A\t1\t2\n'
                          '\n'
                          'Ann_A 1 Bob_B 1\n'
                          'Ann_A\t1\t3\n'  # Ann_A has no image 3: skipped
                          'Bob_B\t1\tNobody\t1\n'  # no such person: skipped
                          'Cy_C\t12\tBob_B\t1\n')
    pairs, skipped = read_pairs(str(pairs_file), str(root))
    assert skipped == 2
    assert pairs == [(str(root / 'Ann_A' / 'Ann_A_0001.jpg'), str(root / 'Ann_A' / 'Ann_A_0002.jpg'), True),
                     (str(root / 'Ann_A' / 'Ann_A_0001.jpg'), str(root / 'Bob_B' / 'Bob_B_0001.jpg'), False),
                     (str(root / 'Cy_C' / 'Cy_C_0012.jpg'), str(root / 'Bob_B' / 'Bob_B_0001.jpg'), False)]
    assert lfw_image_path('r', 'X', 7) == 'r/X/X_0007.jpg'


@pytest.mark.parametrize('line, message', [
    ('Ann_A\t1', '2 fields'),
    ('Ann_A 1 Bob_B 1 extra', '5 fields'),
    ('Ann_A\tone\t2', "image number 'one' is not a whole number"),
    ('Ann_A 1 Bob_B -1', "image number '-1'"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    root = _lfw(tmp_path, {'Ann_A': 2, 'Bob_B': 1})
    pairs_file = tmp_path / 'pairs.txt'
    pairs_file.write_text(f'header\nAnn_A 1 2\n\n{line}\n')
    with pytest.raises(CPGError) as info:
        read_pairs(str(pairs_file), str(root))
    text = str(info.value)
    assert '\n' not in text and f'{pairs_file}, line 4: ' in text and message in text
    assert 'fix or delete the line' in text


def test_missing_pairs_file(tmp_path):
    with pytest.raises(CPGError) as info:
        read_pairs(str(tmp_path / 'none.txt'), str(tmp_path))
    assert f'no pairs file {tmp_path / "none.txt"}' in str(info.value)
    assert '--pairs_file' in str(info.value) and 'docs/experiment3.md' in str(info.value)


# ----- the evaluator ------------------------------------------------------------------------------
class StandIn(nn.Module):
    """What the engine's model offers for verification: set_task, eval, embed -> (N, D)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Linear(3 * 4 * 4, 8)
        self.tasks, self.embedded = [], 0

    def set_task(self, task):
        self.tasks.append(task)

    def embed(self, images):
        assert not self.training and not torch.is_grad_enabled()
        self.embedded += images.shape[0]
        return self.embedding(images.flatten(1))


def test_evaluate_verification_equals_the_metric_of_direct_distances():
    gen = torch.Generator().manual_seed(3)
    n = 23
    img1 = torch.randn(n, 3, 4, 4, generator=gen)
    same = torch.arange(n) % 2 == 0
    # same pairs: a small perturbation of the first image; different: an unrelated image
    img2 = torch.where(same[:, None, None, None], img1 + 0.3 * torch.randn(n, 3, 4, 4, generator=gen),
                       torch.randn(n, 3, 4, 4, generator=gen))
    loader = DataLoader(TensorDataset(img1, img2, same), batch_size=5)
    model = StandIn().train()
    described = []

    def progress(iterable, desc):
        described.append(desc)
        return iterable

    result = evaluate_verification(model, 'face_verification', loader, 'cpu', progress)
    assert model.tasks == ['face_verification'] and not model.training and model.embedded == 2 * n
    assert described and 'face_verification' in described[0]
    with torch.no_grad():
        direct = angular_distance(model.embedding(img1.flatten(1)), model.embedding(img2.flatten(1)))
    expected = verification_accuracy(direct.numpy(), same.numpy())
    for key in ('accuracy', 'accuracy_std', 'fold_accuracies', 'thresholds', 'pairs'):
        assert result[key] == pytest.approx(expected[key]), key
    assert math.isnan(result['loss']) and result['total'] == n
    assert result['correct'] == round(expected['accuracy'] * n)
    assert result['accuracy'] > 0.6  # the perturbed pairs are closer
