"""One process per task (--mode task, utils/sequence.py), in process on in-memory data: the
stages hand the model on in memory, each stage writes its checkpoint once and no resume state
after its last epoch, a rerun replays every stage without loading a model, and the pruner's
device-side ranking releases exactly the entries of the CPU's selection."""
import json
import os

import pytest
import torch

import CPG_cifar100_main as cli
import utils.checkpoint as checkpoint_module
import utils.context as context_module
import utils.sequence as cli_sequence
from cpg_testlib import DEVICE, ON_CUDA, TINY, TensorTasks, stage_args, task_logits, tiny_model, to_device
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.grower import assign_free_capacity
from utils.pruner import GradualPruner

GOALS = {'toy_task_1': '0.0', 'toy_task_2': '0.0'}


def _task(tmp_path, task, load=None, ratios=('0.5', '0.9'), **flags):
    """The task process's args: Phase A 2 epochs, pruning stages `ratios`, retrain 2 epochs."""
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps(GOALS))
    settings = dict(dataset=task, task_folder=tmp_path / task, data_root=tmp_path, base_width=TINY,
                    batch_size=32, workers=0, epochs=2, prune_epochs=1, pruning_interval=1,
                    pruning_frequency=1, retrain_epochs=2, train_acc_gate=0, resume_every_minutes=0,
                    num_classes=5, baseline_acc_file=goals, total_num_tasks=2, lr=1e-2, lr_mask=1e-2)
    if load:
        settings['load_folder'] = tmp_path / load / 'gradual_prune'
    settings.update(flags)
    return stage_args(['--mode', 'task', '--pruning_ratios', *ratios], **settings)


@pytest.fixture
def spies(tmp_path, monkeypatch):
    """Every checkpoint write (path, frozen or resume) and every checkpoint read of the engine."""
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    writes, reads = [], []
    save, load = checkpoint_module.save_checkpoint, context_module.load_checkpoint

    def spy_save(path, model, arch, frozen=True, **kwargs):
        writes.append((os.path.relpath(path, tmp_path), frozen))
        return save(path, model, arch, frozen=frozen, **kwargs)

    def spy_load(path, *args, **kwargs):
        reads.append(str(path))
        return load(path, *args, **kwargs)
    monkeypatch.setattr(context_module, 'save_checkpoint', spy_save)
    monkeypatch.setattr(context_module, 'load_checkpoint', spy_load)
    return writes, reads


def test_a_task_runs_its_stages_in_one_process_with_the_model_in_memory(tmp_path, spies):
    writes, reads = spies
    assert cli.main(_task(tmp_path, 'toy_task_1')) == 0
    assert reads == []   # a fresh model, then every stage takes the one before from memory
    del writes[:]
    assert cli.main(_task(tmp_path, 'toy_task_2', load='toy_task_1')) == 0
    # task 2 reads task 1's picked model, once; Phase A, both pruning stages and the retrain
    # of the picked (last) stage follow in memory
    assert reads == [str(tmp_path / 'toy_task_1' / 'gradual_prune')]
    frozen = [path for path, is_frozen in writes if is_frozen]
    resumes = [path for path, is_frozen in writes if not is_frozen]
    stages = ['scratch', 'gradual_prune/0.5', 'gradual_prune/0.9', 'retrain']
    # each stage's checkpoint is written once (the retrain's only when it improved)
    assert [p.rsplit('/', 1)[0] for p in frozen] == [f'toy_task_2/{s}' for s in stages][:len(frozen)]
    assert len(frozen) in (3, 4)
    # a resume state after every epoch but a stage's last (resume_every_minutes 0): Phase A and
    # the retrain have 2 epochs, the pruning stages 1
    assert sorted(p.rsplit('/', 1)[0] for p in resumes) == ['toy_task_2/retrain', 'toy_task_2/scratch']
    assert not list(tmp_path.glob('**/resume.pth.tar'))
    choice = json.loads((tmp_path / 'toy_task_2' / 'gradual_prune' / 'chosen.json').read_text())
    assert choice['chosen_pruning_ratio'] == 0.9 and choice['picked_by'] == 'auto'


def test_a_rerun_replays_every_stage_without_loading_a_model(tmp_path, spies):
    writes, reads = spies
    assert cli.main(_task(tmp_path, 'toy_task_1')) == 0
    assert cli.main(_task(tmp_path, 'toy_task_2', load='toy_task_1')) == 0
    final = load_checkpoint(str(tmp_path / 'toy_task_2' / 'gradual_prune'))
    del writes[:], reads[:]
    assert cli.main(_task(tmp_path, 'toy_task_2', load='toy_task_1')) == 0
    assert reads == [] and writes == []
    again = load_checkpoint(str(tmp_path / 'toy_task_2' / 'gradual_prune'))
    assert again['checkpoint_id'] == final['checkpoint_id']


