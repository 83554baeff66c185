"""tools/run_status.py (and experimentN/status.sh) on real run folders of experiment 1's script:
a finished run (with growth and the must-prune rule), a run killed mid-stage with kill -9 (then
held by a live process: running), an empty folder, a folder that is not a run; --json, --watch,
--exact against the checkpoints' own counts, and --png."""
import builtins
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cpg_testlib import (REPO, contradict_test_split, kill_script_when, load_tool, make_toy_data,
                         run_main_block, run_script, subprocess_env, tail, tree_bytes, wait_lock_free)

TOOL = os.path.join(REPO, 'tools', 'run_status.py')
SCRIPT = os.path.join('experiment1', 'CPG_cifar100_scratch_mul_1.5.sh')
ARCH_DIR = os.path.join('CPG', 'experiment1', 'scratch_mul_1.5', 'custom_vgg_cifar100')
TASKS = ('toy_task_1', 'toy_task_2', 'toy_task_3')


@pytest.fixture(scope='module')
def tool():
    return load_tool('run_status')


def _env(data, out, goals, **extra):
    (out / 'goals.json').write_text(json.dumps(goals))
    knobs = dict(DATA_ROOT=data, TASKS=' '.join(goals), NUM_CLASSES='3', BASE_WIDTH='0.0625',
                 CHECKPOINT_ROOT=str(out / 'checkpoints'), GOALS_FILE=str(out / 'goals.json'),
                 RESULTS_FILE=str(out / 'results.json'), WORKERS='0', NPROC='1', FINETUNE_EPOCHS='2',
                 PRUNE_EPOCHS='2', RETRAIN_EPOCHS='2', PRUNING_INTERVAL='1', PRUNING_RATIOS='0.5 0.9',
                 TRAIN_ACC_GATE='0', RESUME_EVERY_MINUTES='0')
    knobs.update(extra)
    return subprocess_env(**knobs)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """3 tiny toy tasks; task 2's test split contradicts itself, so its goal of 1.0 is out of reach."""
    out = make_toy_data(tmp_path_factory.mktemp('status_data'), tasks=3, classes=3, train=40, test=10)
    contradict_test_split(out, 'toy_task_2')
    return out


@pytest.fixture(scope='module')
def finished(data, tmp_path_factory):
    """A finished run: task 2 misses its goal at 1.0, grows to 1.5, is accepted there and the
    must-prune rule keeps its 0.5 stage; tasks 1 and 3 keep 0.9."""
    out = tmp_path_factory.mktemp('finished')
    env = _env(data, out, {'toy_task_1': '0.0000', 'toy_task_2': '1.0000', 'toy_task_3': '0.0000'})
    proc = run_script(SCRIPT, env, timeout=600)
    assert proc.returncode == 0, tail(proc)
    return env, out / 'checkpoints' / ARCH_DIR


def _cli(capsys, *argv):
    return run_main_block([TOOL, *map(str, argv)], capsys)


# ----- a folder without a run ------------------------------------------------------------------------------
def test_an_empty_or_absent_folder_is_one_line_and_exit_0(tmp_path, capsys):
    rc, out, err = _cli(capsys, '--root', tmp_path)
    assert (rc, out, err) == (0, f'{tmp_path}: no run has started here yet\n', '')
    rc, out, err = _cli(capsys, '--root', tmp_path / 'later', '--tasks', 'a', 'b')
    assert (rc, out, err) == (0, f'{tmp_path / "later"}: no run has started here yet (no such folder); '
                                 f'2 tasks pending\n', '')
    rc, out, _ = _cli(capsys, '--root', tmp_path, '--tasks', 'a', 'b', '--json')
    status = json.loads(out)
    assert rc == 0 and status['state'] == 'empty'
    assert [(t['name'], t['state']) for t in status['tasks']] == [('a', 'pending'), ('b', 'pending')]


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('x')
    (tmp_path / 'sub').mkdir()
    rc, out, err = _cli(capsys, '--root', tmp_path)
    assert (rc, out) == (1, '')
    assert err.count('\n') == 1 and err.startswith(f'error: {tmp_path} is not a run folder: '), err
    # a parent of run folders names them
    run = tmp_path / 'CPG' / 'experiment2' / 'resnet50'
    run.mkdir(parents=True)
    (run / '.lock').write_text('1\n')
    rc, _, err = _cli(capsys, '--root', tmp_path)
    assert rc == 1 and err.rstrip('\n').endswith('runs below it: CPG/experiment2/resnet50'), err


