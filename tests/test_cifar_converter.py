"""tools/cifar100_to_png.py: the CIFAR-100 archive (tar or folder) to the paper's PNG layout."""
import argparse
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from cpg_testlib import REPO, load_tool, tree_bytes

converter = load_tool('cifar100_to_png')

FINE = [b'apple', b'pear', b'shark', b'trout']
COARSE = [b'fish', b'fruit_and_vegetables']
FINE_TO_COARSE = [1, 1, 0, 0]


def _fake_split(rng, count):
    """A CIFAR-style pickle dict with `count` random images."""
    fine = [int(i) for i in rng.integers(0, 4, size=count)]
    return {b'data': rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            b'fine_labels': fine, b'coarse_labels': [FINE_TO_COARSE[f] for f in fine]}


@pytest.fixture()
def fake_cifar(tmp_path):
    """Write a fake cifar-100-python folder and tar.gz; returns (tar path, folder, splits)."""
    rng = np.random.default_rng(0)
    splits = {'train': _fake_split(rng, 12), 'test': _fake_split(rng, 6)}
    payloads = dict(splits, meta={b'fine_label_names': FINE, b'coarse_label_names': COARSE})
    folder = tmp_path / 'extracted' / 'cifar-100-python'
    folder.mkdir(parents=True)
    archive = tmp_path / 'cifar-100-python.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        for name, payload in payloads.items():
            blob = pickle.dumps(payload)
            (folder / name).write_bytes(blob)
            info = tarfile.TarInfo(f'cifar-100-python/{name}')
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return archive, folder, splits


def _convert(archive, out):
    """Run the converter's main on `archive`; returns its exit status."""
    return converter.main(argparse.Namespace(archive=str(archive), out=str(out)))


def _check_converted(out, splits):
    """Every source image is at <split>/<coarse>/<fine>/<index>.png with identical pixels."""
    for split, payload in splits.items():
        pngs = [p for p in tree_bytes(out / split) if p.endswith('.png')]
        assert len(pngs) == len(payload[b'fine_labels'])
        for index, fine in enumerate(payload[b'fine_labels']):
            coarse = COARSE[FINE_TO_COARSE[fine]].decode()
            path = out / split / coarse / FINE[fine].decode() / f'{index:05d}.png'
            with Image.open(path) as img:
                pixels = np.asarray(img)  # (32, 32, 3)
            planes = payload[b'data'][index].reshape(3, 32, 32)  # channel-major source
            assert pixels.shape == (32, 32, 3)
            assert tuple(pixels[5, 7]) == tuple(planes[:, 5, 7])
            assert np.array_equal(pixels, planes.transpose(1, 2, 0))


def test_converter_tar(tmp_path, fake_cifar, capsys):
    """The tar.gz form is read in place and written in the super-class layout."""
    archive, _, splits = fake_cifar
    out = tmp_path / 'out'
    assert _convert(archive, out) == 0
    _check_converted(out, splits)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert 'train 12' in summary and 'test 6' in summary and '2 tasks' in summary


def test_converter_folder_and_rerun(tmp_path, fake_cifar):
    """The extracted folder (or its parent) works, and a rerun skips existing files."""
    _, folder, splits = fake_cifar
    out = tmp_path / 'out'
    assert _convert(folder, out) == 0
    _check_converted(out, splits)
    first = out / 'train' / os.listdir(out / 'train')[0]
    mtimes = {p: os.path.getmtime(os.path.join(first, p)) for p in tree_bytes(first)}
    assert _convert(folder.parent, out) == 0
    assert mtimes == {p: os.path.getmtime(os.path.join(first, p)) for p in tree_bytes(first)}


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize('kind', ['missing', 'garbage'])
def test_converter_bad_archive(tmp_path, kind):
    """A missing or non-archive file exits 1 with a single stderr line and no traceback."""
    archive = tmp_path / 'cifar-100-python.tar.gz'
    if kind == 'garbage':
        archive.write_bytes(b'not a tar file at all')
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools', 'cifar100_to_png.py'),
         '--archive', str(archive), '--out', str(tmp_path / 'out')],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(archive) in lines[0] and 'Traceback' not in result.stderr


# (c) TaskImageFolder -------------------------------------------------------------------------
