"""The compared methods as configurations of the engine, through the real stages of
CPG_cifar100_main on in-memory tasks (TensorTasks): PackNet (train on the free weights, one-shot
pruning at a fixed ratio before the retrain, LR milestones, gate), PAE (no pick), Piggyback
(later tasks only pick); no goal file (every result accepted), no growth. Earlier tasks' weights
never change and their logits stay bitwise equal.
"""
import json
import os

import pytest
import torch

import CPG_cifar100_main as cli
from cpg_testlib import DEVICE, TensorTasks, stage_args
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.context import EXIT_NO_CAPACITY, EXIT_OK, EXIT_STOP_PRUNING

NO_GOAL = dict(baseline_acc_file='', network_width_multiplier=1.0, max_allowed_network_width_multiplier=1.0,
               total_num_tasks=0)
NO_PICK = {'no-learn_pick': True}   # --no-learn_pick: every earlier weight is used (PAE, PackNet)


def _common(**extra):
    flags = dict(base_width=0.0625, batch_size=16, workers=0, seed=1, resume_every_minutes=0, lr=0.01, **NO_GOAL)
    flags.update(extra)
    return flags


def _run(mode, save, **flags):
    return cli.main(stage_args(['--mode', mode], save_folder=str(save), **flags))


@torch.no_grad()
def _outputs(folder):
    model = model_from_checkpoint(load_checkpoint(str(folder)), DEVICE).eval()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    out = {}
    for task in range(1, len(model.tasks) + 1):
        model.set_task(task)
        out[task] = model(images).cpu()
    return model, out


def _shared(model):
    return {name: layer.weight.detach().cpu().clone() for name, layer in model.masked_layers()}


def _packnet_task(tmp_path, task, load=None, ratio=0.6):
    scratch, pruned = tmp_path / task / 'scratch', tmp_path / task / 'one_shot_prune'
    load_flag = {} if load is None else {'load_folder': str(load)}
    assert _run('finetune', scratch, dataset=task, epochs=2, **NO_PICK, **load_flag,
                **_common(train_acc_gate=0.99)) == EXIT_OK   # no goal: accepted whatever the gate
    status = _run('prune', pruned, dataset=task, load_folder=str(scratch), epochs=3, initial_sparsity=0.0,
                  target_sparsity=ratio, pruning_interval=0, prune_lr_decay_epochs=2, **NO_PICK,
                  selection='last', **_common(lr=1e-3, train_acc_gate=0.0))
    return status, scratch, pruned


def test_packnet_prunes_once_at_the_fixed_ratio_exactly_per_layer_and_forgets_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    status, scratch, pruned = _packnet_task(tmp_path, 't1')
    assert status == EXIT_OK
    before = model_from_checkpoint(load_checkpoint(str(scratch)))
    after = model_from_checkpoint(load_checkpoint(str(pruned)))
    for (name, layer), (_, trained) in zip(after.masked_layers(), before.masked_layers()):
        pool = trained.owner.numel()   # task 1 owned every entry
        assert int((layer.owner == 0).sum()) == round(0.6 * pool), name
        assert bool((layer.weight[layer.owner == 0] == 0).all()), name
    lines = [json.loads(x) for x in open(pruned / 'log.jsonl')]
    # pruned before the first training step: every epoch already at 0.6; LR x0.1 after epoch 2
    assert len(lines) == 3 and all(abs(line['sparsity'] - 0.6) < 1e-4 for line in lines)  # per-layer rounding
    assert [line['lr']['lr'] for line in lines] == [1e-3, 1e-3, 1e-3 * 0.1]

    model1, out1 = _outputs(pruned)
    weights1 = _shared(model1)
    status, _, pruned2 = _packnet_task(tmp_path, 't2', load=pruned)
    assert status == EXIT_OK
    model2, out2 = _outputs(pruned2)
    assert torch.equal(out2[1], out1[1])
    for name, weight in _shared(model2).items():   # every entry of task 1 is where it was
        owned1 = model1.masked_layers()[[n for n, _ in model1.masked_layers()].index(name)][1].owner.cpu() == 1
        assert torch.equal(weight[owned1], weights1[name][owned1]), name
    # task 2 used every weight of task 1 (no pick) and took only the freed entries
    assert all(not layer.picking_tasks for _, layer in model2.masked_layers())


def test_packnet_gate_saves_nothing_when_the_retrain_stays_below_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    scratch, pruned = tmp_path / 'scratch', tmp_path / 'pruned'
    assert _run('finetune', scratch, dataset='t1', epochs=1, **_common()) == EXIT_OK
    status = _run('prune', pruned, dataset='t1', load_folder=str(scratch), epochs=1, initial_sparsity=0.0,
                  target_sparsity=0.9, pruning_interval=0, selection='last', **_common(train_acc_gate=1.0))
    assert status == EXIT_STOP_PRUNING and not os.path.exists(pruned / 'checkpoint.pth.tar')