@pytest.mark.slow
def test_watch_refreshes_until_ctrl_c_and_exits_0_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, TOOL, '--root', str(tmp_path), '--watch', '0.2', '--json'],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        assert first['state'] == second['state'] == 'empty' and second['time'] > first['time']
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0 and proc.stderr.read() == ''


# ----- a finished run ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_finished_run_shows_every_task_done_with_width_ratio_accuracy_and_shares(finished, tool, capsys):
    env, root = finished
    rc, out, err = _cli(capsys, '--root', root)
    assert rc == 0 and err == '', err
    lines = out.splitlines()
    assert lines[0] == f'{root}: finished, 3/3 tasks done (no process holds its lock)'
    rows = {line.split()[1]: line.split() for line in lines[2:5]}
    assert [rows[t][2:5] for t in TASKS] == [['done', '1.0', '0.9'], ['done', '1.5', '0.5'], ['done', '1.5', '0.9']]
    assert lines[-1] == 'remaining: nothing (no task left to learn)'
    assert re.fullmatch(r'elapsed: 0:00:\d\d \(wall clock, .*\)', lines[-2]), lines[-2]

    rc, out, _ = _cli(capsys, '--root', root, '--json')
    status = json.loads(out)
    assert rc == 0 and status['state'] == 'finished' and status['remaining_s'] == 0.0
    tasks = status['tasks']
    assert [t['name'] for t in tasks] == list(TASKS)   # order: the last picked model's task table
    for t in tasks:
        chosen = json.loads((root / t['name'] / 'gradual_prune' / 'chosen.json').read_text())
        sidecar = json.loads((root / t['name'] / 'gradual_prune' / 'checkpoint.pth.tar.json').read_text())
        own = sidecar['tasks'][-1]
        assert (t['state'], t['ratio'], t['width'], t['accuracy'], t['goal']) == \
            ('done', chosen['chosen_pruning_ratio'], own['multiplier'], own['accuracy'], chosen['goal'])
        shares = t['shares']
        assert shares['from'] == 'log' and shares['picked'] <= shares['earlier'] + 1e-12
        assert shares['owned'] + shares['earlier'] + shares['free'] == pytest.approx(1.0)
    assert [t['goal'] for t in tasks] == [0.0, 1.0, 0.0]
    assert tasks[0]['shares']['earlier'] == 0 and tasks[0]['shares']['owned'] == pytest.approx(0.1, abs=0.01)
    # task 2, at width 1.5, finds task 1's weights (10% of the 1.0 network) among its own
    one, two = tasks[0]['shares'], tasks[1]['shares']
    assert two['earlier'] * two['weights'] == pytest.approx(one['owned'] * one['weights'])
    assert two['weights'] > one['weights']


@pytest.mark.slow
def test_exact_shares_are_the_checkpoints_counts_and_agree_with_the_logs(finished, tool):
    import torch
    from utils.checkpoint import load_checkpoint, model_from_checkpoint
    from utils.stats import ownership_stats
    _, root = finished
    logged = tool.run_status(str(root))
    exact = tool.run_status(str(root))
    load_tool('status_picture').exact_shares(exact['root'], exact['tasks'])
    for by_log, by_ckpt in zip(logged['tasks'], exact['tasks']):
        assert by_ckpt['shares']['from'] == 'checkpoint'
        for key in ('owned', 'picked', 'earlier', 'free'):
            assert by_ckpt['shares'][key] == pytest.approx(by_log['shares'][key], abs=1e-3), (by_log['name'], key)
    # the newest task's block is the whole network: utils/stats.py's own counts
    model = model_from_checkpoint(load_checkpoint(str(root / TASKS[-1] / 'gradual_prune')))
    with torch.no_grad():
        stats = ownership_stats(model, len(TASKS))
    last = exact['tasks'][-1]['shares']
    assert last['weights'] == stats['total']
    assert (last['owned'], last['free'], last['earlier']) == pytest.approx(
        (stats['owned_fraction'], stats['free_fraction'], stats['earlier'] / stats['total']))


