"""A diverging task cannot harm earlier tasks, and its stage stops with one clear error.

NaN x 0 is NaN: a gradient gate that multiplies would let a diverging task's NaN gradient (and,
through SGD momentum, its NaN update) into earlier tasks' frozen weights. The layers select instead.
"""
import json
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F

from cpg_testlib import (REPO, begin_all, fixed_inputs, learn_task, snapshot, subprocess_env,
                         task_logits, tiny_model)
from utils.grower import assign_free_capacity
from utils.manager import build_weight_optimizer
from utils.picker import build_pick_optimizer


@pytest.mark.parametrize('poison', [float('nan'), float('inf')])
def test_a_non_finite_loss_leaves_earlier_tasks_bitwise_equal(poison):
    model = tiny_model()
    model.add_task('t1', 5)
    learn_task(model, 1, sparsity=0.5)          # frees half of task 1's weights for task 2
    model.add_task('t2', 5)
    learn_task(model, 2, sparsity=0.5)
    x = fixed_inputs()
    before_logits = task_logits(model, x, tasks=[1, 2])
    before = snapshot(model)

    model.add_task('t3', 5)                      # task 3 diverges: picks + its own weights
    assign_free_capacity(model, 3)
    begin_all(model, 3, learn_pick=True)
    sgd = build_weight_optimizer(model, 3, lr=0.1)
    adam = build_pick_optimizer(model, lr_mask=0.01)
    model.set_task(3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # several steps: momentum would carry a NaN on
        images = torch.randn(4, 3, 32, 32, generator=gen)
        loss = F.cross_entropy(model(images), torch.randint(0, 5, (4,), generator=gen)) * poison
        sgd.zero_grad(set_to_none=True)
        adam.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        adam.step()

    after_logits = task_logits(model, x, tasks=[1, 2])
    for task in (1, 2):
        assert torch.equal(after_logits[task], before_logits[task]), f'task {task} changed'
    for name, layer in model.masked_layers():  # one width throughout: the shapes did not change
        earlier = (layer.owner >= 1) & (layer.owner <= 2)
        assert torch.equal(layer.weight.detach()[earlier], before[f'{name}.weight'][earlier]), name
        assert not torch.isfinite(layer.weight[layer.owner == 3]).all(), 'the poison did not reach task 3'


def _run(script, env, timeout=300):
    return subprocess.run(['bash', os.path.join('experiment1', script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_script_stops_a_diverging_task_with_one_line_and_keeps_earlier_work(toy_data, tmp_path):
    """Task 1 learned normally; task 2 with LR 1e30 diverges: the script stops with the log path,
    the stage's one error line says what happened, and task 1's model is byte-for-byte unchanged."""
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'toy_task_1': '0.0000', 'toy_task_2': '0.0000'}))
    root = tmp_path / 'checkpoints'
    env = subprocess_env(DATA_ROOT=toy_data, TASKS='toy_task_1', BASE_WIDTH='0.0625',
                         FINETUNE_EPOCHS='1', PRUNE_EPOCHS='1', RETRAIN_EPOCHS='1', PRUNING_INTERVAL='1',
                         PRUNING_RATIOS='0.5', CHECKPOINT_ROOT=str(root), GOALS_FILE=str(goals),
                         TRAIN_ACC_GATE='0', WORKERS='0', NPROC='1')
    proc = _run('CPG_cifar100_scratch_mul_1.5.sh', env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    task_dir = root / 'CPG' / 'experiment1' / 'scratch_mul_1.5' / 'custom_vgg_cifar100'
    final1 = task_dir / 'toy_task_1' / 'gradual_prune' / 'checkpoint.pth.tar'
    before = final1.read_bytes()

    env.update(TASKS='toy_task_1 toy_task_2', LR='1e30')
    proc = _run('CPG_cifar100_scratch_mul_1.5.sh', env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = task_dir / 'toy_task_2' / 'train.log'
    assert f'stopping: task toy_task_2 exited with status 1 (see {log})' in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'task 2' in errors[0], errors
    assert 'non-finite' in errors[0] and 'nothing of this stage was saved' in errors[0], errors
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert final1.read_bytes() == before
    scratch2 = task_dir / 'toy_task_2' / 'scratch'
    assert not (scratch2 / 'checkpoint.pth.tar').exists()
    assert not (scratch2 / 'result.json').exists()  # nothing a rerun would replay
    assert (task_dir / 'toy_task_2' / 'exit_status').read_text().strip() == '1'   # the task's process
