"""Checkpoints (spec §4.1, §12 items 4, 33): exact round trips, packed picks, and exact resume."""
import json
import os

import pytest
import torch

import CPG_cifar100_main as cli
from cpg_testlib import (DEVICE, begin_all, end_all, fixed_inputs, learn_task, make_toy_data,
                         task_logits, tiny_model, toy_stage_args, train_steps)
from models.layers import PICK_THRESHOLD, owner_dtype, pack_bits, unpack_bits
from utils.checkpoint import (checkpoint_metadata, frozen_state_dict, load_checkpoint,
                              model_from_checkpoint, read_sidecar, save_checkpoint)
from utils.errors import CPGError
from utils.grower import assign_free_capacity
from utils.manager import Manager, build_weight_optimizer
from utils.picker import build_pick_optimizer, reset_picks

ARCH = 'custom_vgg_cifar100'


# ----- bit packing -----------------------------------------------------------------------------------
@pytest.mark.parametrize('n', [1, 3, 7, 8, 9, 15, 16, 17, 100, 1001])
def test_pack_unpack_round_trip(n):
    gen = torch.Generator().manual_seed(n)
    mask = (torch.rand(n, generator=gen) > 0.5).to(DEVICE)
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_bits(packed, n), mask)
    for value in (True, False):  # all-ones / all-zeros
        full = torch.full((n,), value, device=DEVICE)
        assert torch.equal(unpack_bits(pack_bits(full), n), full)


def test_pack_bits_layout_is_little_bit_order():
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool, device=DEVICE)
    assert pack_bits(mask).tolist() == [1, 6]
    assert pack_bits(mask.view(1, 11)).tolist() == [1, 6]  # any shape, row-major


def test_owner_dtype():
    assert owner_dtype(20) == torch.uint8 and owner_dtype(255) == torch.uint8
    assert owner_dtype(256) == torch.int16


# ----- save / load -----------------------------------------------------------------------------------
def _three_tasks_third_in_training():
    """Tasks 1-2 finished (2 picks), growth for task 3, task 3 still training its float pick."""
    model = tiny_model(seed=11)
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.5, seed=1)
    model.add_task('t2', 5)
    learn_task(model, 2, sparsity=0.5, seed=2)
    model.add_task('t3', 5, multiplier=1.5)
    assign_free_capacity(model, 3)
    begin_all(model, 3, learn_pick=True)
    sgd = build_weight_optimizer(model, 3, lr=0.05)
    adam = build_pick_optimizer(model, lr_mask=0.01)
    train_steps(model, 3, [sgd, adam], 3, torch.Generator().manual_seed(3))
    return model


def test_round_trip_identical_logits_for_every_task(tmp_path):
    x = fixed_inputs()
    model = _three_tasks_third_in_training()
    flipped = sum(int(((l.pick_score <= PICK_THRESHOLD) & (l.owner >= 1) & (l.owner < 3)).sum())
                  for _, l in model.masked_layers())
    assert flipped > 0  # task 3's pick matters
    before = task_logits(model, x)

    frozen_path, resume_path = str(tmp_path / 'frozen.pth.tar'), str(tmp_path / 'resume.pth.tar')
    save_checkpoint(frozen_path, model, ARCH, frozen=True, epoch=3)
    save_checkpoint(resume_path, model, ARCH, frozen=False)
    frozen, resume = load_checkpoint(frozen_path), load_checkpoint(resume_path)

    assert not any(k.endswith('pick_score') for k in frozen['model'])
    assert any(k.endswith('pick_bits_3') for k in frozen['model'])
    assert any(k.endswith('pick_bits_2') for k in frozen['model'])
    assert any(k.endswith('pick_score') for k in resume['model'])
    for key, value in frozen['model'].items():
        if key.endswith('.owner'):
            assert value.dtype == torch.uint8, key
    assert frozen['epoch'] == 3 and frozen['network_width_multiplier'] == 1.5
    assert [t['name'] for t in frozen['tasks']] == ['t1', 't2', 't3']
    sidecar = read_sidecar(frozen_path)  # the metadata, plus the id of the file it describes
    assert sidecar.get('checkpoint_id') == frozen.get('checkpoint_id')
    sidecar.pop('checkpoint_id', None)
    assert sidecar == json.loads(json.dumps(checkpoint_metadata(model, ARCH)))

    loaded = model_from_checkpoint(frozen, DEVICE)
    assert loaded.multiplier == 1.5
    after = task_logits(loaded, x)
    for task in (1, 2, 3):
        assert torch.equal(before[task], after[task]), task
    for (_, a), (_, b) in zip(model.masked_layers(), loaded.masked_layers()):
        assert b.owner.dtype == torch.uint8 and torch.equal(a.owner, b.owner)
        assert b.task_shapes == a.task_shapes
    # a resume file restores the running phase exactly: begin the phase, then load
    again = model_from_checkpoint(frozen, DEVICE)
    reset_picks(again, 3)  # the phase's float pick comes from the resume file
    for (_, layer), (_, live) in zip(again.masked_layers(), model.masked_layers()):
        layer.begin_phase(3, learn_pick=live.pick_score is not None, fixed_pick=False,
                          weight_decay=4e-5)
    again.load_state_dict(resume['model'])
    after = task_logits(again, x)
    for task in (1, 2, 3):
        assert torch.equal(before[task], after[task]), task

    # the frozen pick is exactly what end_phase packs when the phase ends
    packed_at_save = frozen_state_dict(model)
    end_all(model)
    state = model.state_dict()
    for key, value in packed_at_save.items():
        if 'pick_bits_3' in key:
            assert torch.equal(state[key], value), key
    assert {k for k in state if 'pick_bits_3' in k} == {k for k in packed_at_save if 'pick_bits_3' in k}