def test_pae_uses_every_earlier_weight_and_forgets_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    first, second = tmp_path / 't1', tmp_path / 't2'
    assert _run('finetune', first, dataset='t1', epochs=1, **_common()) == EXIT_OK
    # task 1 owns everything: free capacity comes from pruning, as in CPG
    assert _run('prune', tmp_path / 'p1', dataset='t1', load_folder=str(first), epochs=1, target_sparsity=0.5,
                pruning_interval=1, **_common(train_acc_gate=0.0)) == EXIT_OK
    model1, out1 = _outputs(tmp_path / 'p1')
    assert _run('finetune', second, dataset='t2', epochs=2, load_folder=str(tmp_path / 'p1'), **NO_PICK,
                **_common()) == EXIT_OK
    model2, out2 = _outputs(second)
    assert torch.equal(out2[1], out1[1])
    assert model2.tasks[1]['picks'] is False
    for _, layer in model2.masked_layers():
        assert not layer.picking_tasks
        keep = layer.task_keep_mask(2)
        owner = layer.owner[:keep.shape[0], :keep.shape[1]]
        assert bool(keep[(owner == 1)].all())   # every weight of task 1 is used


def test_piggyback_later_tasks_only_pick_and_the_first_task_never_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    first = tmp_path / 't1'
    assert _run('finetune', first, dataset='t1', epochs=1, **_common()) == EXIT_OK
    model1, out1 = _outputs(first)
    weights1 = _shared(model1)
    load = first
    for task in ('t2', 't3'):
        folder = tmp_path / task
        status = _run('finetune', folder, dataset=task, epochs=2, load_folder=str(load), lr_mask=1e-2,
                      mask_lr_decay_epochs=1, mask_lr_decay_factors=0.1, **_common())
        assert status == EXIT_NO_CAPACITY   # owns no weight: it only picks (and trains BN, head)
        load = folder
    model3, out3 = _outputs(load)
    assert torch.equal(out3[1], out1[1])
    assert all(torch.equal(w, weights1[n]) for n, w in _shared(model3).items())
    for _, layer in model3.masked_layers():
        assert bool((layer.owner == 1).all()) and layer.picking_tasks == [2, 3]
    assert load_checkpoint(str(first))['tasks'][0]['accuracy'] == model3.tasks[0]['accuracy']


def test_baseline_results_combine_runs_and_fold_the_age_tasks(tmp_path):
    """tools/baseline_results.py: fine-Avg / fine-Max over runs, summed sizes, experiment 3's
    age folds as one `age` row (their mean), verification's ± kept."""
    from cpg_testlib import load_tool, tiny_model
    from utils.checkpoint import save_checkpoint
    tool = load_tool('baseline_results')
    accuracies = {'run1': {'face_verification': 0.9, 'age0': 0.5, 'age1': 0.7},
                  'run2': {'face_verification': 0.8, 'age0': 0.6, 'age1': 0.4}}
    for run, tasks in accuracies.items():
        for task, acc in tasks.items():
            folder = tmp_path / run / task
            model = tiny_model()
            model.add_task(task, 5)
            save_checkpoint(str(folder / 'checkpoint.pth.tar'), model, 'custom_vgg_cifar100')
            result = {'accuracy': acc, **({'accuracy_std': 0.03} if task == 'face_verification' else {})}
            (folder / 'result.json').write_text(json.dumps(result))
    parser = tool.get_args_parser()
    argv = ['--method', 'fine-Max', '--experiment', '3', '--tasks', 'face_verification', 'age0', 'age1',
            '--out', str(tmp_path / 'r.json'), '--combine', 'max', '--roots']
    best = tool.collect(parser.parse_args(argv + [str(tmp_path / 'run1'), str(tmp_path / 'run2')]))
    assert [r['task'] for r in best['tasks']] == ['face_verification', 'age']
    assert best['tasks'][0]['accuracy'] == 0.9 and 'accuracy_std' not in best['tasks'][0]  # two runs: no ±
    assert best['tasks'][1] == {'task': 'age', 'accuracy': (0.6 + 0.7) / 2, 'folds': {'age0': 0.6, 'age1': 0.7}}
    one = tool.collect(parser.parse_args(argv + [str(tmp_path / 'run1')]))
    assert one['tasks'][0]['accuracy_std'] == 0.03
    size = sum(os.path.getsize(tmp_path / 'run1' / t / 'checkpoint.pth.tar') for t in accuracies['run1']) / 2 ** 20
    assert one['checkpoint_mb'] == pytest.approx(size) and one['networks'] == 3
    assert 0 < one['compact_mb'] < one['checkpoint_mb']
