"""Experiment 1's real bash scripts end to end on 3 toy tasks, the way users run them.

One uninterrupted run is the reference. Task 2's goal is unreachable: it misses it at width 1.0,
grows to 1.5, is accepted there and the must-prune rule stops its pruning at 0.5 (exit 6). Task 3
then starts at 1.5 and prunes to 0.9. The same sequence is then run
  * killed with SIGKILL (whole process group) at seeded moments, rerun until it finishes, and
  * with NPROC=2 through torchrun (gloo on CPU),
and both must end where the reference ended.
"""
import glob
import json
import os
import random
import re
import shutil
import subprocess

import pytest
import torch

from cpg_testlib import REPO, contradict_test_split, kill_script_when, subprocess_env
from utils.checkpoint import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.slow

TASKS = ('toy_task_1', 'toy_task_2', 'toy_task_3')
GOALS = {'toy_task_1': '0.0000', 'toy_task_2': '1.0000', 'toy_task_3': '0.0000'}
ARCH_DIR = os.path.join('CPG', 'experiment1', 'scratch_mul_1.5', 'custom_vgg_cifar100')
SCRIPT = os.path.join('experiment1', 'CPG_cifar100_scratch_mul_1.5.sh')


def _env(toy_data, out, **extra):
    """Experiment-1 knobs shrunk for CPU: the suite's tiny width, 5/2/2 epochs, two pruning stages,
    a resume state after every epoch; the train-accuracy gate is off so that the control flow
    depends only on the goals (growth and must-prune for task 2, nowhere else)."""
    (out / 'goals.json').write_text(json.dumps(GOALS))
    knobs = dict(
        DATA_ROOT=toy_data, TASKS=' '.join(TASKS), BASE_WIDTH='0.0625', FINETUNE_EPOCHS='5',
        PRUNE_EPOCHS='2', RETRAIN_EPOCHS='2', PRUNING_INTERVAL='1', PRUNING_RATIOS='0.5 0.9',
        CHECKPOINT_ROOT=str(out / 'checkpoints'), GOALS_FILE=str(out / 'goals.json'),
        RESULTS_FILE=str(out / 'results.json'), TRAIN_ACC_GATE='0', WORKERS='0', NPROC='1',
        RESUME_EVERY_MINUTES='0')
    knobs.update(extra)
    return subprocess_env(**knobs)