def test_resume_file_loaded_on_its_own_is_never_silently_wrong(tmp_path):
    """A non-frozen (resume) checkpoint rebuilt with model_from_checkpoint, e.g. by
    `--mode inference --load_folder <stage>/resume.pth.tar`, loads and evaluates the task in
    training with its saved pick mask -- never silently with all old weights."""
    x = fixed_inputs()
    model = _three_tasks_third_in_training()
    before = task_logits(model, x)
    path = str(tmp_path / 'resume.pth.tar')
    save_checkpoint(path, model, ARCH, frozen=False)
    loaded = model_from_checkpoint(load_checkpoint(path), DEVICE)  # must load, not refuse
    assert all(layer.pick_score is None for _, layer in loaded.masked_layers())  # packed, frozen
    after = task_logits(loaded, x)
    for task in (1, 2, 3):
        assert torch.equal(before[task], after[task]), f'task {task} differs after loading a resume file'


def test_loading_bad_files_gives_one_clear_error(tmp_path):
    missing = tmp_path / 'nowhere'
    with pytest.raises(CPGError, match='not found') as err:
        load_checkpoint(str(missing))
    assert str(missing) in str(err.value)
    garbage = tmp_path / 'checkpoint.pth.tar'
    garbage.write_bytes(b'\x00not a checkpoint\xff' * 64)
    with pytest.raises(CPGError, match='corrupt') as err:
        load_checkpoint(str(tmp_path))  # a folder means its checkpoint.pth.tar
    assert str(garbage) in str(err.value)
    torch.save({'model': {}}, str(garbage))
    with pytest.raises(CPGError, match='not a checkpoint of this repository'):
        load_checkpoint(str(garbage))


# ----- resume through the CLI, in process --------------------------------------------------------
def _assert_same_checkpoint(path_a, path_b):
    a = torch.load(path_a, map_location='cpu', weights_only=True)
    b = torch.load(path_b, map_location='cpu', weights_only=True)
    assert a['tasks'] == b['tasks']
    assert a['model'].keys() == b['model'].keys()
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key


def _interrupted_then_resumed(monkeypatch, args):
    """Run main(args), interrupt it when epoch 1 starts, then run it again to the end."""
    original = Manager.train_epoch
    state = {'interrupted': False}

    def flaky(self, epoch, *a, **k):
        if epoch == 1 and not state['interrupted']:
            state['interrupted'] = True
            raise KeyboardInterrupt
        return original(self, epoch, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Manager, 'train_epoch', flaky)
        with pytest.raises(KeyboardInterrupt):
            cli.main(args)
        folder = args.save_folder
        assert os.path.isfile(os.path.join(folder, 'resume.pth.tar'))
        assert not os.path.exists(os.path.join(folder, 'result.json'))
        assert not os.path.exists(os.path.join(folder, 'checkpoint.pth.tar'))
        assert torch.load(os.path.join(folder, 'resume.pth.tar'), map_location='cpu',
                          weights_only=True)['epoch'] == 1
        return cli.main(args)


@pytest.fixture(scope='module')
def toy_data(tmp_path_factory):
    """2 toy tasks, 64 train / 8 test images per class: 5 batches of 64 per epoch (the session's
    300-image set would make these in-process runs ~4x slower for nothing)."""
    return make_toy_data(tmp_path_factory.mktemp('small_toy'), tasks=2, train=64, test=8)