def test_earlier_tasks_stay_exact_through_a_task_process(tmp_path, spies):
    """Task 1's logits from its own final model equal its logits from task 2's final model."""
    assert cli.main(_task(tmp_path, 'toy_task_1')) == 0
    assert cli.main(_task(tmp_path, 'toy_task_2', load='toy_task_1')) == 0
    x = to_device(torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    before = model_from_checkpoint(load_checkpoint(str(tmp_path / 'toy_task_1' / 'gradual_prune')), DEVICE)
    after = model_from_checkpoint(load_checkpoint(str(tmp_path / 'toy_task_2' / 'gradual_prune')), DEVICE)
    assert torch.equal(task_logits(before, x, [1])[1], task_logits(after, x, [1])[1])


# ----- the pruner: the device's ranking releases what the CPU's selection releases --------------------
def _pruned_pair(seed, ties):
    """Two identical tiny models whose task 2 owns part of every layer (task 1 the rest, some free)."""
    models = []
    for _ in range(2):
        model = tiny_model(seed)
        model.add_task('t1', 5)
        model.add_task('t2', 5)
        models.append(model)
    gen = torch.Generator().manual_seed(seed)
    for (_, a), (_, b) in zip(models[0].masked_layers(), models[1].masked_layers()):
        weight = torch.randn(a.weight.shape, generator=gen)
        if ties:   # many equal magnitudes: the position rule decides
            weight = (weight * 2).round() / 2
        owner = torch.randint(0, 3, a.owner.shape, generator=gen, dtype=torch.uint8)
        for layer in (a, b):
            layer.owner.copy_(to_device(owner))
            layer.weight.data.copy_(to_device(weight).masked_fill(layer.owner == 0, 0.0))
    return models


@pytest.mark.parametrize('ties', [False, True])
def test_the_device_ranking_releases_exactly_the_selected_entries(ties):
    select, ranked = _pruned_pair(7, ties)
    pools = [int(((a.owner == 2) | (a.owner == 0)).sum()) for _, a in select.masked_layers()]
    free = [int((a.owner == 0).sum()) for _, a in select.masked_layers()]
    pruners = []
    for model, by_sort in ((select, False), (ranked, True)):
        pruner = GradualPruner(model, 2, 0.0, 0.9, begin_step=0, end_step=10, frequency=1)
        pruner.by_sort = by_sort
        pruners.append(pruner)
    for sparsity in (0.1, 0.35, 0.6, 0.9):
        for pruner in pruners:
            pruner.apply(sparsity)
        for (name, a), (_, b), pool, before in zip(select.masked_layers(), ranked.masked_layers(), pools, free):
            assert torch.equal(a.owner, b.owner), (sparsity, name)
            assert torch.equal(a.weight, b.weight), (sparsity, name)
            # exactly round(s * pool) of the pool is free once s asks for more than was free
            assert int((b.owner == 0).sum()) == max(round(sparsity * pool), before), (sparsity, name)


@pytest.mark.skipif(not ON_CUDA, reason='host syncs exist only with a CUDA device (CPG_TEST_DEVICE=cuda)')
def test_a_mask_update_on_the_gpu_waits_for_nothing():
    model = tiny_model(3)
    model.add_task('t1', 5)
    assign_free_capacity(model, 1)
    pruner = GradualPruner(model, 1, 0.0, 0.9, begin_step=0, end_step=10, frequency=1)
    pruner.apply(0.2)   # buffers made on the first update
    torch.cuda.set_sync_debug_mode('error')   # any host sync raises
    try:
        pruner.apply(0.5)
    finally:
        torch.cuda.set_sync_debug_mode('default')


def test_width_step_0_accepts_phase_a_at_its_width_instead_of_retrying_it(tmp_path, spies, monkeypatch):
    """WIDTH_STEP=0 ("never wider") below the maximum width: a Phase A that would widen (here a
    train-accuracy gate of 1.0 that no epoch passes) is accepted at the start width, under the
    must-prune rule, once; it is not retried at the same width."""
    calls = []
    run_finetune = cli_sequence.run_finetune
    monkeypatch.setattr(cli_sequence, 'run_finetune', lambda ctx: calls.append(1) or run_finetune(ctx)
                        if len(calls) < 3 else pytest.fail('Phase A retried at the same width'))
    args = _task(tmp_path, 'toy_task_1', ratios=(), width_step=0.0, network_width_multiplier=1.0,
                 max_allowed_network_width_multiplier=1.5, train_acc_gate=1.0)
    assert cli.main(args) == 0
    assert len(calls) == 1
    assert (tmp_path / 'toy_task_1' / 'width').read_text().strip() == '1.0'
    result = json.loads((tmp_path / 'toy_task_1' / 'scratch' / 'result.json').read_text())
    assert 'at maximum width: accept' in result['reason'], result
