"""Experiment 3's real bash scripts end to end on toy faces (16x16 JPEGs), as users run them:
TARGET_TASK_ID=all as the reference (face verification -> gender -> emotion -> age0 and age1,
each fold branching from the picked emotion model), then the paper's table over the folds; the
one-task-per-run workflow with picks by hand (task 1 killed -9 in a pruning stage on the way);
kill -9 and rerun of `all` through the age folds; the four-argument inference interface; the
baseline script.

Every stage is a new Python process (~4 s on a CPU, mostly importing torch), so the chains run
side by side on the 2 cores: the `background` fixture starts the hand workflow, the kill chain
and the baseline as jobs (threads running the scripts) before the reference runs; the first two
wait for the reference where they need it (its picks; its learned tasks 1..3, which the kill chain
copies so that it repeats only the folds), and each test joins the job it reads.
All goals are 0, so every task reaches its goal at width 1.0 and the automatic rule picks the
highest ratio. (NPROC=2 is left to experiment 2's end-to-end test: here it would cost ~30 s.)
"""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from cpg_testlib import (DEVICE, REPO, assert_same_state, kill_script_when, make_toy_data, run_pick,
                         run_script, subprocess_env, tail)
from utils.checkpoint import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.slow

TASKS = ('face_verification', 'gender', 'emotion')
FOLDS = (0, 1)
AGES = tuple(f'age{f}' for f in FOLDS)
RATIOS = ('0.5', '0.9')
ARCH_DIR = os.path.join('CPG', 'experiment3', 'spherenet20')
SCRIPT = os.path.join('experiment3', 'FvGeEm_CPG_face.sh')
FOLD0_SCRIPT = os.path.join('experiment3', 'FvGeEmAg0_CPG_face.sh')
INFERENCE = os.path.join('experiment3', 'inference_FvGeEmAg.sh')
ALL_FOLDS_INFERENCE = os.path.join('experiment3', 'inference_checkpoints_FvGeEmAg.sh')
BASELINE = os.path.join('experiment3', 'baseline_face.sh')
# GPU_ID of the inference scripts for the test device (the models are evaluated where they trained)
GPU_ID = 'cpu' if DEVICE == 'cpu' else (DEVICE.split(':')[1] if ':' in DEVICE else '0')
TASK4_KEY = re.compile(r'(^heads\.4\.|\.biases\.4$|\.per_task\.4\.|\.pick_bits_4$)')


@pytest.fixture(scope='module')
def face_data(tmp_path_factory):
    out = tmp_path_factory.mktemp('face_data')
    return make_toy_data(out, train=24, test=8, layout='face', task_names=list(TASKS + AGES), classes=3,
                         size=16, identities=8, lfw_people=10, lfw_images=3, pairs=40)


