"""Every compared method's script end to end on 3 toy tasks, as users run them: each ends with
its RESULTS_FILE (method, experiment, per-task accuracy; for the continual methods the final
model reproduces every task's accuracy when learned).

CI runs a representative subset (PackNet on experiment 1, Piggyback on experiment 2: the two new
policies); the others are marked `long` (docs/tests.md).
"""
import json
import os

import pytest

from cpg_testlib import make_toy_data, run_script, subprocess_env, tail

pytestmark = pytest.mark.slow

CIFAR_TASKS = ('toy_task_1', 'toy_task_2', 'toy_task_3')
FG_TASKS = ('toy_a_cropped', 'toy_b', 'toy_c')
FACE_TASKS = ('face_verification', 'gender', 'emotion')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('method_data')
    return {
        1: make_toy_data(root / 'cifar', train=16, test=8, classes=3),
        2: make_toy_data(root / 'fg', train=12, test=6, layout='finegrained', task_names=list(FG_TASKS),
                         classes=3, size=36),
        3: make_toy_data(root / 'face', train=12, test=6, layout='face', task_names=list(FACE_TASKS),
                         classes=3, size=16, identities=6, lfw_people=10, lfw_images=3, pairs=40),
    }


def _env(data, tmp_path, experiment, **extra):
    knobs = dict(WORKERS='0', NPROC='1', RESUME_EVERY_MINUTES='0', CHECKPOINT_ROOT=str(tmp_path / 'ckpt'),
                 RESULTS_FILE=str(tmp_path / 'results.json'), PRETRAINED_PATH='', BASELINE_EPOCHS='2',
                 FINETUNE_EPOCHS='2', PATIENCE='1', BASELINE_PATIENCE='1', BATCH_SIZE='16',
                 SCRATCH_GOALS_FILE=str(tmp_path / 'scratch_goals.json'))
    if experiment == 1:
        knobs.update(DATA_ROOT=data[1], TASKS=' '.join(CIFAR_TASKS), NUM_CLASSES='3', BASE_WIDTH='0.0625',
                     PACKNET_RETRAIN_EPOCHS='2', PACKNET_GATE='0', PIGGYBACK_EPOCHS='2', PRUNE_EPOCHS='1',
                     PRUNING_INTERVAL='1', GOALS_FILE=str(tmp_path / 'goals.json'))
    elif experiment == 2:
        knobs.update(DATA_ROOT=data[2], TASKS=' '.join(FG_TASKS), BASE_WIDTH='0.0625', IMAGE_SIZE='32',
                     PACKNET_EPOCHS='2', PACKNET_RETRAIN_EPOCHS='1', PIGGYBACK_EPOCHS='2',
                     PROGRESSIVE_EPOCHS='2', GOALS_FILE=str(tmp_path / 'goals.json'))
    else:
        knobs.update(DATA_ROOT=data[3], TASKS=' '.join(FACE_TASKS), AGE_FOLDS='', BASE_WIDTH='0.0625',
                     IMAGE_SIZE='16', PAIRS_FILE=os.path.join(data[3], 'lfw_pairs.txt'),
                     GOALS_FILE=str(tmp_path / 'goals.json'))
    knobs.update(extra)
    return subprocess_env(**knobs)


CASES = [  # (script, experiment, method, continual, representative)
    ('experiment1/PackNet_cifar100.sh', 1, 'PackNet', True, True),
    ('experiment1/Piggyback_cifar100.sh', 1, 'Piggyback', True, False),
    ('experiment2/Piggyback_imagenet.sh', 2, 'Piggyback', True, True),
    ('experiment2/PackNet_imagenet.sh', 2, 'PackNet', True, False),
    ('experiment2/ProgressiveNet_imagenet.sh', 2, 'ProgressiveNet', True, False),
    ('experiment2/scratch_imagenet.sh', 2, 'scratch', False, False),
    ('experiment3/scratch_face.sh', 3, 'scratch', False, False),
]


@pytest.mark.parametrize('script, experiment, method, continual', [
    pytest.param(*case[:4], marks=() if case[4] else pytest.mark.long, id=f'{case[2]}-exp{case[1]}')
    for case in CASES])
def test_method_script_ends_with_its_results_file(data, tmp_path, script, experiment, method, continual):
    env = _env(data, tmp_path, experiment)
    proc = run_script(script, env, timeout=900)
    assert proc.returncode == 0, tail(proc)
    assert 'Traceback' not in proc.stdout + proc.stderr
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['method'] == method and results['experiment'] == experiment
    names = [row['task'] for row in results['tasks']]
    tasks = {1: CIFAR_TASKS, 2: FG_TASKS, 3: FACE_TASKS}[experiment]
    assert names == list(tasks)
    assert results['checkpoint_mb'] > 0 and results['compact_mb'] > 0
    for row in results['tasks']:
        assert 0.0 <= row['accuracy'] <= 1.0
        if continual:   # the final model reproduces every task's accuracy when it was learned
            assert row['accuracy'] == row['accuracy_when_learned'], row
    if not continual:   # one network per task: the sizes add up
        assert results['networks'] == len(tasks)
    proc = run_script(script, env, timeout=900)   # a rerun skips every finished task
    assert proc.returncode == 0, tail(proc)
    assert 'Phase A:' not in proc.stdout
