"""tools/check_data.py: layout, counts table, class-name agreement and every unreadable image,
reported in one stderr line before a multi-day run."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cpg_testlib import load_tool, subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
check_data = load_tool('check_data')
toy = load_tool('make_toy_data')
TASKS = ['imagenet', 'birds_cropped', 'flowers']


def _toy(out, layout='finegrained', tasks=TASKS):
    argv = ['--out', str(out), '--layout', layout, '--task_names', *tasks, '--classes', '3',
            '--train', '3', '--test', '2', '--size', '24']
    assert toy.main(toy.get_args_parser().parse_args(argv)) == 0
    return out


def _run(capsys, *argv):
    parser = check_data.get_args_parser()
    capsys.readouterr()  # drop the toy generator's line
    status = check_data.main(parser.parse_args([*argv, '--workers', '0']))
    return status, capsys.readouterr()


def test_clean_layout_prints_the_table(tmp_path, capsys):
    root = _toy(tmp_path / 'fg')
    status, out = _run(capsys, '--experiment', '2', '--data_root', str(root), '--tasks', *TASKS)
    assert status == 0 and out.err == ''
    lines = out.out.splitlines()
    assert lines[0].split()[:4] == ['task', 'split', 'classes', 'images']
    rows = [line.split() for line in lines[1:-1]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (task, split, '3', '9' if split == 'train' else '6') for task in TASKS for split in ('train', 'test')]
    assert str(root / 'imagenet' / 'val') in lines[2]  # imagenet's test split is val/
    assert '[the paper has 1000 classes]' in lines[1]  # a note, not a failure
    assert lines[-1].startswith('check_data: OK: 3 task(s), 45 images decoded')


def test_corrupt_and_truncated_images_are_named(tmp_path, capsys):
    root = _toy(tmp_path / 'fg')
    garbage = root / 'flowers' / 'train' / 'class_1' / '00002.jpg'
    garbage.write_bytes(b'\x00garbage, not a JPEG at all' * 10)
    truncated = root / 'imagenet' / 'val' / 'class_0' / '00001.jpg'
    truncated.write_bytes(truncated.read_bytes()[:200])
    bad_list = tmp_path / 'bad.txt'
    status, out = _run(capsys, '--experiment', '2', '--data_root', str(root), '--tasks', *TASKS,
                       '--bad_list', str(bad_list))
    lines = out.err.splitlines()
    assert status == 1 and len(lines) == 1
    assert lines[0].startswith('error: check_data: 2 unreadable image(s): ')
    assert f'{truncated} (' in lines[0] and f'{garbage} (' in lines[0]
    assert 'delete or replace the unreadable files' in lines[0]
    assert bad_list.read_text().splitlines() == sorted([str(truncated), str(garbage)])
    assert out.out.startswith('task')  # the table is still printed


def test_layout_problems(tmp_path, capsys):
    root = _toy(tmp_path / 'fg')
    os.rename(root / 'flowers' / 'test' / 'class_2', root / 'flowers' / 'test' / 'class_9')
    shutil.rmtree(root / 'birds_cropped' / 'test')
    for image in (root / 'imagenet' / 'train' / 'class_0').iterdir():
        image.unlink()
    status, out = _run(capsys, '--experiment', '2', '--data_root', str(root), '--tasks', *TASKS,
                       'wikiart')
    line = out.err.strip()
    assert status == 1 and '\n' not in line
    for problem in (f'imagenet: 1 class folder(s) without images ({root / "imagenet" / "train" / "class_0"})',
                    f'birds_cropped: no folder {root / "birds_cropped" / "test"}',
                    f'flowers: class folders differ between train (3) and test (3) (class_2 only in '
                    f'{root / "flowers" / "train"}, class_9 only in {root / "flowers" / "test"})',
                    f'wikiart: no folder {root / "wikiart" / "train"}'):
        assert problem in line, problem
    assert 'docs/experiment2.md "Data"' in line
    # the train split alone (VAL_FRACTION > 0): the missing test split is no problem
    status, out = _run(capsys, '--experiment', '2', '--data_root', str(root), '--tasks',
                       'birds_cropped', '--splits', 'train')
    assert status == 0, out.err
    status, out = _run(capsys, '--experiment', '2', '--data_root', str(tmp_path / 'nowhere'))
    assert status == 1 and f'no data folder {tmp_path / "nowhere"}' in out.err


def test_experiment1_layout_and_image_sizes(tmp_path, capsys):
    root = _toy(tmp_path / 'cifar', layout='cifar', tasks=['fish', 'trees'])
    status, out = _run(capsys, '--experiment', '1', '--data_root', str(root), '--tasks', 'fish', 'trees')
    assert status == 0 and str(root / 'test' / 'trees') in out.out
    odd = root / 'train' / 'trees' / 'class_0' / 'odd.png'
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(odd)
    status, out = _run(capsys, '--experiment', '1', '--data_root', str(root), '--tasks', 'fish', 'trees')
    assert status == 1 and f'{odd} is 30x20' in out.err and 'one size per task' in out.err
    # default tasks: the 20 CIFAR-100 super-classes
    status, out = _run(capsys, '--experiment', '1', '--data_root', str(root))
    assert status == 1 and f'aquatic_mammals: no folder {root / "train" / "aquatic_mammals"}' in out.err


FACE_TASKS = ['face_verification', 'gender']


def _faces(out, **flags):
    """face_verification (3 identities, LFW 4 people x 2, 12 + 2 missing pairs) and gender."""
    argv = ['--out', str(out), '--layout', 'face', '--task_names', *FACE_TASKS, '--classes', '2',
            '--train', '2', '--test', '1', '--size', '16', '--identities', '3', '--lfw_people', '4',
            '--lfw_images', '2', '--pairs', '12', '--missing_pairs', '2']
    for key, value in flags.items():
        argv += [f'--{key}', str(value)]
    assert toy.main(toy.get_args_parser().parse_args(argv)) == 0
    return out


def test_experiment3_layout_and_pairs(tmp_path, capsys):
    root = _faces(tmp_path / 'faces')
    pairs = root / 'lfw_pairs.txt'
    status, out = _run(capsys, '--experiment', '3', '--data_root', str(root), '--tasks', *FACE_TASKS,
                       '--pairs_file', str(pairs))
    assert status == 0 and out.err == ''
    rows = [line.split() for line in out.out.splitlines()[1:5]]
    assert [r[:4] for r in rows] == [['face_verification', 'train', '3', '6'],
                                     ['face_verification', 'test', '4', '8'],
                                     ['gender', 'train', '2', '4'], ['gender', 'test', '2', '2']]
    lfw = root / 'face_verification' / 'val'
    assert f'{lfw}  [LFW: people, not classes]' in out.out  # people are not training identities
    assert str(root / 'gender' / 'val') in out.out and '[the paper has 3 classes]' in out.out
    assert (f'pairs: {pairs}: 12 resolve to images under {lfw} (6 same person, 6 different), '
            '2 skipped for missing images') in out.out
    assert out.out.splitlines()[-1].startswith('check_data: OK: 2 task(s), 20 images decoded')
    # the train split alone: gender's val folder may be missing, the LFW tree may not
    shutil.rmtree(root / 'gender' / 'val')
    status, out = _run(capsys, '--experiment', '3', '--data_root', str(root), '--tasks', *FACE_TASKS,
                       '--pairs_file', str(pairs), '--splits', 'train')
    assert status == 0, out.err
    shutil.rmtree(lfw)
    status, out = _run(capsys, '--experiment', '3', '--data_root', str(root), '--tasks', *FACE_TASKS,
                       '--pairs_file', str(pairs), '--splits', 'train')
    assert status == 1 and f'face_verification: no folder {lfw};' in out.err
    assert 'resolve' not in out.err  # the missing folder is the one problem, not its pairs


def test_experiment3_problems(tmp_path, capsys):
    root = _faces(tmp_path / 'faces')
    os.rename(root / 'gender' / 'val' / 'class_1', root / 'gender' / 'val' / 'class_7')
    status, out = _run(capsys, '--experiment', '3', '--data_root', str(root), '--tasks', *FACE_TASKS,
                       '--pairs_file', str(tmp_path / 'none.txt'))
    line = out.err.strip()
    assert status == 1 and '\n' not in line and line.startswith('error: check_data: ')
    assert f'face_verification: no pairs file {tmp_path / "none.txt"}' in line
    assert 'gender: class folders differ between train (2) and test (2)' in line
    assert 'docs/experiment3.md "Data"' in line and '--pairs_file' in line
    few = tmp_path / 'few.txt'
    few.write_text('10 1\n' + 'person_000 1 2\n' * 3 + 'person_000 1 5\n')
    status, out = _run(capsys, '--experiment', '3', '--data_root', str(root), '--tasks',
                       'face_verification', '--pairs_file', str(few))
    assert status == 1 and 'face_verification: 3 pair(s) of' in out.err and '(1 skipped' in out.err
    few.write_text('10 1\nperson_000 1\n')
    status, out = _run(capsys, '--experiment', '3', '--data_root', str(root), '--tasks',
                       'face_verification', '--pairs_file', str(few))
    assert status == 1 and f'{few}, line 2: 2 fields' in out.err and len(out.err.splitlines()) == 1
    # default tasks: the paper's eight (face_verification gender emotion age0..age4)
    status, out = _run(capsys, '--experiment', '3', '--data_root', str(root), '--pairs_file', str(few))
    assert status == 1 and f'age4: no folder {root / "age4" / "train"}' in out.err


@pytest.mark.slow  # starts processes
def test_cli_with_a_process_pool(tmp_path):
    root = _toy(tmp_path / 'fg')
    garbage = root / 'birds_cropped' / 'test' / 'class_0' / '00000.jpg'
    garbage.write_bytes(b'garbage')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'check_data.py'), '--experiment', '2',
                           '--data_root', str(root), '--tasks', *TASKS, '--workers', '2'],
                          capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith('error: check_data: 1 unreadable image(s): ') and str(garbage) in proc.stderr
    garbage.unlink()
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'check_data.py'), '--experiment', '2',
                           '--data_root', str(root), '--tasks', *TASKS, '--workers', '2'],
                          capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0 and proc.stderr == '' and 'check_data: OK: 3 task(s), 44 images' in proc.stdout
    bad_flag = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'check_data.py'), '--experiment', '4',
                               '--data_root', str(root)], capture_output=True, text=True, cwd=REPO,
                              env=subprocess_env(), timeout=120)
    assert bad_flag.returncode == 1 and bad_flag.stderr.startswith('error: check_data: ')
    assert len(bad_flag.stderr.splitlines()) == 1
