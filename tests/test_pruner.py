"""Gradual pruning (spec §3.2): cubic schedule, update times, exact per-layer sparsity, ties."""
import json
import os

import pytest
import torch

import CPG_cifar100_main as cli
from cpg_testlib import (DEVICE, TensorTasks, begin_all, end_all, learn_task, stage_args, tiny_model,
                         to_device, train_steps)
from models.layers import MaskedConv2d, MaskedLinear
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.manager import build_weight_optimizer
from utils.pruner import GradualPruner, release_smallest, sparsity_at


# ----- schedule ------------------------------------------------------------------------------------
@pytest.mark.parametrize('step, expected', [
    (0, 0.1),                                   # begin: s_i
    (50, 0.2 + (0.1 - 0.2) * 0.5 ** 3),         # middle: 0.1875
    (25, 0.2 + (0.1 - 0.2) * 0.75 ** 3),
    (100, 0.2),                                 # end: s_f
    (-10, 0.1),                                 # before the window: clamped to s_i
    (1000, 0.2),                                # after the window: clamped to s_f
])
def test_cubic_schedule_values(step, expected):
    assert sparsity_at(step, 0.1, 0.2, 0, 100) == pytest.approx(expected, abs=1e-12)


def test_cubic_schedule_shape_and_offsets():
    # s(t) = s_f + (s_i - s_f)(1 - p)^3 with p relative to [begin, end]
    assert sparsity_at(30, 0.0, 0.9, 10, 50) == pytest.approx(0.9 - 0.9 * 0.5 ** 3)
    values = [sparsity_at(t, 0.0, 0.5, 0, 40) for t in range(41)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone
    increments = [b - a for a, b in zip(values, values[1:])]
    assert increments[0] > increments[-1]  # prunes fast first, slowly at the end
    assert sparsity_at(5, 0.3, 0.6, 7, 7) == 0.6  # empty window: the target at once


# ----- update times ------------------------------------------------------------------------------
def _learned_model(seed=0):
    model = tiny_model(seed)
    model.add_task('t1', 5)
    learn_task(model, 1, seed=seed)
    return model


@pytest.mark.parametrize('end_step, frequency, expected_updates', [
    (25, 10, [10, 20, 25]),      # first at t = frequency, then every frequency, s_f forced at t1
    (30, 10, [10, 20, 30]),
    (7, 3, [3, 6, 7]),
    (4, 10, [4]),                # stage shorter than the frequency: only the final update at t1
])
def test_gradual_pruner_update_times(end_step, frequency, expected_updates):
    """Updates at the expected steps, each to the cubic schedule's value written out here
    (s_f + (s_i - s_f)(1 - t/t1)^3 with s_i 0, s_f 0.5), and each leaves exactly round(s * pool)
    free entries in every layer."""
    model = _learned_model()
    layers = [layer for _, layer in model.masked_layers()]
    pruner = GradualPruner(model, 1, 0.0, 0.5, begin_step=0, end_step=end_step, frequency=frequency)
    applied, free = [], []
    original = pruner.apply

    def recording_apply(sparsity):
        applied.append(sparsity)
        original(sparsity)
        free.append([int((layer.owner == 0).sum()) for layer in layers])

    pruner.apply = recording_apply
    updates = [t for t in range(end_step + 15) if pruner.step(t)]
    assert updates == expected_updates
    cubic = [0.5 + (0.0 - 0.5) * (1 - t / end_step) ** 3 for t in expected_updates]
    assert applied == pytest.approx(cubic, abs=1e-12)
    assert applied[-1] == 0.5
    for sparsity, counts in zip(cubic, free):
        assert counts == [round(sparsity * layer.owner.numel()) for layer in layers]  # task 1 owned all
    assert pruner.applied == 0.5
    pruner.finalize()  # already at the target: nothing more happens
    assert len(applied) == len(expected_updates)


def test_finalize_applies_target_when_the_stage_ended_early():
    model = _learned_model()
    pruner = GradualPruner(model, 1, 0.0, 0.4, begin_step=0, end_step=100, frequency=10)
    for t in range(35):  # interrupted window: last update at t = 30
        pruner.step(t)
    assert pruner.applied == pytest.approx(sparsity_at(30, 0.0, 0.4, 0, 100))
    pruner.finalize()
    assert pruner.applied == 0.4
    for (_, layer), pool in zip(model.masked_layers(), pruner.pool_sizes):
        assert int((layer.owner == 0).sum()) == round(0.4 * pool)


# ----- exact per-layer sparsity over the pool ------------------------------------------------------
def _run_stage(model, task, s_i, s_f, steps, frequency, end_step, seed):
    begin_all(model, task, fixed_pick=task >= 2)
    sgd = build_weight_optimizer(model, task, lr=0.05)
    pruner = GradualPruner(model, task, s_i, s_f, begin_step=0, end_step=end_step,
                           frequency=frequency, optimizer=sgd)
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        train_steps(model, task, [sgd], 1, gen)
        pruner.step(t)
    pruner.finalize()
    end_all(model)
    return pruner


def test_full_stages_reach_the_target_share_of_the_tasks_capacity():
    model = tiny_model(seed=4)
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.5, seed=1)
    model.add_task('t2', 5)
    learn_task(model, 2, seed=2)  # Phase A: task 2 owns every entry task 1 released
    layers = [l for _, l in model.masked_layers()]
    capacity = [int((l.owner == 2).sum()) for l in layers]
    task1 = [l.owner.clone() == 1 for l in layers]
    assert all(c > 0 for c in capacity)

    # stage 1: 0 -> 0.5, then stage 2: 0.5 -> 0.9 (separate pruners, as separate processes)
    for s_i, s_f, seed in ((0.0, 0.5, 5), (0.5, 0.9, 6)):
        pruner = _run_stage(model, 2, s_i, s_f, steps=8, frequency=2, end_step=6, seed=seed)
        assert pruner.pool_sizes == capacity  # pool = owned by task 2 or free, at stage start
        for layer, cap, was_task1 in zip(layers, capacity, task1):
            free = int((layer.owner == 0).sum())
            assert free == round(s_f * cap)
            assert int((layer.owner == 2).sum()) + free == cap
            assert torch.equal(layer.owner == 1, was_task1)  # task 1 never loses a weight