@pytest.mark.slow
def test_png_of_a_finished_run_is_written_and_shows_owned_and_picked_weights(finished, tmp_path, capsys):
    import matplotlib.image
    _, root = finished
    png = tmp_path / 'run.png'
    rc, out, err = _cli(capsys, '--root', root, '--png', png)
    assert rc == 0 and err == '' and out.endswith(f'picture: {png}\n')
    image = matplotlib.image.imread(str(png))
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 400
    rgb = (image[..., :3] * 255).round()

    def has(color):   # a block of the bars' colour (tab:blue: owned, tab:orange: picked)
        return int((abs(rgb - color).sum(axis=-1) < 6).sum()) > 500
    assert has((31, 119, 180)) and has((255, 127, 14))
    assert 'counted in the picked checkpoints' in out   # --png counts the shares exactly


@pytest.mark.slow
def test_it_only_reads_and_never_opens_the_run_for_writing(finished, tool, monkeypatch, tmp_path):
    _, root = finished
    before = tree_bytes(root)
    writes = []
    real_open = builtins.open

    def spy(path, mode='r', *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and str(os.path.abspath(path)).startswith(str(root)) \
                and set(mode) & set('wax+'):
            writes.append((str(path), mode))
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, 'open', spy)
    for argv in ([], ['--json'], ['--exact'], ['--png', str(tmp_path / 'x.png')]):
        assert tool.main(tool.get_args_parser().parse_args(['--root', str(root), *argv])) == 0
    assert writes == []
    assert tree_bytes(root) == before


@pytest.mark.slow
def test_a_task_learned_but_not_picked_waits_for_a_pick_by_hand(finished, tool, tmp_path):
    _, root = finished
    copy = tmp_path / 'run'
    shutil.copytree(root, copy)
    (copy / 'toy_task_3' / 'DONE').unlink()           # what TARGET_TASK_ID=3 (--pick hand) leaves
    (copy / 'toy_task_3' / 'gradual_prune' / 'chosen.json').unlink()
    status = tool.run_status(str(copy))
    assert status['state'] == 'waiting' and [t['state'] for t in status['tasks']] == ['done', 'done', 'waiting']
    assert any(line.startswith('waiting: toy_task_3 is learned; pick its pruning ratio: python '
                               'tools/pick_pruning_ratio.py') for line in tool.format_text(status))


# ----- a run killed mid-stage, then held by a live process ---------------------------------------------------
@pytest.fixture(scope='module')
def killed(data, tmp_path_factory):
    """Experiment 1 on two tasks (plus a third listed, never started), killed with kill -9 in task 2's
    Phase A after its third epoch."""
    out = tmp_path_factory.mktemp('killed')
    env = _env(data, out, {'toy_task_1': '0.0000', 'toy_task_3': '0.0000', 'toy_task_2': '0.0000'},
               TASKS='toy_task_1 toy_task_2', FINETUNE_EPOCHS='8')
    root = out / 'checkpoints' / ARCH_DIR
    log = root / 'toy_task_2' / 'scratch' / 'log.jsonl'
    kill_script_when(SCRIPT, env, lambda: log.is_file() and len(log.read_text().splitlines()) >= 3, 0.0,
                     'task 2, Phase A, epoch 3')
    wait_lock_free(root / '.lock')
    return env, root, len(log.read_text().splitlines())


