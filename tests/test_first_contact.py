"""What a new user meets first, in process (the script-level cases are in
test_first_contact_scripts.py): no batch of one image, goals and margins in range, an exit reason
for each case, milestones after epoch 0, unique temp files, a full disk, a different width or
image size at inference, images of the wrong size, and worker errors in one line."""
import errno
import json
import os
import subprocess

import pytest
import torch

import CPG_cifar100_main as cifar_cli
import CPG_face_main as face_cli
import CPG_imagenet_main as imagenet_cli
from cpg_testlib import (DEVICE, TINY, TensorTasks, load_tool, make_toy_data, one_line_error,
                         run_main_block, stage_args, tiny_model)
from utils.checkpoint import DiskFull, atomic_write, save_checkpoint
from utils.data import TrainBatchSampler, per_rank_batch
from utils.distributed import Distributed
from utils.errors import CPGError
from utils.finegrained_dataset import FineGrainedTasks
from utils.records import read_goal

preflight = load_tool('preflight')
PREFLIGHT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools', 'preflight.py')


# ----- 1. never a train batch of one image ---------------------------------------------------------
@pytest.mark.parametrize('n, batch, sizes', [
    (289, 32, [32] * 8 + [33]),      # 289 = 9 x 32 + 1: the last image joins the batch before
    (9, 4, [4, 5]),
    (10, 4, [4, 4, 2]),
    (64, 32, [32, 32]),
    (3, 4, [3]),
])
def test_train_batches_are_never_of_one_and_keep_every_image(n, batch, sizes):
    sampler = TrainBatchSampler(list(range(n)), batch)
    batches = list(sampler)
    assert [len(b) for b in batches] == sizes and len(sampler) == len(sizes)
    assert sorted(i for b in batches for i in b) == list(range(n))


def test_a_task_with_a_last_batch_of_one_trains_resnet50_at_32_pixels(tmp_path):
    """Experiment 2's real loaders and Phase A on 2 classes x 9 images at IMAGE_SIZE 32 with
    batch 17 (18 = 17 + 1): ResNet-50's last map is 1x1, where a batch of one crashed BatchNorm
    ("Expected more than 1 value per channel when training")."""
    data = make_toy_data(tmp_path / 'data', tasks=1, classes=2, train=9, test=2, layout='finegrained', size=36)
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'toy_task_1': '0.0'}))
    argv = ['--mode', 'finetune', '--dataset', 'toy_task_1', '--data_root', data, '--image_size', '32',
            '--save_folder', str(tmp_path / 'scratch'), '--baseline_acc_file', str(goals),
            '--device', DEVICE, '--batch_size', '17', '--workers', '0', '--base_width', str(TINY),
            '--epochs', '1', '--resume_every_minutes', '0']
    parser = imagenet_cli.get_args_parser()
    args = parser.parse_args(argv)
    imagenet_cli.check_args(parser, args)
    train = FineGrainedTasks(args, 'cpu').loaders('toy_task_1')[0]
    assert [len(labels) for _, labels in train] == [18]
    assert imagenet_cli.main(args) == 0


def test_batches_of_one_per_rank_are_refused_in_one_line():
    assert per_rank_batch(2) == 2
    message = one_line_error(lambda: per_rank_batch(2, Distributed(0, 0, 2, 'cpu', 'gloo')), CPGError)
    assert 'BATCH_SIZE >= 4' in message and 'batches of one' in message


# ----- 2. goals, margins and ALLOW_ACC_LOSS in range -------------------------------------------------
def _toy_cifar(tmp_path, capsys, size=32):
    data = make_toy_data(tmp_path / 'data', tasks=2, classes=2, train=2, test=1, size=size)
    capsys.readouterr()   # the generator's own line
    return data


@pytest.mark.parametrize('value, form', [('65.8', '"0.6580" for 65.8%'), ('-1', '"0.658" for 65.8%'),
                                         ('1.01', '"0.0101" for 1.01%')])
