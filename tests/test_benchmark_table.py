"""tools/benchmark_table.py: the methods' comparison tables from hand-made results files.

The tool runs through its own __main__ block in this process (run_main_block); the results files
are written here in the two shapes the project writes them (run_inference's, and experiment 3's
combination of the age folds by tools/face_results.py itself).
"""
import json
import os
import sys

import pytest

from cpg_testlib import REPO, load_tool, run_main_block
from utils.cifar100_config import CIFAR100_TASKS

TOOL = os.path.join(REPO, 'tools', 'benchmark_table.py')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
EXP2_TASKS = ['imagenet', 'cubs_cropped', 'stanford_cars_cropped', 'flowers', 'wikiart', 'sketches']


def results_file(folder, name, method, experiment, accuracies, checkpoint_mb, compact_mb=None,
                 ownership=None, **extra):
    """run_inference's shape; `accuracies` maps task -> fraction, `ownership` task -> (owned, picked, free)."""
    rows = []
    for task, acc in accuracies.items():
        row = {'task': task, 'accuracy': acc, 'accuracy_when_learned': acc}
        if ownership:
            owned, picked, free = ownership[task]
            row.update(network_width_multiplier=1.0, pruning_ratio=0.5, owned_fraction=owned,
                       picked_fraction=picked, free_fraction=free)
        rows.append(row)
    data = {'method': method, 'experiment': experiment, 'checkpoint': f'/ckpt/{name}', 'tasks': rows,
            'checkpoint_mb': checkpoint_mb, 'average_accuracy': sum(accuracies.values()) / len(rows), **extra}
    if compact_mb is not None:
        data['compact_mb'] = compact_mb
    path = os.path.join(str(folder), f'{name}.json')
    with open(path, 'w') as f:
        json.dump(data, f)
    return path


def run(argv, capsys):
    return run_main_block([TOOL, *argv], capsys)


def table_rows(out):
    return [line for line in out.splitlines() if line.startswith('| ') and not line.startswith('| Method')]


def test_rows_union_of_tasks_and_both_sizes(tmp_path, capsys):
    cpg = results_file(tmp_path, 'cpg', 'CPG', 1, {'t1': 0.80, 't2': 0.90}, 10.0, compact_mb=2.5)
    # one model per task: checkpoint_mb is the sum of the three files, and there is no compact export
    scratch = results_file(tmp_path, 'scratch', 'Train from scratch', 1, {'t1': 0.75, 't2': 0.85, 't3': 0.70}, 30.0)
    rc, out, err = run([cpg, scratch], capsys)
    assert rc == 0, err
    assert out == '\n'.join([
        '### Experiment 1: CIFAR-100, 20 tasks, VGG16-BN (accuracy %)',
        '',
        '| Method | t1 | t2 | t3 | Avg. | Model size (MB): file | Model size (MB): compact |',
        '|---|---:|---:|---:|---:|---:|---:|',
        # CPG lacks t3: (80 + 90) / 2 = 85.00
        '| CPG | 80.00 | 90.00 | – | 85.00 | 10.00 | 2.50 |',
        # (75 + 85 + 70) / 3 = 76.666... -> 76.67
        '| Train from scratch | 75.00 | 85.00 | 70.00 | 76.67 | 30.00 | – |']) + '\n'


def test_one_table_per_experiment_in_order(tmp_path, capsys):
    e2 = results_file(tmp_path, 'e2', 'CPG', 2, {'cubs_cropped': 0.5}, 100.0)
    e1 = results_file(tmp_path, 'e1', 'CPG', 1, {'t1': 0.5}, 50.0)
    rc, out, err = run([e2, e1], capsys)
    assert rc == 0, err
    titles = [line for line in out.splitlines() if line.startswith('### ')]
    assert [t.split(':')[0] for t in titles] == ['### Experiment 1', '### Experiment 2']