@pytest.mark.slow
def test_a_run_killed_mid_stage_shows_the_stage_and_epoch_where_it_stopped(killed, tool, capsys):
    env, root, epochs = killed
    assert 3 <= epochs < 8
    rc, out, err = _cli(capsys, '--root', root, '--tasks', *TASKS)
    assert rc == 0 and err == '', err
    lines = out.splitlines()
    assert lines[0] == f'{root}: stopped, 1/3 tasks done (no process holds its lock)'
    rows = {line.split()[1]: line for line in lines[2:5]}
    assert rows['toy_task_1'].split()[2:5] == ['done', '1.0', '0.9']
    assert rows['toy_task_2'].split()[2:4] == ['stopped', '1.0']
    assert rows['toy_task_2'].endswith(f'Phase A at width 1.0: {epochs}/8 epochs, resume state kept')
    assert rows['toy_task_3'].split()[2] == 'pending'
    assert (f'stopped: toy_task_2, Phase A at width 1.0: {epochs}/8 epochs, resume state kept; rerun the same '
            f'command (same settings) to resume') in lines

    status = tool.run_status(str(root), list(TASKS))
    stage = status['tasks'][1]['stage']
    assert (stage['folder'], stage['kind'], stage['epochs_done'], stage['epochs'], stage['finished']) == \
        ('scratch', 'finetune', epochs, 8, False)
    assert status['tasks'][2]['goal'] == 0.0   # a pending task's goal: from the run's goal file
    # the estimate: task 2's rest (8 - n Phase A epochs, 2 stages x 2, a 2-epoch retrain), task 3 all of it
    est = status['estimate']
    assert est['epochs_left'] == {'finetune': 8 - epochs + 8, 'prune': 4 + 4, 'retrain': 2 + 2}
    assert est['tasks'] == 2
    assert est['measured_epochs']['finetune'] == 7 + (epochs - 1)   # consecutive epochs of task 1 and 2
    assert est['seconds'] == pytest.approx(sum(n * est['epoch_seconds'][k] for k, n in est['epochs_left'].items()))
    assert 0 < est['seconds'] < 600
    assert re.search(rf'^remaining: ~0:\d\d:\d\d, an estimate: {28 - epochs} epochs left in 2 tasks', out, re.M), out


@pytest.mark.slow
def test_a_live_process_holding_the_lock_makes_the_run_running(killed, tool, capsys):
    env, root, epochs = killed
    holder = subprocess.Popen(['bash', '-c', f'exec 9>>"{root / ".lock"}"; echo ready; exec sleep 60'],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'ready\n'
        rc, out, _ = _cli(capsys, '--root', root)
        status = tool.run_status(str(root))
    finally:
        holder.kill()
        holder.wait()
    assert rc == 0
    assert out.splitlines()[0] == f'{root}: running, 1/2 tasks done (process {holder.pid} holds its lock)'
    assert status['state'] == 'running' and status['pids'] == [holder.pid]
    assert [t['state'] for t in status['tasks']] == ['done', 'running']
    assert re.search(rf'^running: toy_task_2, Phase A at width 1.0: {epochs}/8 epochs; last epoch logged ', out, re.M)


@pytest.mark.slow
def test_a_lock_held_between_two_tasks_is_a_running_run(finished, tool):
    _, root = finished
    holder = subprocess.Popen(['bash', '-c', f'exec 9>>"{root / ".lock"}"; echo ready; exec sleep 60'],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'ready\n'
        status = tool.run_status(str(root), [*TASKS, 'toy_task_4'])   # task 4's process is starting
    finally:
        holder.kill()
        holder.wait()
    assert status['state'] == 'running' and [t['state'] for t in status['tasks']][-1] == 'pending'
    assert 'running: between two tasks (the next: toy_task_4)' in tool.format_text(status)


# ----- the experiments' wrappers -------------------------------------------------------------------------------
@pytest.mark.slow
def test_status_sh_passes_each_experiments_root_and_tasks(killed, tmp_path):
    env, root, _ = killed
    proc = run_script(os.path.join('experiment1', 'status.sh'), env, '--json', timeout=120)
    assert proc.returncode == 0, tail(proc)
    status = json.loads(proc.stdout)
    assert status['root'] == str(root) and [t['name'] for t in status['tasks']] == ['toy_task_1', 'toy_task_2']
    for script, default_root, count in ((os.path.join('experiment2', 'status.sh'), 'CPG/experiment2/resnet50', 6),
                                        (os.path.join('experiment3', 'status.sh'), 'CPG/experiment3/spherenet20', 8)):
        proc = run_script(script, subprocess_env(CHECKPOINT_ROOT=str(tmp_path)), timeout=120)
        assert proc.returncode == 0, tail(proc)
        assert proc.stdout == (f'{tmp_path / default_root}: no run has started here yet (no such folder); '
                               f'{count} tasks pending\n')
