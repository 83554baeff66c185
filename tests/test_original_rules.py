"""ORIGINAL_RULES=1 (--original_rules): each rule of docs/differences.md ("Differences from the original
implementation") that can change the numbers, restored as the original ran it, one switch each
(utils/recipes.py), through the real stages of CPG_cifar100_main on in-memory tasks (TensorTasks)
or the pruner itself. Each switch changes its rule and nothing else; earlier tasks stay bit-exact.
(--gate_stops_must_prune: tests/test_must_prune_gate.py; --angle_lambda_restart:
tests/test_face_engine.py.)
"""
import json
import re

import pytest
import torch

import CPG_cifar100_main as cli
import CPG_face_main as face_cli
import utils.pruner as pruner_module
from cpg_testlib import DEVICE, TINY, TensorTasks, fixed_inputs, stage_args, task_logits, tiny_model
from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from utils.context import EXIT_OK
from utils.grower import assign_free_capacity
from utils.pruner import GradualPruner, release_at_cutoff, release_smallest
from utils.recipes import ORIGINAL_RULES

NO_GOAL = dict(baseline_acc_file='', network_width_multiplier=1.0, max_allowed_network_width_multiplier=1.0,
               total_num_tasks=0)
STAGE = ['--mode', 'prune', '--dataset', 't', '--save_folder', 's', '--load_folder', 'l']


def _parsed(module, argv):
    parser = module.get_args_parser()
    args = parser.parse_args(argv)
    module.check_args(parser, args)
    return vars(args)


@pytest.mark.parametrize('module, extra', [(cli, set()), (face_cli, {'angle_lambda_restart'})],
                         ids=['cifar', 'face'])
def test_original_rules_sets_each_rule_and_nothing_else(module, extra):
    default, original = _parsed(module, STAGE), _parsed(module, STAGE + ['--original_rules'])
    changed = {k for k in default if default[k] != original[k]}
    assert changed == set(ORIGINAL_RULES) | extra | {'original_rules'}
    assert {k: original[k] for k in ORIGINAL_RULES} == ORIGINAL_RULES
    assert default['retrain_baseline'] == 'pruned' and default['release_zeroing'] == 'release'
    assert default['sparsity_rule'] == 'exact' and default['gate_stops_must_prune'] is False


def _flags(**extra):
    flags = dict(base_width=TINY, batch_size=16, workers=0, seed=1, resume_every_minutes=0, lr=0.01, **NO_GOAL)
    flags.update(extra)
    return flags


def _run(mode, save, **flags):
    argv = ['--mode', mode] + (['--finetune_again'] if flags.pop('finetune_again', False) else [])
    return cli.main(stage_args(argv, save_folder=str(save), **flags))


@pytest.fixture
def two_tasks(tmp_path, monkeypatch):
    """Task 1 trained and pruned to 0.5 (p1), task 2 trained on the freed half with a pick (t2)."""
    monkeypatch.setattr(cli, 'CifarTasks', TensorTasks)
    assert _run('finetune', tmp_path / 't1', dataset='t1', epochs=1, **_flags()) == EXIT_OK
    assert _run('prune', tmp_path / 'p1', dataset='t1', load_folder=str(tmp_path / 't1'), epochs=1,
                target_sparsity=0.5, pruning_interval=1, train_acc_gate=0, **_flags()) == EXIT_OK
    assert _run('finetune', tmp_path / 't2', dataset='t2', epochs=1, load_folder=str(tmp_path / 'p1'),
                lr_mask=0.01, **_flags()) == EXIT_OK
    return tmp_path


def _threshold(log_path):
    """(fresh accuracy, threshold, why) from the retrain's log line."""
    line = [x for x in open(log_path) if 'to keep, it must beat' in x][-1]
    found = re.search(r'starts at val acc ([0-9.]+) .* must beat ([0-9.]+) \((.*)\)', line)
    return float(found.group(1)), float(found.group(2)), found.group(3)