def _run(script, env, timeout=600):
    return subprocess.run(['bash', script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _tail(proc, n=3000):
    return f'exit {proc.returncode}\nstdout: {proc.stdout[-n:]}\nstderr: {proc.stderr[-n:]}'


def _complete(toy_data, out, **extra):
    """Run the CPG script and the inference script to the end; returns (env, root)."""
    env = _env(toy_data, out, **extra)
    proc = _run(SCRIPT, env)
    assert proc.returncode == 0, _tail(proc)
    assert 'Traceback' not in proc.stdout + proc.stderr
    proc = _run(os.path.join('experiment1', 'inference_CPG_cifar100.sh'), env, timeout=180)
    assert proc.returncode == 0, _tail(proc)
    return env, out / 'checkpoints' / ARCH_DIR


def _outcome(root):
    """Per task: accepted width, chosen pruning ratio, retrain kept or not."""
    outcome = {}
    for task in TASKS:
        chosen = json.loads((root / task / 'gradual_prune' / 'chosen.json').read_text())
        promoted = root / task / 'retrain' / 'promoted.json'
        outcome[task] = {'width': float((root / task / 'width').read_text()),
                         'ratio': chosen['chosen_pruning_ratio'],
                         'retrain_kept': json.loads(promoted.read_text())['retrained_model_kept']
                         if promoted.exists() else None}
    return outcome


def _results(out):
    rows = json.loads((out / 'results.json').read_text())['tasks']
    return [{k: v for k, v in row.items()} for row in rows]


def _final_state(root):
    return load_checkpoint(str(root / TASKS[-1] / 'gradual_prune'))


@pytest.fixture(scope='module')
def toy_data(toy_data, tmp_path_factory):
    """The session's toy tasks, copied, with task 2's goal of 1.0 out of reach."""
    out = tmp_path_factory.mktemp('toy_unreachable') / 'data'
    shutil.copytree(toy_data, out)
    contradict_test_split(str(out), 'toy_task_2')
    return str(out)


@pytest.fixture(scope='module')
def reference(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp('reference')
    env, root = _complete(toy_data, out)
    return out, env, root


def test_scripts_learn_grow_prune_and_reproduce_every_task(reference):
    out, env, root = reference
    for task in TASKS:
        assert (root / task / 'DONE').is_file(), task
        assert (root / task / 'gradual_prune' / 'checkpoint.pth.tar').is_file(), task
        # once DONE, the stage copies are dropped; their results stay for replay
        assert not glob.glob(str(root / task / 'gradual_prune' / '*' / 'checkpoint.pth.tar')), task
        assert glob.glob(str(root / task / 'gradual_prune' / '*' / 'result.json')), task

    # the growth is in task 2's log: Phase A at 1.0 exits 2, the retry runs at 1.5 and is accepted
    log2 = (root / 'toy_task_2' / 'train.log').read_text()
    first = log2.index("Phase A: task 2 'toy_task_2', width multiplier 1.0")
    widen = log2.index('widen the network and retry (exit 2)')
    retry = log2.index("Phase A: task 2 'toy_task_2', width multiplier 1.5")
    assert first < widen < retry
    assert re.search(r'goal missed \(val [0-9.]+ < goal 1.0000 - margin 0.0[^)]*\) at maximum width: accept', log2[retry:])
    assert 'must-prune rule: required sparsity 0.50 reached; stop' in log2
    for task in ('toy_task_1', 'toy_task_3'):
        assert 'exit 2' not in (root / task / 'train.log').read_text(), task
    assert not (root / 'toy_task_2' / 'gradual_prune' / '0.9').exists()  # the loop stopped at 0.5
    outcome = _outcome(root)
    assert {t: (o['width'], o['ratio']) for t, o in outcome.items()} == {
        'toy_task_1': (1.0, 0.9), 'toy_task_2': (1.5, 0.5), 'toy_task_3': (1.5, 0.9)}
    assert outcome['toy_task_1']['retrain_kept'] is None  # task 1 picks nothing: no retrain
    assert not (root / 'toy_task_1' / 'retrain').exists()

    rows = _results(out)
    assert [r['task'] for r in rows] == list(TASKS)
    for row in rows:  # unforgetting: the final model reproduces every task's accuracy exactly
        assert row['accuracy'] == row['accuracy_when_learned'], row
        assert row['accuracy'] > 0.2, row  # learned something (chance is 0.2)
    assert [r['network_width_multiplier'] for r in rows] == [1.0, 1.5, 1.5]
    assert [r['pruning_ratio'] for r in rows] == [0.9, 0.5, 0.9]

    final = _final_state(root)
    assert final['network_width_multiplier'] == 1.5
    model = model_from_checkpoint(final)
    for _, layer in model.masked_layers():
        assert layer.owner.dtype == torch.uint8 and int(layer.owner.max()) <= 3
    assert not any(k.endswith('pick_score') for k in final['model'])


def test_rerun_after_done_touches_nothing(reference):
    """A rerun of a finished sequence skips every task: no python stage starts, no file changes."""
    out, env, root = reference
    files = {p: (os.stat(p).st_mtime_ns, os.path.getsize(p))
             for p in glob.glob(str(root / '**' / '*'), recursive=True) if os.path.isfile(p)}
    proc = _run(SCRIPT, env)
    assert proc.returncode == 0, _tail(proc)
    for task in TASKS:
        assert f'=== {task}: already learned, skipping' in proc.stdout
    assert 'Phase A' not in proc.stdout and 'already done' not in proc.stdout
    after = {p: (os.stat(p).st_mtime_ns, os.path.getsize(p))
             for p in glob.glob(str(root / '**' / '*'), recursive=True) if os.path.isfile(p)}
    assert after == files


# ----- kill -9 anywhere, rerun, same result --------------------------------------------------------
def _file(root, task, *parts):
    return root.joinpath(task, *parts)


# (name, task, predicate(root) -> True when the kill is due, largest random delay in seconds)
KILL_POINTS = [
    ('early', 'toy_task_1', lambda r: True, 6.0),
    ('phase_a_of_growing_task', 'toy_task_2',
     lambda r: _file(r, 'toy_task_2', 'width').exists()
     and _file(r, 'toy_task_2', 'width').read_text().strip() == '1.5'
     and _file(r, 'toy_task_2', 'scratch', 'resume.pth.tar').exists(), 0.5),
    ('pruning_stage', 'toy_task_2',
     lambda r: _file(r, 'toy_task_2', 'gradual_prune', '0.5', 'log.jsonl').exists(), 0.3),
    ('after_ratio_choice', 'toy_task_2',
     lambda r: _file(r, 'toy_task_2', 'gradual_prune', 'chosen.json').exists(), 0.0),
    ('retrain', 'toy_task_2', lambda r: _file(r, 'toy_task_2', 'retrain', 'log.jsonl').exists(), 0.3),
    ('before_done', 'toy_task_2', lambda r: _file(r, 'toy_task_2', 'retrain', 'promoted.json').exists(), 0.0),
    ('before_done', 'toy_task_3', lambda r: _file(r, 'toy_task_3', 'retrain', 'promoted.json').exists(), 0.0),
]


def _where(root, task):
    """What a kill interrupted, read from the files (for the coverage check and the report)."""
    t = lambda *p: _file(root, task, *p).exists()  # noqa: E731
    if t('DONE'):
        return 'done'
    if t('retrain', 'promoted.json'):
        return 'before_done'
    if t('retrain', 'log.jsonl') or t('retrain', 'resume.pth.tar'):
        return 'retrain'
    if t('gradual_prune', 'chosen.json'):
        return 'after_ratio_choice'
    if glob.glob(str(_file(root, task, 'gradual_prune', '*', 'log.jsonl'))):
        return 'pruning_stage'
    phase_a = _file(root, task, 'scratch', 'result.json')
    if phase_a.exists() and json.loads(phase_a.read_text())['status'] == 0:
        return 'after_phase_a'
    width = _file(root, task, 'width')
    return f'phase_a_at_{width.read_text().strip()}' if width.exists() else 'not_started'


def _epochs_run(root):
    """{(stage folder, run id, epoch): how often it was trained} from every log.jsonl."""
    counts = {}
    for path in glob.glob(str(root / '**' / 'log.jsonl'), recursive=True):
        for line in open(path):
            entry = json.loads(line)
            key = (os.path.dirname(path), entry['run'], entry['epoch'])
            counts[key] = counts.get(key, 0) + 1
    return counts


def _finished_runs(root):
    """{stage folder: run id} of every stage whose result.json exists."""
    return {os.path.dirname(p): json.loads(open(p).read()).get('run')
            for p in glob.glob(str(root / '**' / 'result.json'), recursive=True)}


def test_kill_9_at_any_moment_then_rerun_gives_the_same_result(reference, toy_data, tmp_path):
    ref_out, _, ref_root = reference
    env = _env(toy_data, tmp_path)
    root = tmp_path / 'checkpoints' / ARCH_DIR
    rng = random.Random(20191208)
    kills, reruns, wheres = [], 0, []
    for name, task, due, max_delay in KILL_POINTS:
        if name == 'before_done' and any(k[0] == 'before_done' and k[2] == 'before_done' for k in kills):
            continue  # the gap before DONE was already hit on task 2
        finished = _finished_runs(root)
        trained_before = _epochs_run(root)
        kill_script_when(SCRIPT, env, lambda: due(root), rng.uniform(0.0, max_delay), name,
                         before_kill=lambda: wheres.append(_where(root, task)))
        reruns += 1
        where = wheres[-1]
        kills.append((name, task, where))
        # a finished stage is never trained again: no new epoch under its run id
        trained = _epochs_run(root)
        for (folder, run, epoch), count in trained.items():
            if finished.get(folder) == run:
                assert count == trained_before.get((folder, run, epoch), 0), (name, folder, epoch)

    proc = _run(SCRIPT, env)  # the last rerun goes to the end
    assert proc.returncode == 0, _tail(proc)
    proc = _run(os.path.join('experiment1', 'inference_CPG_cifar100.sh'), env, timeout=180)
    assert proc.returncode == 0, _tail(proc)

    report = ', '.join(f'{n}@{t}:{w}' for n, t, w in kills)
    print(f'kills: {report}')
    landed = {w for _, _, w in kills}
    for point in ('phase_a_at_1.5', 'pruning_stage', 'after_ratio_choice', 'retrain', 'before_done'):
        assert point in landed, f'no kill landed in {point}: {report}'

    # the same figures and a bitwise-equal final model
    assert _results(tmp_path) == _results(ref_out)
    assert _outcome(root) == _outcome(ref_root)
    got, want = _final_state(root), _final_state(ref_root)
    assert got['tasks'] == want['tasks']
    assert got['model'].keys() == want['model'].keys()
    for key, value in want['model'].items():
        assert torch.equal(got['model'][key], value), key
    # resumes, not restarts: each kill cost at most the epoch it interrupted
    repeated = sum(count - 1 for count in _epochs_run(root).values())
    assert repeated <= len(kills), f'{repeated} epochs trained twice over {len(kills)} kills'


@pytest.mark.long   # ~4 min on 2 cores; CI keeps the torchrun runs of experiments 2 and 3
def test_torchrun_nproc_2_ends_like_one_process(reference, toy_data, tmp_path):
    """NPROC=2 launches every stage through torchrun (gloo on CPU): torchrun reports statuses 2 and
    6 as 1, yet the script still grows task 2 and stops its pruning, as the reference does."""
    _, _, ref_root = reference
    env, root = _complete(toy_data, tmp_path, NPROC='2', DEVICE='cpu')
    assert _outcome(root) == _outcome(ref_root)
    rows = _results(tmp_path)
    for row in rows:
        assert row['accuracy'] == row['accuracy_when_learned'], row
    assert [r['network_width_multiplier'] for r in rows] == [1.0, 1.5, 1.5]
    assert [r['pruning_ratio'] for r in rows] == [0.9, 0.5, 0.9]
    log2 = (root / 'toy_task_2' / 'train.log').read_text()
    assert 'widen the network and retry (exit 2)' in log2 and 'must-prune rule' in log2