@pytest.fixture(scope='module')
def task1(toy_data, tmp_path_factory):
    """Goal file and the Phase A checkpoint of toy_task_1 (1 epoch, unpruned: owns everything)."""
    tmp = tmp_path_factory.mktemp('task1')
    goals = str(tmp / 'goals.json')
    with open(goals, 'w') as f:
        json.dump({'toy_task_1': '0.0000', 'toy_task_2': '0.0000'}, f)
    t1 = str(tmp / 't1' / 'scratch')
    assert cli.main(toy_stage_args(toy_data, goals, 'finetune', t1, epochs=1, dataset='toy_task_1')) == 0
    return goals, t1


def test_interrupted_phases_resume_to_identical_results(toy_data, task1, tmp_path, monkeypatch):
    goals, t1 = task1

    # Phase A of task 2 (SGD + Adam on the pick mask), grown to 1.5 so that it owns weights
    a_dir, b_dir = str(tmp_path / 'A' / 'scratch'), str(tmp_path / 'B' / 'scratch')
    grow = dict(network_width_multiplier=1.5)
    status_a = cli.main(toy_stage_args(toy_data, goals, 'finetune', a_dir, t1, **grow))
    status_b = _interrupted_then_resumed(monkeypatch, toy_stage_args(toy_data, goals, 'finetune', b_dir, t1, **grow))
    assert status_a == status_b == 0
    _assert_same_checkpoint(os.path.join(a_dir, 'checkpoint.pth.tar'),
                            os.path.join(b_dir, 'checkpoint.pth.tar'))
    for folder in (a_dir, b_dir):
        assert not os.path.exists(os.path.join(folder, 'resume.pth.tar'))
    result_a = json.load(open(os.path.join(a_dir, 'result.json')))
    result_b = json.load(open(os.path.join(b_dir, 'result.json')))
    assert result_a == result_b

    # a pruning stage interrupted mid-ramp (pruner position and momentum restored)
    prune = dict(initial_sparsity=0.0, target_sparsity=0.5, pruning_interval=2, pruning_frequency=5,
                 lr=1e-3)
    pa, pb = str(tmp_path / 'A' / 'prune'), str(tmp_path / 'B' / 'prune')
    assert cli.main(toy_stage_args(toy_data, goals, 'prune', pa, a_dir, **prune)) == 0
    assert _interrupted_then_resumed(monkeypatch, toy_stage_args(toy_data, goals, 'prune', pb, a_dir, **prune)) == 0
    _assert_same_checkpoint(os.path.join(pa, 'checkpoint.pth.tar'), os.path.join(pb, 'checkpoint.pth.tar'))
    pruned = model_from_checkpoint(load_checkpoint(pa))
    for _, layer in pruned.masked_layers():
        assert int((layer.owner == 0).sum()) == round(0.5 * int(((layer.owner == 0) | (layer.owner == 2)).sum()))

    # a finished phase replays its status without training again
    def no_training(*a, **k):
        raise AssertionError('a finished phase must not train again')

    monkeypatch.setattr(Manager, 'train_epoch', no_training)
    assert cli.main(toy_stage_args(toy_data, goals, 'finetune', a_dir, t1, **grow)) == status_a
    assert cli.main(toy_stage_args(toy_data, goals, 'prune', pa, a_dir, **prune)) == 0


def test_exit_statuses_no_capacity_and_train_accuracy_gate(toy_data, task1, tmp_path):
    """Exit 5: the new task owns no weight (task 1 unpruned, no growth); exit 6: a pruning stage
    whose train accuracy is not above the gate saves nothing and records nothing (spec §3.7)."""
    goals, t1 = task1
    full = str(tmp_path / 'full' / 'scratch')
    assert cli.main(toy_stage_args(toy_data, goals, 'finetune', full, t1, epochs=1)) == 5
    result = json.load(open(os.path.join(full, 'result.json')))
    assert result['status'] == 5
    model = model_from_checkpoint(load_checkpoint(full))
    assert all(not (layer.owner == 2).any() for _, layer in model.masked_layers())

    record = str(tmp_path / 'record.txt')
    stage = str(tmp_path / 'stage')
    status = cli.main(toy_stage_args(toy_data, goals, 'prune', stage, t1, epochs=1, dataset='toy_task_1',
                            train_acc_gate=1.0, target_sparsity=0.5, lr=1e-3,
                            pruning_ratio_to_acc_record_file=record))
    assert status == 6
    assert not os.path.exists(os.path.join(stage, 'checkpoint.pth.tar'))
    assert not os.path.exists(record)
    assert json.load(open(os.path.join(stage, 'result.json')))['status'] == 6