def _env(data, out, **extra):
    """Experiment-3 knobs shrunk for CPU: SphereNet20 at 1/16 width on 16x16 faces, 3 epochs of
    Phase A with patience 1, two pruning stages of 2 epochs (interval 1), a resume state after
    every epoch, two age folds; no face_weight.pth (task 1 trains from scratch)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / 'goals.json').write_text(json.dumps({t: '0.0000' for t in TASKS + AGES}))
    knobs = dict(
        DATA_ROOT=data, PAIRS_FILE=os.path.join(data, 'lfw_pairs.txt'), AGE_FOLDS=' '.join(map(str, FOLDS)),
        PRETRAINED_PATH='', BASE_WIDTH='0.0625', IMAGE_SIZE='16', FINETUNE_EPOCHS='3', PATIENCE='1',
        PRUNE_EPOCHS='2', PRUNING_INTERVAL='1', PRUNING_FREQUENCY='2', PRUNING_RATIOS=' '.join(RATIOS),
        LR='5e-3', PRUNE_LR='1e-3', GOAL_MARGIN='0.005', BATCH_SIZE='16', WORKERS='0', NPROC='1',
        RESUME_EVERY_MINUTES='0', CHECKPOINT_ROOT=str(out / 'checkpoints'), GOALS_FILE=str(out / 'goals.json'),
        RESULTS_FILE=str(out / 'logs' / 'results.json'), GPU_ID=GPU_ID)
    knobs.update(extra)
    return subprocess_env(**knobs)


def _root(out):
    return out / 'checkpoints' / ARCH_DIR


def _chosen(root, task):
    return json.loads((root / task / 'gradual_prune' / 'chosen.json').read_text())['chosen_pruning_ratio']


def _final(root, task):
    return load_checkpoint(str(root / task / 'gradual_prune'))


def _ok(proc):
    assert proc.returncode == 0, tail(proc)
    assert 'Traceback' not in proc.stdout + proc.stderr, tail(proc)


class Job:
    """A chain of script runs in a background thread, so that it overlaps the reference run.
    result() waits for it and re-raises its failure (assertions included) in the test that reads
    it; cancel() (module teardown) kills the script it is running."""

    def __init__(self, name, fn, *args):
        self.name, self.value, self.error, self.proc = name, None, None, None
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(fn, args), name=name, daemon=True)
        self.thread.start()

    def _main(self, fn, args):
        try:
            self.value = fn(self, *args)
        except BaseException as exc:  # noqa: B902 (pytest.fail's Failed too)
            self.error = exc

    def check(self):
        if self.cancelled.is_set():
            raise RuntimeError(f'{self.name}: cancelled')

    def run(self, script, env, *args, timeout=600, **extra):
        """run_script, killable by cancel()."""
        self.check()
        env = dict(env, **{k: str(v) for k, v in extra.items()})
        self.proc = subprocess.Popen(['bash', script, *(str(a) for a in args)], cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.check()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill_when(self, script, env, due, name, before_kill=None):
        """kill_script_when, given up (and the script killed) on cancel()."""
        def checked_due():
            self.check()
            return due()
        kill_script_when(script, env, checked_due, 0.0, f'{self.name}: {name}', before_kill=before_kill)

    def wait_until(self, predicate, what, timeout=900):
        started = time.monotonic()
        while not predicate():
            self.check()
            assert time.monotonic() - started < timeout, f'{self.name}: waited {timeout} s for {what}'
            time.sleep(0.1)

    def result(self, timeout=900):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f'{self.name}: still running after {timeout} s'
        if self.error is not None:
            raise self.error
        return self.value

    def cancel(self):
        self.cancelled.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        self.thread.join(120)


# ----- the hand workflow (test 2) and the kill chain (test 3), run beside the reference -----------
def _hand_workflow(job, data, out, ref_root):
    """The paper's workflow, one task per run, each pick by hand (the reference's ratio, once the
    reference has picked it). Task 1's run is killed -9 in its first pruning stage and run again.
    Returns what the test compares."""
    env = _env(data, out)
    root = _root(out)
    fv = root / TASKS[0]
    stage = fv / 'gradual_prune' / RATIOS[0]
    at_kill = {}
    job.kill_when(SCRIPT, dict(env, TARGET_TASK_ID='1'), lambda: (stage / 'resume.pth.tar').exists(),
                  'task 1 in pruning stage 0.5',
                  before_kill=lambda: at_kill.update(stage_done=(stage / 'result.json').exists()))
    proc = job.run(SCRIPT, env, TARGET_TASK_ID=1)
    _ok(proc)
    assert 'sparsity  accuracy' in proc.stdout and 'suggests' in proc.stdout, tail(proc)
    assert f'tools/pick_pruning_ratio.py --task_folder {fv} --baseline_acc_file {env["GOALS_FILE"]} ' \
           '--ratio <ratio>' in proc.stdout, tail(proc)
    assert f'then: TARGET_TASK_ID=2 bash {SCRIPT}' in proc.stdout
    if not at_kill['stage_done']:  # killed after an epoch of the stage: the rerun continued there
        assert f'resuming from {stage / "resume.pth.tar"}' in (fv / 'train.log').read_text()

    def pick(task):
        chosen = ref_root / task / 'gradual_prune' / 'chosen.json'
        job.wait_until(chosen.exists, f'the reference to pick {task}')
        ratio = _chosen(ref_root, task)
        picked = run_pick(env, root, task, ratio)
        assert picked.returncode == 0, tail(picked)
        return ratio

    refused = job.run(SCRIPT, env, TARGET_TASK_ID=2)  # task 1 not picked yet: refuse and say how
    assert refused.returncode == 1, tail(refused)
    assert f'task 1 ({TASKS[0]}) has no picked pruning ratio yet' in refused.stderr, tail(refused)
    assert f'tools/pick_pruning_ratio.py --task_folder {fv} ' in refused.stderr, tail(refused)
    assert not (root / TASKS[1]).exists()
    picks = {TASKS[0]: pick(TASKS[0])}
    for n, task in ((2, TASKS[1]), (3, TASKS[2])):
        proc = job.run(SCRIPT, env, TARGET_TASK_ID=n)
        _ok(proc)
        assert 'sparsity  accuracy' in proc.stdout and f'--task_folder {root / task} ' in proc.stdout, tail(proc)
        if n == 2:
            picks[task] = pick(task)
    assert f'then: bash {FOLD0_SCRIPT}' in proc.stdout, tail(proc)  # after task 3: the age folds
    refused = job.run(FOLD0_SCRIPT, env)  # the fold branches from the picked emotion model: none yet
    assert refused.returncode == 1, tail(refused)
    assert f'task 3 ({TASKS[2]}) has no picked pruning ratio yet' in refused.stderr, tail(refused)
    assert not (root / AGES[0]).exists()
    picks[TASKS[2]] = pick(TASKS[2])
    proc = job.run(FOLD0_SCRIPT, env)
    _ok(proc)
    assert f'task 4/4: {AGES[0]}' in proc.stdout and f'--task_folder {root / AGES[0]} ' in proc.stdout, tail(proc)
    assert f'then: bash {ALL_FOLDS_INFERENCE}' in proc.stdout, tail(proc)
    picks[AGES[0]] = pick(AGES[0])
    # inference of a stage ratio whose checkpoint is still there (the fold is picked, not DONE)
    record = json.loads((root / AGES[0] / 'gradual_prune' / 'record.txt').read_text())
    other = next(r for r in RATIOS if float(r) != picks[AGES[0]])
    assert (root / AGES[0] / 'gradual_prune' / other / 'checkpoint.pth.tar').is_file()
    results = out / 'logs' / 'stage.json'
    stage_run = job.run(INFERENCE, dict(env, FOLD_RESULTS=str(results)), GPU_ID, other, 0, out / 'logs' / 'stage.log')
    _ok(stage_run)
    rows = {r['task']: r for r in json.loads(results.read_text())['tasks']}
    assert list(rows) == list(TASKS) + [AGES[0]]
    assert round(rows[AGES[0]]['accuracy'], 4) == record[other]  # the stage's own model
    assert rows[AGES[0]]['pruning_ratio'] == float(other)
    for row in rows.values():
        assert row['accuracy'] == row['accuracy_when_learned'], row
    return SimpleNamespace(root=root, picks=picks)


def _kill_chain(job, data, out, ref_root):
    """TARGET_TASK_ID=all through the age folds, killed -9 three times: in age0's Phase A after a
    resume state exists, between age0's pick and its DONE, in age1's first pruning stage; then run
    to its end. Tasks 1..3 are the reference's (copied once the reference has learned them): the
    kill chain repeats only the folds (task 1's kill is in the hand workflow)."""
    env = _env(data, out, TARGET_TASK_ID='all')
    root = _root(out)
    job.wait_until((ref_root / AGES[0]).exists, 'the reference to finish emotion')
    for task in TASKS:
        shutil.copytree(ref_root / task, root / task)
    age0, age1 = root / AGES[0], root / AGES[1]
    seen = {}

    def note(**paths):
        def before_kill():
            seen.update({name: path.exists() for name, path in paths.items()})
            chosen = age0 / 'gradual_prune' / 'chosen.json'
            if chosen.exists() and 'chosen' not in seen:
                seen['chosen'] = chosen.read_bytes(), os.stat(chosen).st_mtime_ns
        return before_kill

    job.kill_when(SCRIPT, env, lambda: (age0 / 'scratch' / 'resume.pth.tar').exists(), 'age0 Phase A',
                  before_kill=note(phase_a_done=age0 / 'scratch' / 'result.json'))
    phase_a_done = seen['phase_a_done']
    job.kill_when(SCRIPT, env, lambda: (age0 / 'gradual_prune' / 'chosen.json').exists(),
                  'between the pick of age0 and its DONE', before_kill=note())
    job.kill_when(SCRIPT, env, lambda: (age1 / 'gradual_prune' / RATIOS[0] / 'resume.pth.tar').exists(),
                  'age1 pruning stage 0.5', before_kill=note())
    proc = job.run(SCRIPT, env)
    _ok(proc)
    return SimpleNamespace(root=root, proc=proc, phase_a_done=phase_a_done, chosen_at_kill=seen['chosen'])


def _baseline(job, data, out):
    """baseline_face.sh on face verification and gender (no age fold)."""
    env = _env(data, out, TASKS=' '.join(TASKS[:2]), AGE_FOLDS='', GOALS_FILE=str(out / 'logs' / 'baseline_goals.json'),
               BASELINE_EPOCHS='2', BASELINE_PATIENCE='1', BASELINE_BATCH_SIZE='16', BASELINE_LR='5e-3',
               BASELINE_LR_gender='5e-3')
    assert not os.path.exists(env['GOALS_FILE'])
    return SimpleNamespace(out=out, env=env, proc=job.run(BASELINE, env, timeout=300))


@pytest.fixture(scope='module')
def background(face_data, tmp_path_factory, request):
    """The chains that run beside the reference (started before it): the hand workflow and the
    kill chain, which wait for the reference where they need it, and the baseline."""
    ref_out = tmp_path_factory.mktemp('exp3_reference')
    ref_root = _root(ref_out)
    jobs = SimpleNamespace(ref_out=ref_out)
    for name, fn, args in (('hand', _hand_workflow, (tmp_path_factory.mktemp('exp3_hand'), ref_root)),
                           ('killed', _kill_chain, (tmp_path_factory.mktemp('exp3_kill'), ref_root)),
                           ('baseline', _baseline, (tmp_path_factory.mktemp('exp3_baseline'),))):
        job = Job(name, fn, face_data, *args)
        request.addfinalizer(job.cancel)
        setattr(jobs, name, job)
    return jobs


@pytest.fixture(scope='module')
def reference(face_data, background):
    """TARGET_TASK_ID=all, then the inference of every fold and the paper's table."""
    out = background.ref_out
    env = _env(face_data, out)
    learn = run_script(SCRIPT, env, TARGET_TASK_ID='all')
    _ok(learn)
    inference = run_script(ALL_FOLDS_INFERENCE, env, timeout=300)
    _ok(inference)
    return SimpleNamespace(out=out, env=env, root=_root(out), learn=learn, inference=inference,
                           hand=background.hand, killed=background.killed)


def _assert_same_earlier_tasks(a, b):
    """Two folds' final checkpoints agree bitwise on everything of tasks 1..3: their task table,
    every state-dict entry that is not task 4's, and the shared weights and owners wherever a task
    1..3 owns them (the rest of those tensors is free capacity or task 4's)."""
    assert a['tasks'][:3] == b['tasks'][:3]
    keys = [k for k in a['model'] if not TASK4_KEY.search(k)]
    assert keys == [k for k in b['model'] if not TASK4_KEY.search(k)]
    for key in keys:
        layer = key.rsplit('.', 1)[0]
        if f'{layer}.owner' in a['model'] and key in (f'{layer}.owner', f'{layer}.weight'):
            owner_a, owner_b = a['model'][f'{layer}.owner'], b['model'][f'{layer}.owner']
            earlier = (owner_a >= 1) & (owner_a <= 3)
            assert torch.equal(earlier, (owner_b >= 1) & (owner_b <= 3)), key
            assert torch.equal(a['model'][key][earlier], b['model'][key][earlier]), key
        else:
            assert torch.equal(a['model'][key], b['model'][key]), key
    task4 = [k for k in a['model'] if TASK4_KEY.search(k)]
    assert task4 and any(not torch.equal(a['model'][k], b['model'][k]) for k in task4)  # two folds


@torch.no_grad()
def _outputs(ckpt, tasks):
    """{task id: face embedding (verification) or logits} of fixed images, on the CPU."""
    model = model_from_checkpoint(ckpt).eval()
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = {}
    for task in tasks:
        model.set_task(task)
        out[task] = model.embed(images) if model.tasks[task - 1]['head'] == 'angle' else model(images)
    return out


def test_reference_learns_every_fold_and_forgets_nothing(reference):
    root, out = reference.root, reference.out
    for task in TASKS + AGES:
        assert (root / task / 'DONE').is_file(), task
    assert '=== age fold 1' in reference.learn.stdout
    assert f'=== {TASKS[2]}: already learned, skipping' in reference.learn.stdout  # fold 1 reuses 1..3

    # the paper's table: LFW mean ± std, gender, expression, age as the mean over the folds
    table = reference.inference.stdout
    assert re.search(rf'^{TASKS[0]} +\d+\.\d\d ± \d+\.\d\d$', table, re.M), table
    for task in TASKS[1:]:
        assert re.search(rf'^{task} +\d+\.\d\d$', table, re.M), table
    assert re.search(r'^age \(mean of 2\) +\d+\.\d\d$', table, re.M), table
    combined = json.loads((out / 'logs' / 'results.json').read_text())
    assert [t['task'] for t in combined['tasks']] == list(TASKS) + ['age']
    assert isinstance(combined['tasks'][0]['accuracy_std'], float)
    assert sorted(combined['age_folds']) == list(AGES)
    assert combined['shared_tasks_agree'] is True
    folds = {}
    for fold, age in zip(FOLDS, AGES):
        assert (out / 'logs' / f'FvGeEmAg{fold}.log').stat().st_size > 0
        rows = json.loads((out / 'logs' / f'FvGeEmAg{fold}_results.json').read_text())['tasks']
        assert [r['task'] for r in rows] == list(TASKS) + [age]
        for row in rows:  # unforgetting: the fold's final model reproduces every task as learned
            assert row['accuracy'] == row['accuracy_when_learned'], (fold, row)
        folds[age] = rows
    age_mean = sum(folds[a][3]['accuracy'] for a in AGES) / len(AGES)
    assert combined['tasks'][3]['accuracy'] == pytest.approx(age_mean)

    # both folds branch from one emotion model: tasks 1..3 are bitwise the same in both ...
    final = {age: _final(root, age) for age in AGES}
    _assert_same_earlier_tasks(final[AGES[0]], final[AGES[1]])
    # ... and each earlier task's outputs are those of its own picked model, in both folds
    for n, task in enumerate(TASKS, start=1):
        want = _outputs(_final(root, task), [n])[n]
        for age in AGES:
            assert torch.equal(_outputs(final[age], [n])[n], want), (task, age)


def test_inference_interface_of_one_fold(reference, tmp_path):
    """bash experiment3/inference_FvGeEmAg.sh GPU_ID TARGET_SPARSITY AGEFOLD LOG_PATH on the
    reference: the picked model by name and by number (its stage copy is gone), and one stderr
    line and exit 1 for every bad argument, before any Python stage starts."""
    env, root = reference.env, reference.root
    log = tmp_path / 'logs' / 'fold0.log'
    proc = run_script(INFERENCE, env, GPU_ID, 'picked', 0, log, timeout=300)
    _ok(proc)
    assert re.search(rf'^{TASKS[0]} +\d+\.\d\d ± \d+\.\d\d ', proc.stdout, re.M), tail(proc)
    assert f'{AGES[0]} ' in proc.stdout and log.stat().st_size > 0
    picked = _chosen(root, AGES[1])
    assert not (root / AGES[1] / 'gradual_prune' / str(picked) / 'checkpoint.pth.tar').exists()
    results = tmp_path / 'fold1.json'
    proc = run_script(INFERENCE, dict(env, FOLD_RESULTS=str(results)), GPU_ID, picked, 1, tmp_path / 'fold1.log',
                      timeout=300)
    _ok(proc)
    got = json.loads(results.read_text())['tasks']
    want = json.loads((reference.out / 'logs' / 'FvGeEmAg1_results.json').read_text())['tasks']
    assert [(r['task'], r['accuracy']) for r in got] == [(r['task'], r['accuracy']) for r in want]

    dropped = next(r for r in RATIOS if float(r) != _chosen(root, AGES[0]))  # not picked, copy gone
    assert not (root / AGES[0] / 'gradual_prune' / dropped / 'checkpoint.pth.tar').exists()
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    fresh = tmp_path / 'never' / 'x.log'
    cases = [((GPU_ID, 'picked', 0), 'got 3 argument(s)'),
             (('gpu0', 'picked', 0, fresh), 'GPU_ID=gpu0:'),
             ((GPU_ID, 'abc', 0, fresh), 'TARGET_SPARSITY=abc:'),
             ((GPU_ID, '1.5', 0, fresh), 'TARGET_SPARSITY=1.5: use a pruning ratio between 0 and 1'),
             ((GPU_ID, dropped, 0, fresh), f'TARGET_SPARSITY={dropped}:'),
             ((GPU_ID, 'picked', 'x', fresh), 'AGEFOLD=x:'),
             ((GPU_ID, 'picked', 7, fresh), 'AGEFOLD=7:'),
             ((GPU_ID, 'picked', 0, blocker / 'x.log'), f'LOG_PATH={blocker / "x.log"}:')]
    for args, named in cases:
        proc = run_script(INFERENCE, env, *args, timeout=60)
        assert proc.returncode == 1, (args, tail(proc))
        assert proc.stderr.count('\n') == 1 and proc.stderr.endswith('\n'), (args, tail(proc))
        assert named in proc.stderr, (args, tail(proc))
        assert proc.stdout == '', (args, tail(proc))  # nothing ran: no "=== inference", no table
    assert not fresh.parent.exists()


def test_baseline_writes_every_goal_with_verification_from_lfw(background):
    """baseline_face.sh on face verification and gender: each trained on its own network (face
    verification from scratch with AngleLoss: no face_weight.pth), each accuracy a goal."""
    baseline = background.baseline.result()
    proc, goals = baseline.proc, baseline.env['GOALS_FILE']
    _ok(proc)
    assert f'accuracy goals written to {goals}' in proc.stdout
    written = json.loads(open(goals).read())
    assert sorted(written) == sorted(TASKS[:2])
    base = baseline.out / 'checkpoints' / 'baseline' / 'experiment3' / 'spherenet20'
    for task in TASKS[:2]:
        result = json.loads((base / task / 'result.json').read_text())
        assert written[task] == f'{result["accuracy"]:.4f}', task
    epochs = [json.loads(line) for line in (base / TASKS[0] / 'log.jsonl').read_text().splitlines()]
    assert epochs and all(e['phase'] == 'finetune' for e in epochs)  # trained, not just evaluated
    assert all(e['val']['pairs'] == 40 and 'accuracy_std' in e['val'] for e in epochs)  # LFW protocol
    assert "not the paper's setting" in (base / TASKS[0] / 'train.log').read_text()
    assert "not the paper's setting" not in (base / TASKS[1] / 'train.log').read_text()


def test_one_task_per_run_with_picks_by_hand_equals_all(reference):
    """TARGET_TASK_ID=1, 2, 3 and FvGeEmAg0 with the reference's ratios picked by hand (task 1
    killed -9 once on the way; each refusal before a pick checked): age0's final model is bitwise
    the reference's."""
    hand = reference.hand.result()
    for task in TASKS + AGES[:1]:
        assert hand.picks[task] == _chosen(reference.root, task)
        assert not (hand.root / task / 'DONE').exists()  # picked by hand: DONE is `all`'s mark
    assert json.loads((hand.root / AGES[0] / 'gradual_prune' / 'chosen.json').read_text())['picked_by'] == 'hand'
    assert_same_state(_final(hand.root, AGES[0]), _final(reference.root, AGES[0]))


def test_kill_9_then_rerun_gives_the_same_folds(reference):
    killed = reference.killed.result()
    root, ref_root = killed.root, reference.root
    if not killed.phase_a_done:  # killed after an epoch of Phase A: the rerun continued there
        resume = root / AGES[0] / 'scratch' / 'resume.pth.tar'
        assert f'resuming from {resume}' in (root / AGES[0] / 'train.log').read_text()
    # the pick survives the kill: a rerun keeps it (and marks the fold DONE) instead of picking again
    chosen = root / AGES[0] / 'gradual_prune' / 'chosen.json'
    assert (chosen.read_bytes(), os.stat(chosen).st_mtime_ns) == killed.chosen_at_kill
    for task in TASKS + AGES[:1]:
        assert f'=== {task}: already learned, skipping' in killed.proc.stdout, tail(killed.proc)
    for task in TASKS + AGES:
        assert (root / task / 'DONE').is_file(), task
        assert not list((root / task / 'gradual_prune').glob('*/checkpoint.pth.tar')), task  # copies dropped
    for age in AGES:
        assert _chosen(root, age) == _chosen(ref_root, age)
        assert_same_state(_final(root, age), _final(ref_root, age))

