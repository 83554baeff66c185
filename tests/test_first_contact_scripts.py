"""What a new user meets first, through the experiment scripts as users run them: two runs on one
folder, Ctrl-C and `kill <script>`, an epoch budget of 1, a goal written as a percentage, images
of another size, a run folder moved between reruns, and a full disk."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from cpg_testlib import REPO, make_toy_data, run_script, subprocess_env, tail, wait_lock_free
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TASKS = ('toy_task_1', 'toy_task_2')
BASELINE = os.path.join('experiment1', 'baseline_cifar100.sh')
CPG = os.path.join('experiment1', 'CPG_cifar100_scratch_mul_1.5.sh')
BASE_DIR = os.path.join('baseline', 'experiment1', 'custom_vgg_cifar100')
CPG_DIR = os.path.join('CPG', 'experiment1', 'scratch_mul_1.5', 'custom_vgg_cifar100')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp('data'), tasks=2, classes=3, train=40, test=10)


def _env(data, out, **extra):
    (out / 'goals.json').write_text(json.dumps({t: '0.0' for t in TASKS}))
    knobs = dict(DATA_ROOT=data, TASKS=' '.join(TASKS), NUM_CLASSES='3', BASE_WIDTH='0.0625',
                 CHECKPOINT_ROOT=str(out / 'checkpoints'), GOALS_FILE=str(out / 'goals.json'),
                 RESULTS_FILE=str(out / 'results.json'), WORKERS='0', NPROC='1', BASELINE_EPOCHS='1',
                 FINETUNE_EPOCHS='2', PRUNE_EPOCHS='1', RETRAIN_EPOCHS='1', PRUNING_INTERVAL='1',
                 PRUNING_RATIOS='0.5 0.9', TRAIN_ACC_GATE='0', RESUME_EVERY_MINUTES='0')
    knobs.update(extra)
    return subprocess_env(**knobs)


def _start(script, env):
    """The script in its own session (its process group is what a terminal's Ctrl-C reaches)."""
    return subprocess.Popen(['bash', script], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, what, timeout=120):
    started = time.monotonic()
    while not condition():
        assert proc.poll() is None, f'the script ended before {what}: {proc.stderr.read()[-2000:]}'
        assert time.monotonic() - started < timeout, f'never {what}'
        time.sleep(0.05)


def _stages_running(root):
    """Processes whose command line names a folder under `root` (the stages of that run)."""
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(errors='replace')
        except OSError:
            continue
        if str(root) in cmdline and 'CPG_' in cmdline:
            found.append((int(pid), cmdline))
    return found


# ----- 5. two runs on one checkpoint folder -------------------------------------------------------------
def test_a_second_run_on_the_same_folder_stops_with_one_line_and_a_killed_run_leaves_no_lock(data, tmp_path):
    env = _env(data, tmp_path, BASELINE_EPOCHS='300')
    root = tmp_path / 'checkpoints' / BASE_DIR
    first = _start(BASELINE, env)
    try:
        _wait_for(lambda: (root / 'toy_task_1' / 'log.jsonl').is_file(), first, 'the first run trained')
        second = run_script(BASELINE, env, timeout=120)
        assert second.returncode == 1, tail(second)
        assert second.stderr == (f'error: another run is using {root} (process {first.pid}); wait for it to '
                                 f'end, stop it, or give this run its own CHECKPOINT_ROOT\n'), tail(second)
    finally:
        os.killpg(first.pid, signal.SIGKILL)   # kill -9: the kernel drops the lock with the process
        first.wait()
        first.stderr.close()
    wait_lock_free(os.path.join(root, '.lock'))   # the killed run's stage may take a moment to exit
    again = run_script(BASELINE, env, BASELINE_EPOCHS='1', timeout=300)
    assert again.returncode == 0, tail(again)


# ----- 6. Ctrl-C and a SIGTERM to the script reach the running stage ------------------------------------
@pytest.mark.parametrize('nproc', ['1', '2'])
def test_ctrl_c_and_kill_of_the_script_stop_the_stage_and_a_rerun_resumes(data, tmp_path, nproc):
    # 60 epochs: the run must still be training when the signal comes (an epoch here is ~0.1 s)
    env = _env(data, tmp_path, BASELINE_EPOCHS='60', NPROC=nproc, BATCH_SIZE='16', DEVICE='cpu', TASKS='toy_task_1')
    root = tmp_path / 'checkpoints' / BASE_DIR
    resume = root / 'toy_task_1' / 'resume.pth.tar'
    for sig, to_group in ((signal.SIGINT, True), (signal.SIGTERM, False)):
        before = resume.stat().st_mtime_ns if resume.is_file() else None
        proc = _start(BASELINE, env)
        _wait_for(lambda: resume.is_file() and resume.stat().st_mtime_ns != before, proc,
                  'a resume state was written')
        epoch = load_checkpoint(str(resume))['epoch']
        if to_group:
            os.killpg(proc.pid, sig)   # what Ctrl-C in a terminal does
        else:
            os.kill(proc.pid, sig)     # `kill <script pid>`: only the bash script gets it
        assert proc.wait(timeout=60) == -sig
        err = proc.stderr.read()
        proc.stderr.close()
        name = signal.Signals(sig).name[3:]
        assert err.count('\n') == 1 and err.startswith(f'interrupted ({name}) during {root / "toy_task_1"}: '), err
        assert f'rerun the same command (bash {BASELINE}, same settings) to resume' in err
        time.sleep(1)
        assert not _stages_running(tmp_path), 'a stage kept running after its script was stopped'
        assert load_checkpoint(str(resume))['epoch'] >= epoch   # whole, and never older
    done = run_script(BASELINE, env, timeout=600)
    assert done.returncode == 0 and 'Traceback' not in done.stderr, tail(done)
    log = (root / 'toy_task_1' / 'train.log').read_text()
    assert len(re.findall(r'resuming from .*resume\.pth\.tar at epoch [1-9]', log)) == 2, log[-3000:]


# ----- 4. an epoch budget of 1: its milestone is past the end, not at epoch 0 ---------------------------
def test_a_one_epoch_budget_trains_at_the_full_learning_rate(data, tmp_path):
    env = _env(data, tmp_path, BASELINE_EPOCHS='1', TASKS='toy_task_1')
    proc = run_script(BASELINE, env, timeout=300)
    assert proc.returncode == 0, tail(proc)
    epochs = [json.loads(line) for line in open(tmp_path / 'checkpoints' / BASE_DIR / 'toy_task_1' / 'log.jsonl')]
    assert [e['lr']['lr'] for e in epochs] == [0.01]   # before: milestones "0 0", so 1e-4
    assert '"lr_decay_epochs": [1, 1]' in (tmp_path / 'checkpoints' / BASE_DIR / 'toy_task_1' / 'train.log').read_text()
    out = subprocess.run(['bash', '-c', 'source tools/stages.sh; milestones 100 50 80; milestones 3 50 80; '
                          'milestones 30 25/30; milestones 1 50'], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.split('\n')[:4] == ['50 80', '1 2', '25', '1']


# ----- 2. and 9. the preflight of the script: goals as percentages, images of another size ---------------
def test_a_percentage_goal_or_margin_stops_the_script_before_any_training(data, tmp_path):
    env = _env(data, tmp_path)
    (tmp_path / 'goals.json').write_text(json.dumps({'toy_task_1': '65.8', 'toy_task_2': '0.5'}))
    proc = run_script(CPG, env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1, tail(proc)
    assert (f"error: preflight: goal file {tmp_path / 'goals.json'}: task 'toy_task_1' has goal 65.8; goals are "
            f'accuracies as fractions in [0, 1], e.g. "0.6580" for 65.8%') in proc.stderr
    (tmp_path / 'goals.json').write_text(json.dumps({'toy_task_1': '0.658', 'toy_task_2': '0.5'}))
    proc = run_script(CPG, env, ALLOW_ACC_LOSS='2', timeout=120)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1, tail(proc)
    assert 'ALLOW_ACC_LOSS=2: a fraction in [0, 1) is expected, e.g. 0.005' in proc.stderr
    assert not (tmp_path / 'checkpoints' / CPG_DIR / 'toy_task_1').exists()


def test_images_of_another_size_stop_the_script_with_what_the_model_takes(tmp_path):
    big = make_toy_data(tmp_path / 'big', tasks=2, classes=3, train=2, test=1, size=64)
    proc = run_script(CPG, _env(big, tmp_path), timeout=120)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1, tail(proc)
    assert 'toy_task_1: images are 64x64' in proc.stderr and 'the model takes 32x32' in proc.stderr
    assert 'mat1 and mat2' not in proc.stderr


# ----- 7. a run folder moved between reruns: finished stages replay, they do not train again -------------
def test_a_moved_run_folder_replays_its_finished_stages(data, tmp_path):
    (tmp_path / 'a').mkdir()
    env = _env(data, tmp_path / 'a')
    root = tmp_path / 'a' / 'checkpoints' / CPG_DIR
    proc = _start(CPG, env)
    try:   # kill -9 once task 2's first pruning stage is done: task 1 DONE, task 2 half-way
        _wait_for(lambda: (root / 'toy_task_2' / 'gradual_prune' / '0.5' / 'result.json').is_file(), proc,
                  "task 2's first pruning stage ended")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    wait_lock_free(os.path.join(root, '.lock'))
    moved = tmp_path / 'moved'
    shutil.move(str(tmp_path / 'a'), str(moved))
    env = dict(env, CHECKPOINT_ROOT=str(moved / 'checkpoints'), GOALS_FILE=str(moved / 'goals.json'))
    proc = run_script(CPG, env, timeout=600)
    assert proc.returncode == 0, tail(proc)
    root = moved / 'checkpoints' / CPG_DIR
    log = (root / 'toy_task_2' / 'train.log').read_text()
    rerun = log[log.index(str(moved)):]   # what the rerun logged: its first line names the new folder
    assert 'already done' in rerun and f"{root / 'toy_task_2' / 'scratch' / 'result.json'}" in rerun
    assert "Phase A: task 2 'toy_task_2'" not in rerun   # Phase A did not train again
    assert 'prune stage 0.0 -> 0.5' not in rerun
    assert (root / 'toy_task_2' / 'DONE').is_file()


# ----- 10. a full disk: one line, no temp file; the rerun after freeing space finishes -------------------
def test_a_full_disk_stops_with_one_line_and_the_rerun_finishes(data, tmp_path):
    disk = tmp_path / 'disk'
    disk.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=160k', 'tmpfs', str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f'cannot mount a small tmpfs here ({mounted.stderr.strip()}); '
                    'test_first_contact.py simulates the full disk in process')
    try:
        env = _env(data, tmp_path, CHECKPOINT_ROOT=str(disk))
        proc = run_script(BASELINE, env, timeout=300)
        assert proc.returncode == 1 and 'Traceback' not in proc.stderr, tail(proc)
        first = proc.stderr.splitlines()[0]
        assert re.match(rf'error: no space left on the device writing {disk}/\S+: it needs about [0-9.]+ MB, '
                        r'[0-9.]+ MB free in \S+; free some space and rerun \(what was saved before is intact\)$',
                        first), proc.stderr
        assert proc.stderr.splitlines()[1].startswith('stopping: baseline of toy_task_1 exited with status 1')
        assert not [p for p, _, files in os.walk(disk) for f in files if f.endswith('.tmp')]
        subprocess.run(['mount', '-o', 'remount,size=64m', str(disk)], check=True)
        proc = run_script(BASELINE, env, timeout=300)
        assert proc.returncode == 0, tail(proc)
    finally:
        subprocess.run(['umount', str(disk)], capture_output=True)