def test_preflight_refuses_goals_outside_0_1(tmp_path, capsys, value, form):
    data = _toy_cifar(tmp_path, capsys)
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'toy_task_1': '0.5', 'toy_task_2': value}))
    rc, out, err = run_main_block([PREFLIGHT, '--data_root', data, '--tasks', 'toy_task_1', 'toy_task_2',
                                   '--num_classes', '2', '--goals_file', str(goals)], capsys)
    assert rc == 1 and out == '' and err.count('\n') == 1, err
    for part in (str(goals), "task 'toy_task_2'", f'has goal {float(value):g}', form, 'nothing was trained'):
        assert part in err, err
    # a stage reading that goal stops the same way (a run started without the preflight)
    message = one_line_error(lambda: read_goal(str(goals), 'toy_task_2'), CPGError)
    assert str(goals) in message and form in message


def test_preflight_refuses_margins_outside_0_1(tmp_path, capsys):
    data = _toy_cifar(tmp_path, capsys)
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'toy_task_1': '0.5', 'toy_task_2': '0.5'}))
    rc, _, err = run_main_block([PREFLIGHT, '--data_root', data, '--tasks', 'toy_task_1', 'toy_task_2',
                                 '--num_classes', '2', '--goals_file', str(goals), '--fractions',
                                 'GOAL_MARGIN_toy_task_2=5', 'ALLOW_ACC_LOSS=-0.1', 'GOAL_MARGIN=0.005'], capsys)
    assert rc == 1 and err.count('\n') == 1, err
    assert 'GOAL_MARGIN_toy_task_2=5: a fraction in [0, 1) is expected, e.g. 0.005' in err
    assert 'ALLOW_ACC_LOSS=-0.1: a fraction in [0, 1) is expected' in err
    assert 'GOAL_MARGIN=0.005' not in err
    rc, out, _ = run_main_block([PREFLIGHT, '--data_root', data, '--tasks', 'toy_task_1', 'toy_task_2',
                                 '--num_classes', '2', '--goals_file', str(goals), '--fractions',
                                 'GOAL_MARGIN=0.005', 'ALLOW_ACC_LOSS=0'], capsys)
    assert rc == 0 and 'preflight: 2 tasks OK' in out
    with pytest.raises(SystemExit):
        stage_args(['--mode', 'finetune', '--dataset', 't', '--save_folder', 'x', '--goal_margin', '5'])
    assert 'a fraction in [0, 1) is expected' in capsys.readouterr().err


# ----- 3. each Phase A outcome in its own words -----------------------------------------------------
@pytest.mark.parametrize('goal, gate, width, status, words', [
    ('0.0', 1.0, 1.5, 0, 'goal met (val {acc} >= goal 0.0000 - margin 0.0) but train accuracy {train} <= gate '
                         '1.0 at maximum width: accept, must-prune rule applies'),
    ('0.0', 1.0, 1.0, 2, 'goal met (val {acc} >= goal 0.0000 - margin 0.0) but train accuracy {train} <= gate '
                         '1.0: widen the network and retry'),
    ('1.0', -1.0, 1.5, 0, 'goal missed (val {acc} < goal 1.0000 - margin 0.0) at maximum width: accept, '
                          'must-prune rule applies'),
    ('1.0', 1.0, 1.0, 2, 'goal missed (val {acc} < goal 1.0000 - margin 0.0, and train accuracy {train} <= gate '
                         '1.0): widen the network and retry'),
    ('0.0', -1.0, 1.0, 0, 'goal reached'),
])
def test_phase_a_says_which_rule_decided(tmp_path, monkeypatch, goal, gate, width, status, words):
    """Before: a goal met under a failed train-accuracy gate read "goal missed at maximum width"."""
    monkeypatch.setattr(cifar_cli, 'CifarTasks', TensorTasks)
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'toy_task_1': goal}))
    args = stage_args(['--mode', 'finetune'], dataset='toy_task_1', save_folder=tmp_path / 'scratch',
                      baseline_acc_file=goals, base_width=TINY, epochs=1, batch_size=32, train_acc_gate=gate,
                      network_width_multiplier=width, max_allowed_network_width_multiplier=1.5,
                      resume_every_minutes=0, lr=1e-3)
    assert cifar_cli.main(args) == status
    result = json.loads((tmp_path / 'scratch' / 'result.json').read_text())
    assert result['reason'] == words.format(acc=f'{result["accuracy"]:.4f}', train=f'{result["train_accuracy"]:.4f}')


