"""Smoke test of tools/benchmark.py on a tiny configuration: it runs and its JSON has every figure.

Timing is the script's business, not the tests': no ratio is asserted against its target here.
"""

import json
import os
import subprocess
import sys

from cpg_testlib import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIO_KEYS = {'train_task1', 'train_prune', 'train_taskk', 'inference'}


def test_quick_benchmark_writes_all_figures(tmp_path):
    out = tmp_path / 'out.json'
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'benchmark.py'), '--quick',
                           '--device', 'cpu', '--json', str(out), '--base_width', '0.0625',
                           '--steps', '2', '--warmup', '1', '--batches', '16,32', '--amp'],
                          capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'train task 1' in proc.stdout and 'ignored on CPU' in proc.stdout
    result = json.loads(out.read_text())

    assert result['device'] == 'cpu' and result['quick'] is True
    assert isinstance(result['torch'], str) and isinstance(result['threads'], int)
    assert result['amp'] is False and result['notes']  # --amp is reported as ignored on CPU
    assert set(result['ratios']) == RATIO_KEYS
    assert result['headline_batch'] == 32
    assert set(result['per_batch']) == {'16', '32'}
    assert result['ratios'] == result['per_batch']['32']['ratios']
    for per in result['per_batch'].values():
        assert set(per['ratios']) == RATIO_KEYS
        assert all(isinstance(v, float) and v > 0 for v in per['ratios'].values())
        assert all(isinstance(v, float) and v > 0 for v in per['ms'].values())
        assert per['prune_updates_timed'] >= 1  # the timed prune steps include a mask update
    assert set(result['bytes_per_weight']) == {'2', '20'}
    assert all(isinstance(v, float) and v > 4 for v in result['bytes_per_weight'].values())
    assert result['bytes_per_weight']['20'] > result['bytes_per_weight']['2']
    for tasks in ('2', '20'):
        report = result['checkpoint'][tasks]
        assert report['tasks'] == int(tasks) and report['owner_dtype'] == 'torch.uint8'
        assert report['bytes_per_weight'] == result['bytes_per_weight'][tasks]
        assert set(report['breakdown_per_weight']) == {'weights', 'owner', 'pick_bits', 'per_task'}