def make_face_combined(folder):
    """Five fold files through tools/face_results.py's own combine, as experiment 3 writes them."""
    face_results = load_tool('face_results')
    ages = [0.55, 0.56, 0.57, 0.58, 0.62]
    sizes = [40.0, 42.0, 41.0, 40.0, 42.0]
    paths = []
    for fold, (age, mb) in enumerate(zip(ages, sizes)):
        own = {'face_verification': (0.4, 0.0, 0.1), 'gender': (0.2, 0.5, 0.1), 'emotion': (0.2, 0.25, 0.1),
               f'age{fold}': (0.1, 0.2, 0.1)}
        accs = {'face_verification': 0.993, 'gender': 0.8966, 'emotion': 0.6357, f'age{fold}': age}
        path = results_file(folder, f'fold{fold}', 'CPG', 3, accs, mb, compact_mb=10.0, ownership=own)
        with open(path) as f:
            data = json.load(f)
        data['tasks'][0].update(accuracy_std=0.0035, pairs=6000)
        with open(path, 'w') as f:
            json.dump(data, f)
        paths.append(path)
    combined, _ = face_results.combine(paths, 'age')
    combined.setdefault('method', 'CPG')
    combined.setdefault('experiment', 3)
    out = os.path.join(str(folder), 'face_combined.json')
    with open(out, 'w') as f:
        json.dump(combined, f)
    return out


def test_experiment3_mean_std_age_mean_and_fold_size(tmp_path, capsys):
    rc, out, err = run([make_face_combined(tmp_path)], capsys)
    assert rc == 0, err
    assert '| Method | face_verification | gender | emotion | age | Avg. |' in out
    # age: (55 + 56 + 57 + 58 + 62) / 5 = 57.60; Avg. (99.30 + 89.66 + 63.57 + 57.60) / 4 = 77.5325
    # file: the mean of the fold files (40 + 42 + 41 + 40 + 42) / 5 = 41.00, not their 205 MB sum
    assert table_rows(out) == ['| CPG | 99.30 ± 0.35 | 89.66 | 63.57 | 57.60 | 77.53 | 41.00 | 10.00 |']
    assert 'Note: CPG: age = mean of 5 folds (age0 55.00, age1 56.00' in out


def test_experiment3_ownership_from_first_fold(tmp_path):
    tool = load_tool('benchmark_table')
    result = tool.read_results(make_face_combined(tmp_path))
    assert [row[0] for row in result.ownership] == ['face_verification', 'gender', 'emotion', 'age0']


def test_paper_rows_by_name_in_paper_order(tmp_path, capsys):
    cpg = results_file(tmp_path, 'cpg', 'CPG', 2, dict(zip(EXP2_TASKS, [0.7] * 6)), 121.5, compact_mb=100.25)
    packnet = results_file(tmp_path, 'packnet', 'PackNet', 2, dict(zip(EXP2_TASKS, [0.6] * 6)), 115.0)
    rc, out, err = run([cpg, packnet, '--paper'], capsys)
    assert rc == 0, err
    rows = table_rows(out)
    assert [r.split(' | ')[0][2:] for r in rows] == [
        'Train from scratch (paper)', 'Finetune (paper)', 'ProgressiveNet (paper)', 'PackNet',
        'PackNet (paper)', 'Piggyback (paper)', 'CPG', 'CPG (paper)']
    # (75.81 + 83.59 + 92.80 + 96.62 + 77.15 + 80.33) / 6 = 506.30 / 6 = 84.383...
    assert '| CPG (paper) | 75.81 | 83.59 | 92.80 | 96.62 | 77.15 | 80.33 | 84.38 | 121 | – |' in rows
    # Finetune has no ImageNet number: (82.83 + 91.83 + 96.56 + 75.60 + 80.78) / 5 = 85.52
    assert '| Finetune (paper) | – | 82.83 | 91.83 | 96.56 | 75.60 | 80.78 | 85.52 | 551 / 554 | – |' in rows
    assert '| CPG | 70.00 | 70.00 | 70.00 | 70.00 | 70.00 | 70.00 | 70.00 | 121.50 | 100.25 |' in rows
    assert 'by position' not in out


def test_paper_experiment2_lists_the_computed_model_sizes(tmp_path, capsys):
    sizes = load_tool('model_sizes').compute_sizes()
    cpg = results_file(tmp_path, 'cpg', 'CPG', 2, dict(zip(EXP2_TASKS, [0.7] * 6)), 121.5)
    rc, out, err = run([cpg, '--paper'], capsys)
    assert rc == 0, err
    notes = [line for line in out.splitlines() if 'tools/model_sizes.py' in line]
    assert len(notes) == 1 and notes[0].startswith('Note: ')
    # every method's computed size beside the paper's size, in the paper's method order
    listed = [f'{r["method"]} {r["computed_mb"]:.1f} MB (paper {r["paper_mb"]})' for r in sizes]
    assert notes[0].endswith(': ' + ', '.join(listed))
    assert '| CPG (paper) | 75.81 | 83.59 | 92.80 | 96.62 | 77.15 | 80.33 | 84.38 | 121 | – |' in table_rows(out)
    # computed sizes belong to the paper's experiment-2 comparison only
    e1 = results_file(tmp_path, 'e1', 'CPG', 1, {'t1': 0.5}, 1.0)
    for argv in ([cpg], [e1, '--paper']):
        rc, out, err = run(argv, capsys)
        assert rc == 0 and 'model_sizes' not in out, err


