"""Smoke test of tools/benchmark.py on a tiny configuration: it runs and its JSON has every figure.

Timing is the script's business, not the tests': no ratio is asserted against its target here.
The smoke run stays on the CPU whatever CPG_TEST_DEVICE says (it checks the CPU notes); the CUDA
benchmark is run by hand (README "Speed, size, multi-GPU").
"""

import json
import os
import subprocess
import sys

import pytest

from cpg_testlib import load_tool, subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIO_KEYS = {'train_task1', 'train_prune', 'train_taskk', 'inference'}
EPOCH_PARTS = {'train', 'validate', 'resume_write', 'log'}


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    """One tiny run with --epoch: 5 classes x 8 train / 4 test generated PNGs, width 0.0625."""
    out = tmp_path_factory.mktemp('bench') / 'out.json'
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'benchmark.py'), '--quick',
                           '--device', 'cpu', '--json', str(out), '--base_width', '0.0625',
                           '--steps', '2', '--warmup', '1', '--batches', '16,32', '--amp',
                           '--epoch', '--epoch_train', '8', '--epoch_test', '4', '--epoch_warmup', '1'],
                          capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


@pytest.mark.slow  # the benchmark runs as a subprocess
def test_quick_benchmark_writes_all_figures(quick_run):
    proc, result = quick_run
    assert 'train task 1' in proc.stdout and 'ignored on CPU' in proc.stdout
    assert result['device'] == 'cpu' and result['quick'] is True
    assert isinstance(result['torch'], str) and isinstance(result['threads'], int)
    assert result['amp'] is False and result['notes']  # --amp is reported as ignored on CPU
    assert set(result['ratios']) == RATIO_KEYS | {'epoch_taskk'}
    assert result['headline_batch'] == 32
    assert set(result['per_batch']) == {'16', '32'}
    assert {k: v for k, v in result['ratios'].items() if k != 'epoch_taskk'} == result['per_batch']['32']['ratios']
    for per in result['per_batch'].values():
        assert set(per['ratios']) == RATIO_KEYS
        assert all(isinstance(v, float) and v > 0 for v in per['ratios'].values())
        assert all(isinstance(v, float) and v > 0 for v in per['ms'].values())
        assert per['prune_updates_timed'] >= 1  # the timed prune steps include a mask update


@pytest.mark.slow  # the benchmark runs as a subprocess
def test_bytes_per_weight_report_the_exported_file(quick_run):
    proc, result = quick_run
    assert set(result['bytes_per_weight']) == {'2', '20'}
    assert all(isinstance(v, float) and v > 4 for v in result['bytes_per_weight'].values())
    assert result['bytes_per_weight']['20'] > result['bytes_per_weight']['2']
    for tasks, bits in (('2', 2), ('20', 5)):
        report = result['checkpoint'][tasks]
        assert report['tasks'] == int(tasks) and report['owner_dtype'] == 'torch.uint8'
        assert report['owner_bits'] == bits and report['four_plus_t_over_8'] == 4 + int(tasks) / 8
        assert report['bytes_per_weight'] == result['bytes_per_weight'][tasks]
        assert report['bytes_per_weight'] < report['training_file_bytes_per_weight']
        assert report['bound_bytes_per_weight'] > report['four_plus_t_over_8']
        assert set(report['breakdown_per_weight']) == {'weights', 'owner', 'pick_bits', 'per_task'}
        owner = report['breakdown_per_weight']['owner']
        assert owner < 1 and owner == pytest.approx(bits / 8, rel=1e-3)  # packed: under a byte
    assert '4+T/8' in proc.stdout and 'owner ids 5 bits' in proc.stdout


@pytest.mark.slow  # the benchmark runs as a subprocess
def test_epoch_figures(quick_run):
    proc, result = quick_run
    epoch = result['epoch']
    assert isinstance(result['ratios']['epoch_taskk'], float) and result['ratios']['epoch_taskk'] > 0
    assert result['ratios']['epoch_taskk'] == epoch['ratio']
    assert result['targets']['epoch_taskk'] == 1.10
    assert epoch['train_images'] == 40 and epoch['test_images'] == 20 and epoch['batch'] == 32
    assert set(epoch['ms']) == {'dense_epoch', 'cpg_epoch_taskk'}
    assert all(isinstance(v, float) and v > 0 for v in epoch['ms'].values())
    for name in ('dense', 'cpg'):
        assert set(epoch['parts_ms'][name]) == EPOCH_PARTS
        assert all(v > 0 for v in epoch['parts_ms'][name].values())
        assert len(epoch['epoch_seconds'][name]) == epoch['repeats'] == 2
    assert epoch['ratio_best'] > 0 and epoch['ratio_paired'] > 0
    assert 'epoch task k>=2' in proc.stdout
    assert 'finetune task 2 epoch' in proc.stdout and 'dense epoch' in proc.stdout  # the log lines


def test_epoch_data_takes_root_slash_task_or_a_root(tmp_path):
    bench = load_tool('bench_epoch')
    root = tmp_path / 'data'
    for task in ('b_task', 'a_task'):
        (root / 'train' / task / 'class_0').mkdir(parents=True)
    assert bench.epoch_data_task(str(root / 'b_task')) == (str(root), 'b_task')
    assert bench.epoch_data_task(str(root)) == (str(root), 'a_task')  # a root: its first task
    with pytest.raises(SystemExit, match='--epoch_data'):
        bench.epoch_data_task(str(root / 'missing_task'))
