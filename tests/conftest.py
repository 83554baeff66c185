"""pytest configuration: repo on sys.path, the `slow` marker, and a session-wide toy data set."""
import os
import subprocess
import sys

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
for path in (REPO, TESTS):
    if path not in sys.path:
        sys.path.insert(0, path)

# 2 cores shared by test processes: OpenMP threads spinning against each other make the tiny
# models ~20x slower, so tests (and the processes they start) use one thread unless told otherwise.
if 'OMP_NUM_THREADS' not in os.environ:
    torch.set_num_threads(1)

TOY_TASKS = ('toy_task_1', 'toy_task_2', 'toy_task_3')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: end-to-end runs of the experiment scripts (still run by '
                                       'default; deselect with -m "not slow")')


@pytest.fixture(scope='session')
def toy_data(tmp_path_factory):
    """3 toy tasks x 5 classes, 300 train / 40 test images per class (CIFAR layout)."""
    out = tmp_path_factory.mktemp('toy_data')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'make_toy_data.py'),
                           '--out', str(out), '--tasks', str(len(TOY_TASKS)),
                           '--train', '300', '--test', '40'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for task in TOY_TASKS:
        assert os.path.isdir(out / 'train' / task / 'class_0')
    return str(out)