def test_computed_size_more_than_10_percent_off_notes_its_reason(monkeypatch):
    table, sizes = load_tool('benchmark_table'), load_tool('model_sizes')
    monkeypatch.setattr(sizes, 'METHODS', tuple(m if m[0] != 'PackNet' else (m[0], '100', 100, *m[3:])
                                                for m in sizes.METHODS))
    monkeypatch.setattr(table, 'load_model_sizes', lambda: sizes)
    notes = table.computed_size_notes()
    packnet = next(r for r in sizes.compute_sizes() if r['method'] == 'PackNet')
    assert notes[1:] == [f"PackNet's computed size is {packnet['ratio']:.2f}x the paper's: {packnet['reason']}"]
    assert f'PackNet {packnet["computed_mb"]:.1f} MB (paper 100)' in notes[0]


def test_paper_rows_by_position_on_toy_tasks(tmp_path, capsys):
    toy = {'toy_task_1': 0.5, 'toy_task_2': 0.6, 'toy_task_3': 0.7}
    rc, out, err = run([results_file(tmp_path, 'cpg', 'CPG', 1, toy, 1.0), '--paper'], capsys)
    assert rc == 0, err
    rows = table_rows(out)
    # slides' tasks 1-3 under the toy columns: (65.2 + 76.6 + 79.8) / 3 = 73.866... -> 73.87
    assert '| CPG avg (paper) | 65.20 | 76.60 | 79.80 | 73.87 | ×1.5 VGG16, 0.41 free | – |' in rows
    # (66.6 + 77.2 + 78.6) / 3 = 74.133... -> 74.13
    assert '| CPG top (paper) | 66.60 | 77.20 | 78.60 | 74.13 | ×1.5 VGG16 | – |' in rows
    assert '| Scratch (paper) | 65.80 | 78.40 | 76.60 | 73.60 | ×20 VGG16 | – |' in rows
    assert sum(r.startswith('| ') and '(paper)' in r for r in rows) == 8
    assert 'Note: paper values are matched to the measured task columns by position' in out


def test_paper_rows_experiment3(tmp_path, capsys):
    rc, out, err = run([make_face_combined(tmp_path), '--paper'], capsys)
    assert rc == 0, err
    rows = table_rows(out)
    # (99.30 + 89.66 + 63.57 + 57.66) / 4 = 77.5475; scratch (99.417 + 83.70 + 57.64 + 46.14) / 4 = 71.72
    assert '| CPG (paper) | 99.30 ± 0.35 | 89.66 | 63.57 | 57.66 | 77.55 | ×1 CNN20, 0.003 free | – |' in rows
    assert '| Train from scratch (paper) | 99.42 ± 0.37 | 83.70 | 57.64 | 46.14 | 71.72 | ×4 CNN20 | – |' in rows
    assert [r.split(' | ')[0][2:] for r in rows][-2:] == ['CPG', 'CPG (paper)']


BAD_FILES = {
    'not_json': ('{"method": "CPG", "tasks": [', 'not valid JSON'),
    'no_tasks': ({'method': 'CPG', 'experiment': 1, 'tasks': []}, 'lists no tasks'),
    'no_method': ({'experiment': 1, 'tasks': [{'task': 't1', 'accuracy': 0.5}]}, '--method NAME'),
    'no_experiment': ({'method': 'CPG', 'tasks': [{'task': 't1', 'accuracy': 0.5}]}, '--experiment N'),
    'percent': ({'method': 'CPG', 'experiment': 1, 'tasks': [{'task': 't1', 'accuracy': 80.0}]}, 'fraction'),
}


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_bad_file_one_line_naming_it(tmp_path, capsys, name):
    content, problem = BAD_FILES[name]
    good = results_file(tmp_path, 'good', 'CPG', 1, {'t1': 0.5}, 1.0)
    bad = os.path.join(str(tmp_path), f'{name}.json')
    with open(bad, 'w') as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    rc, out, err = run([good, bad], capsys)
    assert rc == 1
    assert out == ''
    assert len(err.splitlines()) == 1 and err.startswith('error: ') and bad in err and problem in err, err


