"""Experiment 3's script under NPROC=2 (torchrun, gloo on CPU): face verification's Phase A
(AngleLoss through DistributedDataParallel: the head returns a pair) and pruning stages, with the
LFW protocol on every rank, end like one process: the same statuses and record, the stage
checkpoints with the same task table, and AngleLoss's step counted once per global batch.
"""
import json
import os

import pytest

from cpg_testlib import make_toy_data, run_script, subprocess_env, tail
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

SCRIPT = os.path.join('experiment3', 'FvGeEm_CPG_face.sh')


@pytest.fixture(scope='module')
def face_data(tmp_path_factory):
    out = tmp_path_factory.mktemp('face_ddp_data')
    return make_toy_data(out, train=16, test=4, layout='face', task_names=['face_verification'], classes=3,
                         size=16, identities=6, lfw_people=10, lfw_images=3, pairs=40)


def _run(data, out, nproc):
    out.mkdir(parents=True, exist_ok=True)
    (out / 'goals.json').write_text(json.dumps({'face_verification': '0.0000'}))
    env = subprocess_env(
        DATA_ROOT=data, TASKS='face_verification', AGE_FOLDS='', PAIRS_FILE=os.path.join(data, 'lfw_pairs.txt'),
        PRETRAINED_PATH='', BASE_WIDTH='0.0625', IMAGE_SIZE='16', FINETUNE_EPOCHS='2', PATIENCE='1',
        PRUNE_EPOCHS='2', PRUNING_INTERVAL='1', PRUNING_FREQUENCY='2', PRUNING_RATIOS='0.5', BATCH_SIZE='16',
        WORKERS='0', NPROC=str(nproc), DEVICE='cpu', RESUME_EVERY_MINUTES='0',
        CHECKPOINT_ROOT=str(out / 'checkpoints'), GOALS_FILE=str(out / 'goals.json'),
        RESULTS_FILE=str(out / 'results.json'), TARGET_TASK_ID='1')
    proc = run_script(SCRIPT, env, timeout=600)
    assert proc.returncode == 0, tail(proc)
    assert 'Traceback' not in proc.stdout + proc.stderr
    return out / 'checkpoints' / 'CPG' / 'experiment3' / 'spherenet20' / 'face_verification'


def test_torchrun_nproc_2_ends_like_one_process(face_data, tmp_path):
    one = _run(face_data, tmp_path / 'one', 1)
    two = _run(face_data, tmp_path / 'two', 2)
    for stage in ('scratch', os.path.join('gradual_prune', '0.5')):
        r1 = json.loads((one / stage / 'result.json').read_text())
        r2 = json.loads((two / stage / 'result.json').read_text())
        assert r1['status'] == r2['status'] == 0, (stage, r1, r2)
        assert 0.0 <= r2['accuracy'] <= 1.0
        t1 = load_checkpoint(str(one / stage))['tasks'][0]
        t2 = load_checkpoint(str(two / stage))['tasks'][0]
        assert t1['head'] == t2['head'] == 'angle'
        # the global batch is split over the ranks: the same number of steps, so the same λ
        assert t1['objective_state'] == t2['objective_state'] and t2['objective_state']['step'] > 0
        val = json.loads((two / stage / 'log.jsonl').read_text().splitlines()[-1])['val']
        assert val['pairs'] == 40 and 'accuracy_std' in val
    assert (json.loads((one / 'gradual_prune' / 'record.txt').read_text()).keys()
            == json.loads((two / 'gradual_prune' / 'record.txt').read_text()).keys() == {'0.0', '0.5'})
