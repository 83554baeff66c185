"""The compared methods' recipes (utils/recipes.py) through the real stages of CPG_cifar100_main on
in-memory tasks (TensorTasks): which parameters train, which BatchNorm statistics stay unchanged,
the optimizer of each parameter group with its LR and decay, and which epoch is kept. The scripts'
flags for each method are pinned by tests/test_method_recipes.py.
"""
import json

import pytest
import torch

import CPG_cifar100_main as cli
from cpg_testlib import DEVICE, TINY, TensorTasks, stage_args, task_logits
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.context import EXIT_NO_CAPACITY, EXIT_OK
from utils.grower import assign_free_capacity
from utils.recipes import build_head_optimizer, build_weight_optimizer

NO_GOAL = dict(baseline_acc_file='', network_width_multiplier=1.0, max_allowed_network_width_multiplier=1.0,
               total_num_tasks=0)
# piggyback's later tasks (experiments 1 and 2): masks and head with Adam at 1e-4, both x0.1 after
# epoch 2 here (15 of 30 in the scripts), BatchNorm in eval mode, biases fixed, the best epoch
PIGGYBACK = {'no-train_bn': True, 'no-train_biases': True, 'lr_classifier': 1e-4, 'lr_mask': 1e-4, 'lr': 1e-4,
             'lr_decay_epochs': 2, 'mask_lr_decay_epochs': 2, 'mask_lr_decay_factors': 0.1, 'weight_decay': 0,
             'selection': 'best'}


def _flags(**extra):
    flags = dict(base_width=TINY, batch_size=16, workers=0, seed=1, resume_every_minutes=0, lr=0.01, **NO_GOAL)
    flags.update(extra)
    return flags


def _run(mode, save, **flags):
    return cli.main(stage_args(['--mode', mode], save_folder=str(save), **flags))


def _model(folder):
    return model_from_checkpoint(load_checkpoint(str(folder)), DEVICE)


def _bn_state(model, task):
    """{name: tensor} of every BatchNorm tensor (affine and running statistics) of `task`."""
    out = {}
    for name, module in model.per_task_modules():
        for key, value in module.per_task[str(task)].state_dict().items():
            out[f'{name}.{key}'] = value.detach().cpu().clone()
    return out


def _biases(model, task):
    return {name: layer.biases[str(task)].detach().cpu().clone()
            for name, layer in model.masked_layers() if layer.has_bias}


def _log(folder):
    return [json.loads(line) for line in open(folder / 'log.jsonl')]