def test_missing_file_names_it(tmp_path, capsys):
    missing = os.path.join(str(tmp_path), 'nowhere.json')
    rc, _, err = run([missing], capsys)
    assert rc == 1 and len(err.splitlines()) == 1 and missing in err


def test_overrides_fill_older_files(tmp_path, capsys):
    old = os.path.join(str(tmp_path), 'old.json')
    with open(old, 'w') as f:
        json.dump({'checkpoint_mb': 5.0, 'tasks': [{'task': 't1', 'accuracy': 0.5}]}, f)
    newer = results_file(tmp_path, 'cpg', 'CPG', 2, {'t1': 0.6}, 4.0)
    rc, out, err = run([old, newer, '--method', 'PackNet', '--experiment', '2'], capsys)
    assert rc == 0, err
    assert table_rows(out) == ['| PackNet | 50.00 | 50.00 | 5.00 | – |', '| CPG | 60.00 | 60.00 | 4.00 | – |']


def test_ownership_shares_by_hand():
    tool = load_tool('benchmark_table')
    # owned 0.3 / 0.2 / 0.1 and 0.4 free; picked_fraction is of the earlier tasks' weights
    shares = tool.ownership_shares([('a', 0.3, 0.0, 0.4), ('b', 0.2, 0.5, 0.4), ('c', 0.1, 0.25, 0.4)])
    expected = [('a', 0.3, 0.0, 0.0, 0.3, 0.4),      # later: 0.2 + 0.1
                ('b', 0.2, 0.15, 0.15, 0.1, 0.4),    # picked 0.5 * 0.3
                ('c', 0.1, 0.125, 0.375, 0.0, 0.4)]  # picked 0.25 * (0.3 + 0.2)
    for got, want in zip(shares, expected):
        assert got[0] == want[0] and got[1:] == pytest.approx(want[1:])
        assert sum(got[1:]) == pytest.approx(1.0)
    # a subset of the tasks does not cover the model: no panel rather than wrong shares
    assert tool.ownership_shares([('b', 0.2, 0.5, 0.4)]) is None


def test_png_twenty_tasks(tmp_path, capsys):
    n = len(CIFAR100_TASKS)
    free = 0.2
    owned = [(1 - free) / n] * n
    own = {t: (owned[k], 0.5 if k else 0.0, free) for k, t in enumerate(CIFAR100_TASKS)}
    accs = {t: 0.6 + 0.01 * k for k, t in enumerate(CIFAR100_TASKS)}
    cpg = results_file(tmp_path, 'cpg', 'CPG', 1, accs, 90.0, compact_mb=40.0, ownership=own)
    scratch = results_file(tmp_path, 'scratch', 'Train from scratch', 1, accs, 1160.0)
    png = tmp_path / 'pictures' / 'exp1.png'
    rc, out, err = run([cpg, scratch, '--paper', '--png', png], capsys)
    assert rc == 0, err
    import matplotlib
    assert matplotlib.get_backend().lower() == 'agg'
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    assert f'picture written to {png}' in err


def test_png_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)   # `import matplotlib` raises ImportError
    cpg = results_file(tmp_path, 'cpg', 'CPG', 1, {'t1': 0.5}, 1.0)
    rc, out, err = run([cpg, '--png', tmp_path / 'x.png'], capsys)
    assert rc == 1 and out == ''
    assert len(err.splitlines()) == 1 and 'pip install matplotlib' in err


def test_png_replaces_an_old_picture_and_an_unwritable_path_is_one_line(tmp_path, capsys):
    """The picture replaces an old one and leaves no temporary file beside it; a path whose folder
    is a file stops with one line naming it."""
    cpg = results_file(tmp_path, 'cpg', 'CPG', 1, {'t1': 0.5}, 1.0)
    png = tmp_path / 'x.png'
    png.write_bytes(b'old picture')
    rc, out, err = run([cpg, '--png', png], capsys)
    assert rc == 0, err
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('x.png')) == ['x.png']
    blocked = os.path.join(cpg, 'x.png')   # its folder is the results file
    rc, out, err = run([cpg, '--png', blocked], capsys)
    assert rc == 1   # the table is printed before the picture
    assert len(err.strip().splitlines()) == 1 and f'cannot write {blocked}' in err, err