def test_stages_through_the_cli_free_exactly_round_s_times_pool(tmp_path, monkeypatch):
    """The path users run: Phase A, then `--mode prune` stages 0 -> 0.35 -> 0.85, each loading the
    previous stage's checkpoint (so the second pool already holds free entries). Every layer must
    end with exactly round(s_f * pool) free entries; s_f * pool is fractional for most layers (e.g.
    0.35 * 108 = 37.8), so a floor, a ceiling or one tied entry too many shows up."""
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)  # in-memory data, same phases
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'t1': '0.0'}))
    common = dict(dataset='t1', base_width=0.0625, batch_size=16, workers=0, seed=1,
                  baseline_acc_file=goals, train_acc_gate=-1, resume_every_minutes=0)
    scratch = str(tmp_path / 'scratch')
    assert cli.main(stage_args(['--mode', 'finetune'], save_folder=scratch, epochs=1, **common)) == 0
    pools = [layer.owner.numel() for _, layer in model_from_checkpoint(load_checkpoint(scratch)).masked_layers()]
    load = scratch
    for s_i, s_f in ((0.0, 0.35), (0.35, 0.85)):
        folder = str(tmp_path / str(s_f))
        status = cli.main(stage_args(['--mode', 'prune'], load_folder=load, save_folder=folder, epochs=2,
                                     initial_sparsity=s_i, target_sparsity=s_f, pruning_interval=1,
                                     pruning_frequency=3, lr=1e-3, **common))
        assert status == 0
        model = model_from_checkpoint(load_checkpoint(folder))
        fractional = 0
        for (name, layer), pool in zip(model.masked_layers(), pools):
            free = int((layer.owner == 0).sum())
            assert free == round(s_f * pool), f'{name}: {free} free, expected round({s_f} * {pool})'
            assert int((layer.owner == 1).sum()) == pool - free
            fractional += s_f * pool != int(s_f * pool)
        assert fractional >= 10  # the rounding really is exercised
        load = folder
    assert not os.path.exists(os.path.join(load, 'resume.pth.tar'))


@pytest.mark.parametrize('fill', ['zeros', 'constant'])
def test_ties_release_exactly_round_s_times_pool(fill):
    torch.manual_seed(0)
    layer = MaskedConv2d(4, 8, 3, padding=1).to(DEVICE)
    layer.add_task(1, 8, 4)
    assign = layer.owner
    assign.fill_(1)
    pool = layer.owner.numel()  # 288
    with torch.no_grad():
        if fill == 'zeros':
            layer.weight.zero_()
        else:  # equal magnitudes, mixed signs
            layer.weight.copy_(0.5 * torch.sign(torch.randn_like(layer.weight)))
    for sparsity in (0.1, 0.3, 0.55, 0.9):
        release_smallest(layer, 1, sparsity, pool)
        assert int((layer.owner == 0).sum()) == round(sparsity * pool)
        assert int((layer.owner == 1).sum()) == pool - round(sparsity * pool)


def test_rank_uses_round_half_even_and_zero_rank_releases_nothing():
    layer = MaskedLinear(5, 4).to(DEVICE)  # 20 entries
    layer.add_task(1, 4, 5)
    layer.owner.fill_(1)
    release_smallest(layer, 1, 0.02, 20)  # round(0.4) = 0: nothing
    assert not (layer.owner == 0).any()
    release_smallest(layer, 1, 0.125, 20)  # round(2.5) = 2 (half to even)
    assert int((layer.owner == 0).sum()) == 2
    release_smallest(layer, 1, 0.375, 20)  # round(7.5) = 8
    assert int((layer.owner == 0).sum()) == 8


def test_release_only_touches_the_task_and_counts_free_entries_first():
    torch.manual_seed(1)
    layer = MaskedLinear(10, 10, std=1.0).to(DEVICE)
    layer.add_task(1, 10, 10)
    layer.add_task(2, 10, 10)
    with torch.no_grad():
        owner = torch.zeros(100, dtype=torch.uint8)
        owner[:30] = 1      # task 1: tiny weights, must never be released by task 2
        owner[30:40] = 0    # already free (zeros)
        owner[40:] = 2
        layer.owner.copy_(to_device(owner.view(10, 10)))
        w = layer.weight.view(-1)
        w[:30] = 1e-6
        w[30:40] = 0.0
    pool = 70
    before = layer.weight.detach().clone()
    release_smallest(layer, 2, 0.5, pool)  # 35 free in total: 10 already free + 25 released
    assert int((layer.owner == 0).sum()) == 35
    assert int((layer.owner == 2).sum()) == 35
    assert torch.all(layer.owner.view(-1)[:30] == 1)
    assert torch.equal(layer.weight.detach().view(-1)[:30], before.view(-1)[:30])
    released = (before != 0) & (layer.owner == 0)
    survivors = layer.owner == 2
    assert before[released].abs().max() <= before[survivors].abs().min()