def test_retrain_baseline_fresh_compares_with_the_fresh_mask_not_the_pruned_model(two_tasks):
    """The pruned model's recorded accuracy is set to 1.0: the default retrain must beat it (and
    cannot); --retrain_baseline fresh only has to beat the fresh pick mask's first validation."""
    root = two_tasks
    model = model_from_checkpoint(load_checkpoint(str(root / 't2')), 'cpu')
    model.tasks[1]['accuracy'] = 1.0
    save_checkpoint(str(root / 'high' / 'checkpoint.pth.tar'), model, 'custom_vgg_cifar100')
    common = dict(dataset='t2', load_folder=str(root / 'high'), epochs=1, lr_mask=1e-4, finetune_again=True,
                  **_flags())
    assert _run('finetune', root / 'r_default', log_path=str(root / 'default.log'), **common) == EXIT_OK
    fresh, threshold, why = _threshold(root / 'default.log')
    assert threshold == 1.0 and why == 'the pruned model'
    assert json.loads((root / 'r_default' / 'result.json').read_text())['improved'] is False
    assert _run('finetune', root / 'r_fresh', log_path=str(root / 'fresh.log'), retrain_baseline='fresh',
                **common) == EXIT_OK
    fresh2, threshold2, why2 = _threshold(root / 'fresh.log')
    assert fresh2 == fresh and threshold2 == fresh and why2.startswith('the fresh pick mask')
    result = json.loads((root / 'r_fresh' / 'result.json').read_text())
    assert result['signature']['retrain_baseline'] == 'fresh'
    assert result['improved'] == (result['accuracy'] > fresh)


def _spy_updates(monkeypatch):
    """Every mask update of a pruning stage: entries it released, how many of them still hold a
    non-zero weight / momentum right after it."""
    updates, apply = [], GradualPruner.apply

    def spy(self, sparsity):
        before = [layer.owner == 0 for layer in self.layers]
        apply(self, sparsity)
        new = [(layer.owner == 0) & ~free for layer, free in zip(self.layers, before)]
        momentum = [self.optimizer.state.get(layer.weight, {}).get('momentum_buffer') for layer in self.layers]
        updates.append({'released': sum(int(n.sum()) for n in new),
                        'weights': sum(int((layer.weight[n] != 0).sum()) for layer, n in zip(self.layers, new)),
                        'momentum': sum(int((m[n] != 0).sum()) for m, n in zip(momentum, new) if m is not None)})

    monkeypatch.setattr(GradualPruner, 'apply', spy)
    return updates


@pytest.mark.parametrize('zeroing', ['release', 'validation'])
def test_release_zeroing_validation_keeps_released_weights_until_the_validation(two_tasks, monkeypatch, zeroing):
    """--release_zeroing validation: released weights keep their values and momentum (they stay in
    task 2's forward pass) until the epoch's validation zeroes them; the default zeroes them at
    once. Either way exactly round(0.5 x pool) entries are free per layer (the sparsity rule is not
    this switch's), the saved weights are 0 where free, and task 1's logits are bit-exact."""
    root = two_tasks
    before = task_logits(model_from_checkpoint(load_checkpoint(str(root / 't2')), DEVICE), fixed_inputs())
    pools = [int(((layer.owner == 2) | (layer.owner == 0)).sum())
             for _, layer in model_from_checkpoint(load_checkpoint(str(root / 't2')), 'cpu').masked_layers()]
    updates = _spy_updates(monkeypatch)
    assert _run('prune', root / 'p2', dataset='t2', load_folder=str(root / 't2'), epochs=2, target_sparsity=0.5,
                pruning_interval=1, pruning_frequency=1, train_acc_gate=0, release_zeroing=zeroing,
                **_flags()) == EXIT_OK
    released = [u for u in updates if u['released']]
    assert len(released) >= 2
    if zeroing == 'release':
        assert all(u['weights'] == 0 and u['momentum'] == 0 for u in released)
    else:
        assert all(u['weights'] > 0 for u in released)
        assert any(u['momentum'] > 0 for u in released)   # after the first step: momentum kept too
    model = model_from_checkpoint(load_checkpoint(str(root / 'p2')), DEVICE)
    for (name, layer), pool in zip(model.masked_layers(), pools):
        free = layer.owner == 0
        assert int(((layer.owner == 2) | free).sum()) == pool
        assert int(free.sum()) == round(0.5 * pool), name
        assert bool((layer.weight[free] == 0).all()), name
    assert torch.equal(task_logits(model, fixed_inputs(), tasks=[1])[1], before[1])
    signature = json.loads((root / 'p2' / 'result.json').read_text())['signature']
    assert signature.get('release_zeroing', 'release') == zeroing and 'sparsity_rule' not in signature