# ----- 4. LR milestones (the script side: test_first_contact_scripts.py) ------------------------------
@pytest.mark.parametrize('flag', ['lr_decay_epochs', 'mask_lr_decay_epochs', 'prune_lr_decay_epochs'])
def test_a_milestone_at_epoch_0_is_refused(capsys, flag):
    argv = ['--mode', 'finetune', '--dataset', 't', '--save_folder', 'x', f'--{flag}', '0', '1']
    if flag == 'mask_lr_decay_epochs':
        argv += ['--mask_lr_decay_factors', '0.2', '0.0']
    with pytest.raises(SystemExit) as info:
        stage_args(argv)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count('\n') == 1
    assert f'--{flag} 0 1: a milestone at epoch 0 decays the learning rate before the first step' in err


# ----- 5. temp files unique per writer ----------------------------------------------------------------
def test_two_writers_of_one_file_never_share_a_temp_file(tmp_path):
    """A second writer finishing while the first still writes (two runs, or a rerun racing an
    orphan): before, both used <path>.tmp and the first rename failed (FileNotFoundError)."""
    path = str(tmp_path / 'result.json')

    def first(f):
        f.write(b'first')
        atomic_write(path, lambda g: g.write(b'second'))   # the other writer, in the middle
    atomic_write(path, first)
    assert open(path, 'rb').read() == b'first'
    assert os.listdir(tmp_path) == ['result.json']


def test_temp_files_of_dead_writers_are_removed(tmp_path):
    path = str(tmp_path / 'checkpoint.pth.tar')
    dead = subprocess.Popen(['true'])
    dead.wait()
    stale = f'{path}.{dead.pid}-0123abcd.tmp'
    live = f'{path}.{os.getppid()}-0123abcd.tmp'   # a running process's: left alone
    for name in (stale, live):
        open(name, 'wb').close()
    atomic_write(path, lambda f: f.write(b'x'))
    assert sorted(os.listdir(tmp_path)) == sorted(['checkpoint.pth.tar', os.path.basename(live)])


