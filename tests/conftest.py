"""pytest configuration: repo on sys.path, the test device, and a session-wide toy data set.

Markers are declared in pytest.ini (`slow`: the test starts processes).
"""
import os
import sys

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
for path in (REPO, TESTS):
    if path not in sys.path:
        sys.path.insert(0, path)

# the shared helpers' asserts (e.g. assert_same_state) report like the tests' own
pytest.register_assert_rewrite('cpg_testlib')
from cpg_testlib import DEVICE, ON_CUDA, device_error, make_toy_data  # noqa: E402

# 2 cores shared by test processes: OpenMP threads spinning against each other make the tiny
# models ~20x slower, so tests (and the processes they start) use one thread unless told otherwise.
if 'OMP_NUM_THREADS' not in os.environ:
    torch.set_num_threads(1)

TOY_TASKS = ('toy_task_1', 'toy_task_2', 'toy_task_3')


def pytest_configure(config):
    error = device_error(DEVICE)
    if error:
        pytest.exit(error, returncode=pytest.ExitCode.USAGE_ERROR)
    if ON_CUDA:
        # Tests compare two training runs bit for bit (resume, replay); cuDNN's autotuner and
        # its non-deterministic kernels would make such runs differ by rounding.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def pytest_report_header(config):
    return f'CPG_TEST_DEVICE: {DEVICE}'


@pytest.fixture(scope='session')
def device():
    """The test device (CPG_TEST_DEVICE, default cpu)."""
    return DEVICE


@pytest.fixture(scope='session')
def toy_data(tmp_path_factory):
    """3 toy tasks x 5 classes, 300 train / 40 test images per class (CIFAR layout)."""
    out = make_toy_data(tmp_path_factory.mktemp('toy_data'), tasks=len(TOY_TASKS), train=300, test=40)
    for task in TOY_TASKS:
        assert os.path.isdir(os.path.join(out, 'train', task, 'class_0'))
    return out