def _layer_with_ties():
    """A tiny model's first layer owned by task 1, |W| in thirds {0.1, 0.2, 0.3}: ties everywhere."""
    model = tiny_model()
    model.add_task('a', 5)
    assign_free_capacity(model, 1)
    layer = model.masked_layers()[0][1]
    with torch.no_grad():
        n = layer.weight.numel()
        layer.weight.copy_(((torch.arange(n) % 3 + 1) * 0.1 * (-1) ** torch.arange(n)).view_as(layer.weight))
    return model, layer


def test_sparsity_rule_original_releases_every_tie_at_the_cutoff():
    """The original cutoff: the r-th smallest |W| of the pool; every own entry <= it goes (2/3 of
    the layer here for a target of 1/2); the exact rule frees round(0.5 x pool) by position. The
    released weights are zeroed at once either way (zeroing is not this switch's)."""
    _, exact = _layer_with_ties()
    pool = exact.owner.numel()
    release_smallest(exact, 1, 0.5, pool)
    assert int((exact.owner == 0).sum()) == round(0.5 * pool)
    _, original = _layer_with_ties()
    release_at_cutoff(original, 1, 0.5, pool)
    ties = int(((torch.arange(pool) % 3) < 2).sum())   # every |W| of 0.1 and 0.2
    assert int((original.owner == 0).sum()) == ties > round(0.5 * pool)
    assert bool((original.weight[original.owner == 0] == 0).all())


def test_sparsity_rule_original_does_not_force_the_target_at_the_end_of_the_ramp():
    """Updates every 4 steps over a ramp of 10: the original stops at its step-8 update (below the
    target, also after finalize); the exact rule applies the target at step 10."""
    results = {}
    for rule in ('exact', 'original'):
        model, _ = _layer_with_ties()
        pruner = GradualPruner(model, 1, 0.0, 0.5, begin_step=0, end_step=10, frequency=4, sparsity_rule=rule)
        for step in range(12):
            pruner.step(step)
        pruner.finalize()
        results[rule] = pruner.applied
    assert results['exact'] == 0.5 and results['original'] < 0.5
    one_shot = GradualPruner(_layer_with_ties()[0], 1, 0.0, 0.5, begin_step=0, end_step=0, frequency=1,
                             sparsity_rule='original')
    one_shot.finalize()   # one-shot pruning still reaches its target
    assert one_shot.applied == 0.5


def test_sparsity_rule_original_runs_in_a_real_stage(two_tasks, monkeypatch):
    """--sparsity_rule original reaches the stage's pruner (release_at_cutoff at every update) and
    its signature; task 1 stays bit-exact."""
    root = two_tasks
    before = task_logits(model_from_checkpoint(load_checkpoint(str(root / 't2')), DEVICE), fixed_inputs())
    calls = []
    original = pruner_module.release_at_cutoff
    monkeypatch.setattr(pruner_module, 'release_at_cutoff', lambda *a, **k: calls.append(1) or original(*a, **k))
    assert _run('prune', root / 'p2', dataset='t2', load_folder=str(root / 't2'), epochs=1, target_sparsity=0.5,
                pruning_interval=1, pruning_frequency=1, train_acc_gate=0, sparsity_rule='original',
                **_flags()) == EXIT_OK
    assert calls
    model = model_from_checkpoint(load_checkpoint(str(root / 'p2')), DEVICE)
    assert torch.equal(task_logits(model, fixed_inputs(), tasks=[1])[1], before[1])
    signature = json.loads((root / 'p2' / 'result.json').read_text())['signature']
    assert signature['sparsity_rule'] == 'original' and 'release_zeroing' not in signature


def test_default_signatures_hold_no_recipe_or_rule_settings(two_tasks):
    """Stages finished before these flags existed still replay: the defaults add nothing."""
    for folder in ('t1', 'p1', 't2'):
        signature = json.loads((two_tasks / folder / 'result.json').read_text())['signature']
        for name in ('train_bn', 'train_biases', 'nesterov', 'lr_classifier', 'retrain_baseline',
                     'release_zeroing', 'sparsity_rule', 'gate_stops_must_prune', 'must_prune'):
            assert name not in signature, (folder, name)