@pytest.fixture
def first_task(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    folder = tmp_path / 't1'
    assert _run('finetune', folder, dataset='t1', epochs=1, **_flags()) == EXIT_OK
    return folder


def test_piggyback_keeps_batchnorm_and_biases_and_trains_the_head_with_adam(first_task, tmp_path):
    """Task 2 with piggyback's recipe: its BatchNorm (affine and running statistics) and biases keep
    task 1's values bit for bit; mask and head LRs decay x0.1 after epoch 2; the best epoch is
    kept; task 1's logits never change. With the default recipe its BatchNorm does train."""
    model1 = _model(first_task)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    before = task_logits(model1, images)
    folder = tmp_path / 'piggyback'
    assert _run('finetune', folder, dataset='t2', epochs=3, load_folder=str(first_task),
                **_flags(**PIGGYBACK)) == EXIT_NO_CAPACITY   # owns no weight: it only picks
    model2 = _model(folder)
    bn1, bn2 = _bn_state(model1, 1), _bn_state(model2, 2)
    assert bn1.keys() == bn2.keys() and bn1
    assert all(torch.equal(bn1[k], bn2[k]) for k in bn1), [k for k in bn1 if not torch.equal(bn1[k], bn2[k])]
    assert _biases(model1, 1) and all(torch.equal(b, _biases(model2, 2)[n]) for n, b in _biases(model1, 1).items())
    assert torch.equal(task_logits(model2, images, tasks=[1])[1], before[1])
    assert all(layer.picking_tasks == [2] for _, layer in model2.masked_layers())
    lines = _log(folder)
    assert [line['lr']['lr_classifier'] for line in lines] == pytest.approx([1e-4, 1e-4, 1e-5])
    assert [line['lr']['lr_mask'] for line in lines] == pytest.approx([1e-4, 1e-4, 1e-5])
    accs = [line['val']['accuracy'] for line in lines]
    result = json.loads((folder / 'result.json').read_text())
    assert result['epoch'] == accs.index(max(accs)) and result['accuracy'] == max(accs)

    trained = tmp_path / 'default'   # the control: the default recipe trains task 2's BatchNorm
    assert _run('finetune', trained, dataset='t2', epochs=1, load_folder=str(first_task),
                **_flags(lr_mask=1e-4)) == EXIT_NO_CAPACITY
    bn_default = _bn_state(_model(trained), 2)
    assert any(not torch.equal(bn1[k], bn_default[k]) for k in bn1 if 'running' in k)


def test_optimizer_groups_of_each_recipe(first_task):
    """Which parameters each optimizer holds, its class, momentum kind and LR."""
    model = _model(first_task)
    task = model.add_task('t2', 5)
    assign_free_capacity(model, task)
    shared = {id(layer.weight) for _, layer in model.masked_layers()}
    biases = {id(layer.biases['2']) for _, layer in model.masked_layers() if layer.has_bias}
    norms = {id(p) for _, m in model.per_task_modules() for p in m.per_task['2'].parameters()}
    head = {id(p) for p in model.heads['2'].parameters()}

    cpg = stage_args(['--mode', 'finetune'], dataset='t2', save_folder='x', lr=0.01)
    sgd = build_weight_optimizer(model, task, cpg, cpg.lr)
    group = sgd.param_groups[0]
    assert type(sgd) is torch.optim.SGD and group['nesterov'] and group['momentum'] == 0.9
    assert group['weight_decay'] == 0.0 and group['lr'] == 0.01
    assert {id(p) for p in group['params']} == shared | biases | norms | head
    assert build_head_optimizer(model, task, cpg) is None

    piggyback = stage_args(['--mode', 'finetune'], dataset='t2', save_folder='x', **PIGGYBACK)
    sgd = build_weight_optimizer(model, task, piggyback, piggyback.lr)
    assert {id(p) for p in sgd.param_groups[0]['params']} == shared   # gated to the task's own entries
    adam = build_head_optimizer(model, task, piggyback)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]['lr'] == 1e-4
    assert adam.param_groups[0]['weight_decay'] == 0
    assert {id(p) for p in adam.param_groups[0]['params']} == head
    assert not any(p.requires_grad for _, m in model.per_task_modules() for p in m.per_task['2'].parameters())

    packnet = stage_args(['--mode', 'finetune'], dataset='t2', save_folder='x', lr=1e-3,
                         **{'no-nesterov': True, 'no-train_bn': True, 'no-train_biases': True})
    group = build_weight_optimizer(model, task, packnet, packnet.lr).param_groups[0]
    assert not group['nesterov'] and group['momentum'] == 0.9 and group['lr'] == 1e-3
    assert {id(p) for p in group['params']} == shared | head


def test_packnet_one_shot_retrain_is_kept_only_if_it_beats_the_pruned_model(first_task, tmp_path):
    """PackNet's main.py prune(): the retrain starts from the pruned model's accuracy as its best;
    with selection best a retrain that never beats it leaves the pruned model (epoch -1). LR 0 and
    frozen BatchNorm: every retrained epoch equals the pruned model, so none beats it."""
    flags = _flags(lr=0.0, **{'no-learn_pick': True, 'no-train_bn': True, 'no-nesterov': True})
    pruned = tmp_path / 'pruned'
    assert _run('prune', pruned, dataset='t1', load_folder=str(first_task), epochs=2, target_sparsity=0.5,
                pruning_interval=0, selection='best', **flags) == EXIT_OK
    result = json.loads((pruned / 'result.json').read_text())
    accs = [line['val']['accuracy'] for line in _log(pruned)]
    assert result['epoch'] == -1 and all(acc == result['accuracy'] for acc in accs)
    model = _model(pruned)
    for _, layer in model.masked_layers():
        assert int((layer.owner == 0).sum()) == round(0.5 * layer.owner.numel())
    last = tmp_path / 'last'   # the control: selection last keeps the last retrained epoch
    assert _run('prune', last, dataset='t1', load_folder=str(first_task), epochs=2, target_sparsity=0.5,
                pruning_interval=0, selection='last', train_acc_gate=0, **flags) == EXIT_OK
    assert json.loads((last / 'result.json').read_text())['epoch'] == 1
