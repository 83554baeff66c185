"""tools/preflight.py: every task's folders, class counts and goals are checked before any training,
and every problem is reported at once, in one line (docs/experiment1.md "Run")."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from cpg_testlib import load_tool, subprocess_env
from utils.cifar100_dataset import TaskImageFolder
from utils.errors import CPGError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ['toy_task_1', 'toy_task_2', 'toy_task_3']


preflight = load_tool('preflight')
toy = load_tool('make_toy_data')


@pytest.fixture()
def data(tmp_path):
    """3 toy tasks x 5 classes, 2 train / 1 test images, and a goal file with every task."""
    root = tmp_path / 'toy'
    args = toy.get_args_parser().parse_args(['--out', str(root), '--tasks', '3', '--train', '2', '--test', '1'])
    assert toy.main(args) == 0
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({task: '0.5000' for task in TASKS}))
    return root, goals


def _write_goals(path, tasks):
    path.write_text(json.dumps({task: '0.5000' for task in tasks}))


# ----- check_tasks --------------------------------------------------------------------------------------
def test_good_layout_has_no_problems(data):
    root, goals = data
    assert preflight.check_tasks(str(root), TASKS, 5, str(goals)) == []
    assert preflight.check_tasks(str(root), TASKS, {'toy_task_1': 5, 'toy_task_2': 5, 'toy_task_3': 5}) == []


def test_every_problem_is_reported_at_once(data):
    """Missing task, wrong class count, empty class, class names differing, duplicate, no goal."""
    root, goals = data
    shutil.rmtree(root / 'test' / 'toy_task_2' / 'class_4')  # 4 classes in test
    for image in (root / 'train' / 'toy_task_1' / 'class_0').iterdir():
        image.unlink()  # an empty class folder
    (root / 'train' / 'toy_task_1' / 'class_0' / 'notes.txt').write_text('not an image')
    _write_goals(goals, ['toy_task_1', 'toy_task_2', 'toy_task_9'])
    tasks = ['toy_task_1', 'toy_task_2', 'toy_task_3', 'toy_task_9', 'toy_task_3']
    problems = preflight.check_tasks(str(root), tasks, 5, str(goals))
    test2, train1 = root / 'test' / 'toy_task_2', root / 'train' / 'toy_task_1'
    expected = [
        f'toy_task_1: no images in {train1 / "class_0"}',
        f'toy_task_1: 4 classes in {train1}, NUM_CLASSES is 5',
        f'toy_task_2: 4 classes in {test2}, NUM_CLASSES is 5',
        f'toy_task_2: class folders differ between splits (class_4 only in {root / "train" / "toy_task_2"})',
        'toy_task_3: listed 2 times in TASKS',
        f'toy_task_9: no folder {root / "train" / "toy_task_9"}',
        f'toy_task_9: no folder {root / "test" / "toy_task_9"}',
        f'toy_task_3: no goal in {goals}',
    ]
    assert problems == expected


def test_missing_data_root_split_and_goal_file(tmp_path, data):
    root, goals = data
    missing = tmp_path / 'nowhere'
    assert preflight.check_tasks(str(missing), TASKS, 5) == [f'no data folder {missing}']
    shutil.rmtree(root / 'test')
    assert preflight.check_tasks(str(root), TASKS, 5) == [f'no folder {root / "test"}']  # once
    assert preflight.check_tasks(str(root), TASKS, 5, splits=('train',)) == []
    assert preflight.check_tasks(str(root), [], 5, splits=('train',)) == ['no tasks given (TASKS is empty)']
    # a missing or unreadable goal file is a problem of its own
    assert preflight.goal_problems(str(tmp_path / 'none.json'), TASKS) == [f'no goal file {tmp_path / "none.json"}']
    for content in ('{not json', '["toy_task_1"]', '{"toy_task_1": "high"}', '{"toy_task_1": null}'):
        goals.write_text(content)
        problems = preflight.goal_problems(str(goals), TASKS)
        assert len(problems) == 1 and problems[0].startswith(f'cannot read goal file {goals}'), content


def test_unreadable_folder_is_a_problem_not_a_traceback(data, monkeypatch):
    root, _ = data
    denied = str(root / 'train' / 'toy_task_2' / 'class_0')

    def no_permission(folder):
        if folder == denied:
            raise PermissionError(13, 'Permission denied', folder)
        return True

    monkeypatch.setattr(preflight, 'has_image', no_permission)
    assert preflight.check_tasks(str(root), TASKS, 5, splits=('train',)) == [
        f'toy_task_2: cannot list {denied} (Permission denied)']


def test_class_counts_per_task(data):
    root, _ = data
    expected = {'toy_task_1': 5, 'toy_task_2': 3, 'toy_task_3': 5}
    assert preflight.check_tasks(str(root), TASKS, expected, splits=('train',)) == [
        f'toy_task_2: 5 classes in {root / "train" / "toy_task_2"}, NUM_CLASSES is 3']


def test_lists_folders_without_decoding_and_stops_at_the_first_image(data, monkeypatch):
    """Fast on real data: no image is opened, and each class folder is read up to its first image."""
    import PIL.Image
    root, goals = data

    def no_decoding(*args, **kwargs):
        raise AssertionError('preflight must not open images')

    real_scandir, entries_read = os.scandir, []

    class CountingScandir:
        def __init__(self, path):
            self.entries = real_scandir(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.entries.close()

        def __iter__(self):
            for entry in self.entries:
                entries_read.append(entry.path)
                yield entry

    monkeypatch.setattr(PIL.Image, 'open', no_decoding)
    monkeypatch.setattr(os, 'scandir', CountingScandir)
    assert preflight.check_tasks(str(root), TASKS, 5, str(goals)) == []
    assert len(entries_read) == 3 * 2 * 5  # tasks x splits x classes: one image each


def test_preflight_and_loader_agree(tmp_path):
    """The same discovery rules: what preflight accepts the loader loads, what it flags the loader refuses."""
    from PIL import Image
    import numpy as np
    pixels = np.zeros((32, 32, 3), np.uint8)
    task = tmp_path / 'train' / 'quirky'
    for name in ('a', 'b'):
        (task / name).mkdir(parents=True)
    Image.fromarray(pixels).save(task / 'a' / 'UPPER.PNG')  # any case of the extension counts
    (task / 'a' / 'notes.txt').write_text('ignored')
    (task / 'b' / 'folder.png').mkdir()  # a folder is no image, even by its name
    Image.fromarray(pixels).save(task / 'b' / 'folder.png' / 'deeper.png')  # not directly inside
    problems = preflight.check_tasks(str(tmp_path), ['quirky'], 1, splits=('train',))
    assert problems == [f'quirky: no images in {task / "b"}']
    with pytest.raises(CPGError, match='no images'):
        TaskImageFolder(str(tmp_path), 'train', 'quirky')
    shutil.rmtree(task / 'b')
    assert preflight.check_tasks(str(tmp_path), ['quirky'], 1, splits=('train',)) == []
    loaded = TaskImageFolder(str(tmp_path), 'train', 'quirky')
    assert loaded.classes == ['a'] and len(loaded) == 1


# ----- experiment 2's layout, and the train split alone (VAL_FRACTION > 0) -------------------------------
@pytest.fixture()
def finegrained(tmp_path):
    """imagenet (train/val), birds_cropped and flowers (train/test): 3 classes, 2 / 1 JPEGs each."""
    root = tmp_path / 'fg'
    args = toy.get_args_parser().parse_args(
        ['--out', str(root), '--layout', 'finegrained', '--task_names', 'imagenet', 'birds_cropped',
         'flowers', '--classes', '3', '--train', '2', '--test', '1', '--size', '16'])
    assert toy.main(args) == 0
    return root


FG_TASKS = ['imagenet', 'birds_cropped', 'flowers']


def test_finegrained_layout(finegrained):
    root = finegrained
    assert preflight.check_tasks(str(root), FG_TASKS, None, layout='finegrained') == []
    assert preflight.check_tasks(str(root), FG_TASKS, 3, layout='finegrained') == []
    shutil.rmtree(root / 'imagenet' / 'val')
    shutil.rmtree(root / 'flowers' / 'train' / 'class_1')
    problems = preflight.check_tasks(str(root), FG_TASKS, {'birds_cropped': 200}, layout='finegrained')
    assert problems == [
        f'imagenet: no folder {root / "imagenet" / "val"}',  # imagenet's test split is val/
        f'birds_cropped: 3 classes in {root / "birds_cropped" / "train"}, NUM_CLASSES is 200',
        f'birds_cropped: 3 classes in {root / "birds_cropped" / "test"}, NUM_CLASSES is 200',
        f'flowers: class folders differ between splits (class_1 only in {root / "flowers" / "test"})',
    ]
    # --splits train: with VAL_FRACTION > 0 no test split is needed
    assert preflight.check_tasks(str(root), ['imagenet'], None, splits=('train',), layout='finegrained') == []


def test_finegrained_cli_in_process(finegrained, capsys):
    """--layout finegrained without --num_classes prints the class counts it found; --splits
    train accepts a task without test split; errors stay one line."""
    root = finegrained
    parser = preflight.get_args_parser()

    def run(*argv):
        args = parser.parse_args(['--data_root', str(root), *argv])
        preflight.check_args(parser, args)
        return preflight.main(args), capsys.readouterr()

    status, out = run('--layout', 'finegrained', '--tasks', *FG_TASKS)
    assert status == 0 and out.err == ''
    assert out.out.startswith('preflight: 3 tasks OK (') and 'imagenet 3, birds_cropped 3, flowers 3' in out.out
    shutil.rmtree(root / 'flowers' / 'test')
    status, out = run('--layout', 'finegrained', '--tasks', *FG_TASKS)
    lines = out.err.splitlines()
    assert status == 1 and len(lines) == 1 and lines[0].startswith('error: preflight: ')
    assert f'flowers: no folder {root / "flowers" / "test"}' in lines[0] and 'check_data.py' in lines[0]
    status, out = run('--layout', 'finegrained', '--splits', 'train', '--tasks', *FG_TASKS)
    assert status == 0 and 'train, classes' in out.out
    with pytest.raises(SystemExit) as info:  # the cifar layout still needs NUM_CLASSES
        run('--tasks', 'flowers')
    assert info.value.code == 1 and '--num_classes (NUM_CLASSES) is required' in capsys.readouterr().err


def test_cifar_splits_train_does_not_need_the_test_split(data, capsys):
    root, _ = data
    shutil.rmtree(root / 'test')
    parser = preflight.get_args_parser()
    args = parser.parse_args(['--data_root', str(root), '--num_classes', '5', '--splits', 'train',
                              '--tasks', *TASKS])
    preflight.check_args(parser, args)
    assert preflight.main(args) == 0
    assert capsys.readouterr().out.startswith('preflight: 3 tasks OK (')


# ----- experiment 3's layout: the verification task always needs LFW and its pairs -----------------------
@pytest.fixture()
def faces(tmp_path):
    """face_verification (3 identities, LFW 4 people x 2, 12 + 1 missing pairs), gender, emotion."""
    root = tmp_path / 'faces'
    args = toy.get_args_parser().parse_args(
        ['--out', str(root), '--layout', 'face', '--task_names', *FACE_TASKS, '--classes', '2',
         '--train', '1', '--test', '1', '--size', '16', '--identities', '3', '--lfw_people', '4',
         '--lfw_images', '2', '--pairs', '12', '--missing_pairs', '1'])
    assert toy.main(args) == 0
    return root


FACE_TASKS = ['face_verification', 'gender', 'emotion']


def test_face_layout(faces):
    root, pairs = faces, str(faces / 'lfw_pairs.txt')
    assert preflight.check_tasks(str(root), FACE_TASKS, None, layout='face', pairs_file=pairs) == []
    # with VAL_FRACTION > 0 the classification tasks need no val folder, the verification task
    # still needs LFW and its pairs (it always selects on LFW)
    shutil.rmtree(root / 'gender' / 'val')
    assert preflight.check_tasks(str(root), FACE_TASKS, None, splits=('train',), layout='face',
                                 pairs_file=pairs) == []
    lfw = root / 'face_verification' / 'val'
    shutil.rmtree(lfw)
    shutil.rmtree(root / 'emotion' / 'train' / 'class_1')
    missing = str(root / 'none.txt')
    assert preflight.check_tasks(str(root), FACE_TASKS, {'face_verification': 4630}, splits=('train',),
                                 layout='face', pairs_file=missing) == [
        f'face_verification: 3 classes in {root / "face_verification" / "train"}, NUM_CLASSES is 4630',
        f'face_verification: no LFW folder {lfw} (<person>/<person>_<NNNN>.jpg)',
        f'face_verification: no pairs file {missing} (the LFW pairs list, --pairs_file / PAIRS_FILE)',
    ]
    problems = preflight.check_tasks(str(root), FACE_TASKS, None, layout='face', pairs_file=pairs)
    assert problems == [f'face_verification: no LFW folder {lfw} (<person>/<person>_<NNNN>.jpg)',
                        f'gender: no folder {root / "gender" / "val"}',
                        f'emotion: class folders differ between splits (class_1 only in '
                        f'{root / "emotion" / "val"})']


def test_face_pairs_must_resolve(faces, tmp_path):
    root = faces
    few = tmp_path / 'few.txt'
    few.write_text('10 1\n' + 'person_000\t1\t2\n' * 9 + 'person_000\t1\t3\n')
    assert preflight.check_tasks(str(root), ['face_verification'], None, layout='face', pairs_file=str(few)) == [
        f'face_verification: 9 pair(s) of {few} resolve to images under '
        f'{root / "face_verification" / "val"} (1 skipped for missing images); the 10-fold protocol '
        f'needs at least 10']
    few.write_text('10 1\nperson_000 1 2 3 4 5\n')
    problems = preflight.check_tasks(str(root), ['face_verification'], None, layout='face',
                                     pairs_file=str(few))
    assert len(problems) == 1 and f'{few}, line 2: 6 fields' in problems[0]
    # a task named otherwise is the verification task when told so
    os.rename(root / 'face_verification', root / 'faces')
    assert preflight.check_tasks(str(root), ['faces'], None, layout='face', pairs_file=str(root / 'lfw_pairs.txt'),
                                 verification_task='faces') == []


def test_face_cli_in_process(faces, capsys):
    root = faces
    parser = preflight.get_args_parser()

    def run(*argv):
        args = parser.parse_args(['--data_root', str(root), '--layout', 'face', '--tasks', *FACE_TASKS, *argv])
        preflight.check_args(parser, args)
        return preflight.main(args), capsys.readouterr()

    status, out = run('--pairs_file', str(root / 'lfw_pairs.txt'))
    assert status == 0 and out.err == ''
    assert 'classes face_verification 3, gender 2, emotion 2' in out.out
    assert f'face_verification: 12 LFW pairs in {root / "lfw_pairs.txt"} (1 skipped for missing images)' in out.out
    status, out = run('--pairs_file', str(root / 'none.txt'))  # the default face_data/... is absent too
    lines = out.err.splitlines()
    assert status == 1 and len(lines) == 1 and lines[0].startswith('error: preflight: ')
    assert f'no pairs file {root / "none.txt"}' in lines[0]
    assert 'docs/experiment3.md "Data"' in lines[0] and 'PAIRS_FILE' in lines[0]


# ----- the command line -----------------------------------------------------------------------------
def _cli(*argv):
    return subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'preflight.py'), *argv],
                          capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120)


@pytest.mark.slow  # starts processes
def test_cli_ok(data):
    root, goals = data
    proc = _cli('--data_root', str(root), '--num_classes', '5', '--tasks', *TASKS, '--goals_file', str(goals))
    assert proc.returncode == 0 and proc.stderr == ''
    assert proc.stdout.startswith('preflight: 3 tasks OK (') and len(proc.stdout.splitlines()) == 1


@pytest.mark.slow  # starts processes
def test_cli_reports_every_problem_in_one_line(data):
    root, goals = data
    shutil.rmtree(root / 'test' / 'toy_task_2' / 'class_4')
    _write_goals(goals, ['toy_task_1', 'toy_task_2', 'toy_task_9'])
    proc = _cli('--data_root', str(root), '--num_classes', '5', '--tasks', *TASKS, 'toy_task_9',
                '--goals_file', str(goals))
    assert proc.returncode == 1 and proc.stdout == ''
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: preflight: ')
    for problem in (f'toy_task_9: no folder {root / "train" / "toy_task_9"}',
                    f'toy_task_2: 4 classes in {root / "test" / "toy_task_2"}, NUM_CLASSES is 5',
                    f'toy_task_3: no goal in {goals}'):
        assert f' {problem};' in lines[0], problem
    assert 'baseline_cifar100.sh' in lines[0] and 'DATA_ROOT' in lines[0]  # what to do


@pytest.mark.parametrize('argv, message', [
    (['--num_classes', 'five', '--tasks', 'a'], 'invalid int value'),
    (['--num_classes', '5', '3', '--tasks', 'a', 'b', 'c'], '2 values of --num_classes for 3 tasks'),
    (['--num_classes', '0', '--tasks', 'a'], 'at least 1'),
])
def test_cli_bad_flags(tmp_path, capsys, argv, message):
    """A bad flag, too, is one 'error: preflight:' line and exit 1 (in process: no torch start-up)."""
    parser = preflight.get_args_parser()
    with pytest.raises(SystemExit) as exit_info:
        preflight.check_args(parser, parser.parse_args(['--data_root', str(tmp_path), *argv]))
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 1 and len(lines) == 1
    assert lines[0].startswith('error: preflight: ') and message in lines[0]


# ----- the experiment scripts stop before any training -------------------------------------------------
@pytest.mark.slow  # starts processes
@pytest.mark.parametrize('script', ['CPG_cifar100_scratch_mul_1.5.sh', 'baseline_cifar100.sh'])
def test_scripts_stop_before_training(data, tmp_path, script):
    """TASKS with a task that has no data and one without goal: the script stops at once, naming both."""
    root, goals = data
    _write_goals(goals, ['toy_task_1', 'toy_task_9'])
    checkpoints = tmp_path / 'checkpoints'
    env = subprocess_env(DATA_ROOT=root, TASKS='toy_task_1 toy_task_9 toy_task_3', GOALS_FILE=goals,
                         CHECKPOINT_ROOT=checkpoints, DEVICE='cpu', BASE_WIDTH=0.0625, WORKERS=0,
                         BASELINE_EPOCHS=1, FINETUNE_EPOCHS=1, PRUNE_EPOCHS=1, RETRAIN_EPOCHS=1,
                         PRUNING_RATIOS='0.5', NPROC=1)
    proc = subprocess.run(['bash', os.path.join('experiment1', script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert f'toy_task_9: no folder {root / "train" / "toy_task_9"}' in proc.stderr
    if script.startswith('CPG'):  # the baseline writes the goals: it does not check them
        assert f'toy_task_3: no goal in {goals}' in proc.stderr
    trained = [os.path.join(folder, name) for folder, names, _ in os.walk(checkpoints)
               for name in names if name.startswith('toy_task')]
    assert trained == []