# ----- 10. a full disk: one line, no temp file, the old file intact ----------------------------------
class _FullDisk:
    """A file object that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, 'No space left on device')
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_a_full_disk_gives_one_line_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import builtins
    path = str(tmp_path / 'stage' / 'checkpoint.pth.tar')
    model = tiny_model()
    model.add_task('t', 5)
    save_checkpoint(path, model, 'custom_vgg_cifar100')
    before = open(path, 'rb').read()
    real_open = builtins.open

    def full_open(name, mode='r', *args, **kwargs):
        f = real_open(name, mode, *args, **kwargs)
        return _FullDisk(f, 4096) if str(name).endswith('.tmp') else f
    monkeypatch.setattr(builtins, 'open', full_open)
    message = one_line_error(lambda: save_checkpoint(path, model, 'custom_vgg_cifar100'), DiskFull)
    monkeypatch.undo()
    assert message.startswith(f'no space left on the device writing {path}: it needs about ')
    assert 'MB free in' in message and 'what was saved before is intact' in message
    assert sorted(os.listdir(tmp_path / 'stage')) == ['checkpoint.pth.tar', 'checkpoint.pth.tar.json']
    assert open(path, 'rb').read() == before


# ----- 8. inference with another BASE_WIDTH / IMAGE_SIZE than the stored model -----------------------
def test_inference_uses_the_stored_width_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar_cli, 'CifarTasks', TensorTasks)
    model = tiny_model()
    model.add_task('toy_task_1', 5)
    save_checkpoint(str(tmp_path / 'final' / 'checkpoint.pth.tar'), model, 'custom_vgg_cifar100')
    args = stage_args(['--mode', 'inference'], load_folder=tmp_path / 'final', base_width=0.125,
                      results_file=tmp_path / 'results.json')
    assert cifar_cli.main(args) == 0
    out = capsys.readouterr().out
    assert (f'BASE_WIDTH 0.125 differs from the {TINY} stored in {tmp_path / "final"}: using {TINY}, the width '
            f'the model was built with') in out


def test_face_inference_uses_the_stored_image_size_and_says_so(tmp_path, capsys):
    """A SphereNet20 built for 16-pixel faces, evaluated with IMAGE_SIZE 32: before, a shape
    traceback (its flattened size depends on the image size)."""
    data = make_toy_data(tmp_path / 'faces', layout='face', task_names=['face_verification', 'gender'],
                         classes=2, train=2, test=2, size=16, identities=4, lfw_people=4, lfw_images=2,
                         pairs=20, pairs_out=tmp_path / 'pairs.txt')
    from models import build_model
    torch.manual_seed(0)
    model = build_model('spherenet20', base_width=TINY, image_size=16)
    model.add_task('gender', 2)
    save_checkpoint(str(tmp_path / 'final' / 'checkpoint.pth.tar'), model, 'spherenet20')
    argv = ['--mode', 'inference', '--load_folder', str(tmp_path / 'final'), '--data_root', data,
            '--image_size', '32', '--device', DEVICE, '--workers', '0', '--base_width', str(TINY),
            '--pairs_file', str(tmp_path / 'pairs.txt')]
    parser = face_cli.get_args_parser()
    args = parser.parse_args(argv)
    face_cli.check_args(parser, args)
    assert face_cli.main(args) == 0
    out = capsys.readouterr().out
    assert f'IMAGE_SIZE 32 differs from the 16 stored in {tmp_path / "final"}: using 16' in out


# ----- 9. experiment 1 takes 32x32 images ------------------------------------------------------------
def test_images_that_are_not_32x32_stop_the_preflight_and_the_loader_in_one_line(tmp_path, capsys):
    data = _toy_cifar(tmp_path, capsys, size=64)
    rc, out, err = run_main_block([PREFLIGHT, '--data_root', data, '--tasks', 'toy_task_1', '--num_classes', '2',
                                   '--image_size', '32'], capsys)
    assert rc == 1 and out == '' and err.count('\n') == 1, err
    assert 'toy_task_1: images are 64x64' in err and 'the model takes 32x32; resize them to 32x32' in err
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'toy_task_1': '0.0'}))
    args = stage_args(['--mode', 'finetune'], dataset='toy_task_1', data_root=data, num_classes=2,
                      save_folder=tmp_path / 'scratch', baseline_acc_file=goals, base_width=TINY, epochs=1,
                      workers=0, batch_size=2)
    assert cifar_cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'are 64x64' in err and 'takes 32x32' in err, err


# ----- 11. a bad image read by a loader worker: the same one line as in process ----------------------
@pytest.mark.slow   # starts a loader worker process
def test_a_truncated_jpeg_read_by_a_worker_gives_the_in_process_line(tmp_path):
    data = make_toy_data(tmp_path / 'data', tasks=1, classes=2, train=4, test=1, layout='finegrained', size=36)
    bad = os.path.join(data, 'toy_task_1', 'train', 'class_0', sorted(os.listdir(
        os.path.join(data, 'toy_task_1', 'train', 'class_0')))[0])
    content = open(bad, 'rb').read()
    open(bad, 'wb').write(content[:len(content) // 2])
    messages = []
    for workers in (0, 1):
        parser = imagenet_cli.get_args_parser()
        args = parser.parse_args(['--mode', 'finetune', '--dataset', 'toy_task_1', '--data_root', data,
                                  '--image_size', '32', '--save_folder', 'x', '--workers', str(workers),
                                  '--batch_size', '8'])
        train = FineGrainedTasks(args, 'cpu').loaders('toy_task_1')[0]
        with pytest.raises(CPGError) as info:
            for _ in train:
                pass
        messages.append(str(info.value))
    assert messages[0] == messages[1] and '\n' not in messages[1] and bad in messages[1], messages
