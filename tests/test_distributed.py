"""Distributed training (utils/distributed.py, models/dist_norm.py) on CPU with the gloo backend.

Two ranks (subprocesses with torchrun's environment, loopback only) run the real entry point,
CPG_cifar100_main.main, stage after stage: Phase A of task 1, a pruning stage 0 -> 0.5 (owner
masks broadcast from rank 0), Phase A of task 2 (pick mask over task 1's weights), a pruning stage
of task 2. Then one plain process runs each stage again with the same global batch of 16 (the
ranks: 8 each), starting from the same input checkpoint as the ranks did, so that a difference in
one stage does not compound into the next. Both use cpg_testlib.TensorTasks as data provider
(fixed tensors, the production RankSeededSampler): the ranks' k-th batches together are exactly
the single process's k-th batch. Everything else (per-epoch seeding, DDP wrap, cross-rank
BatchNorm, pruner hook, saving) is the production path.

The ranks must agree exactly. Against one process, masks and weights agree up to what float
rounding can flip; the tolerances and their measured figures are in the tests.

Inherently CPU-only, whatever CPG_TEST_DEVICE says: gloo on loopback (two nccl ranks would need two
GPUs), and the exact comparisons rely on CPU determinism.

This file is also the worker script: `python tests/test_distributed.py OUT_DIR PORTS` (env: RANK...).
"""

import copy
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
# The tests import `models` / `utils` whatever directory pytest was started from.
for _path in (REPO, TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from cpg_testlib import TensorTasks, make_toy_data  # noqa: E402
from models.dist_norm import BatchNorm2d  # noqa: E402
from utils.distributed import Distributed, RankSeededSampler  # noqa: E402

GLOBAL_BATCH = 16        # TensorTasks: 64 train samples, so 4 steps an epoch
BN_ROWS = 12             # rows of the BatchNorm check, split unevenly over 2 ranks (5 + 7)
TIMEOUT = 240
STAGES = ('t1_scratch', 't1_prune', 't2_scratch', 't2_prune')


# ---------------------------------------------------------------------------------------------------
# worker (runs in a subprocess: one per rank, or one single process with WORLD_SIZE=1)
# ---------------------------------------------------------------------------------------------------
def _bn_inputs():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(BN_ROWS, 4, 3, 3, generator=g) * 3.0 + 2.0   # non-zero mean and scale
    coef = torch.randn(BN_ROWS, 4, 3, 3, generator=g)             # loss = sum(y * coef)
    return x, coef


def _bn_rows(rank, world):
    if world == 1:
        return slice(0, BN_ROWS)
    return slice(0, 5) if rank == 0 else slice(5, BN_ROWS)


def _bn_check(dist, rank, world):
    """Two training forwards/backwards of the cross-rank BatchNorm on this rank's rows."""
    x_all, coef_all = _bn_inputs()
    rows = _bn_rows(rank, world)
    bn = BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 4))
        bn.bias.copy_(torch.linspace(-0.2, 0.2, 4))
    out = {}
    for it in range(2):
        x = x_all[rows].clone().requires_grad_(True)
        y = bn(x)
        (y * coef_all[rows]).sum().backward()
        out[f'y{it}'], out[f'xgrad{it}'] = y.detach(), x.grad
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    if dist is not None:
        dist.all_reduce_sum(grads)  # the parameter gradient of the summed loss
    out['param_grad'] = grads
    out['state'] = {k: v.clone() for k, v in bn.state_dict().items()}
    return out


def _diverged_pruning(dist, rank):
    """broadcast_owners when a rank pruned differently: everything becomes rank 0's."""
    from types import SimpleNamespace

    from models.layers import MaskedLinear
    torch.manual_seed(11)
    layer = MaskedLinear(6, 4)
    layer.add_task(1, 4, 6)
    layer.owner.fill_(1)
    layer.begin_phase(1, learn_pick=False, fixed_pick=False, weight_decay=0.0)
    sgd = torch.optim.SGD([layer.weight], lr=0.1, momentum=0.9)
    layer.weight.grad = torch.ones_like(layer.weight)
    sgd.step()  # creates the momentum buffer
    released = [(0, 0), (1, 2)] if rank == 0 else [(0, 0), (3, 5)]
    with torch.no_grad():
        for i, j in released:
            layer.owner[i, j] = 0
            layer.weight[i, j] = 0.0
            sgd.state[layer.weight]['momentum_buffer'][i, j] = 0.0
        if rank == 1:
            layer.weight[2, 2] += 1.0
    before = dist.owner_mismatches
    dist.broadcast_owners(SimpleNamespace(layers=[layer], task=1, optimizer=sgd))
    # the gradient gate follows the new owners: one training step's weight gradient
    layer.active_task = 1
    layer.train()
    layer.weight.grad = None
    layer(torch.linspace(-1.0, 1.0, 12).view(2, 6)).square().sum().backward()
    return {'owner': layer.owner.clone(), 'weight': layer.weight.detach().clone(),
            'momentum': sgd.state[layer.weight]['momentum_buffer'].clone(),
            'grad': layer.weight.grad.clone(), 'mismatches': dist.owner_mismatches - before}


def _stage_argv(root, input_root, goals, stage):
    """argv of CPG_cifar100_main.py for one of STAGES: writes under `root`, loads the previous
    stage's checkpoint from under `input_root`.

    One epoch (4 steps) per stage; a pruning stage updates the masks at step 2 and at its end.
    lr_mask 1.5e-3: a pick score (0.01) needs about 4 steps the same way to cross the 5e-3
    threshold, so picks drop mostly at the last step, not in the middle of the forward passes.
    """
    task = stage[:2]
    common = ['--dataset', task, '--data_root', 'unused (TensorTasks)', '--base_width', '0.0625',
              '--batch_size', str(GLOBAL_BATCH), '--val_batch_size', '40', '--workers', '0',
              '--device', 'cpu', '--baseline_acc_file', goals, '--train_acc_gate', '-1',
              '--epochs', '1', '--seed', '1', '--save_folder', os.path.join(root, stage)]
    previous = {'t1_prune': 't1_scratch', 't2_scratch': 't1_prune', 't2_prune': 't2_scratch'}
    if stage in previous:
        common += ['--load_folder', os.path.join(input_root, previous[stage])]
    if stage.endswith('scratch'):
        return ['--mode', 'finetune', '--lr', '0.02', '--lr_mask', '1.5e-3', *common]
    return ['--mode', 'prune', '--lr', '0.002', '--initial_sparsity', '0', '--target_sparsity', '0.5',
            '--pruning_interval', '1', '--pruning_frequency', '2', *common]


def _run_stages(out_dir, world, ports):
    """The four stages through CPG_cifar100_main.main; what each rank held at the end of each."""
    import CPG_cifar100_main as cli
    from utils.checkpoint import CHECKPOINT_NAME, frozen_state_dict
    from utils.context import PhaseContext

    cli.CifarTasks = TensorTasks  # in-memory data; the phases and the sampler are production code
    final, logged, mismatches = {}, [], []
    save, log_epoch, broadcast = PhaseContext.save, PhaseContext.log_epoch, Distributed.broadcast_owners

    def recording_save(self, model, *args, **kwargs):
        """Observe the model every rank holds when rank 0 writes the stage's checkpoint."""
        name = args[0] if args else kwargs.get('name', CHECKPOINT_NAME)
        if name == CHECKPOINT_NAME:
            final[self.args.save_folder] = {
                'state': {k: v.detach().clone() for k, v in frozen_state_dict(model).items()},
                'tasks': copy.deepcopy(model.tasks)}
        return save(self, model, *args, **kwargs)

    def recording_log_epoch(self, model, task, phase, epoch, train, val, lrs):
        logged.append({'phase': phase, 'task': task, 'epoch': epoch, 'train': train, 'val': val})
        return log_epoch(self, model, task, phase, epoch, train, val, lrs)

    def counting_broadcast(self, pruner):
        before = self.owner_mismatches
        broadcast(self, pruner)
        mismatches.append(self.owner_mismatches - before)

    PhaseContext.save, PhaseContext.log_epoch = recording_save, recording_log_epoch
    Distributed.broadcast_owners = counting_broadcast
    root = os.path.join(out_dir, f'world{world}')
    input_root = os.path.join(out_dir, 'world2')  # the single process starts where the ranks did
    stages = {}
    for stage, port in zip(STAGES, ports):
        os.environ['MASTER_PORT'] = port  # each main() joins (and leaves) its own process group
        parser = cli.get_args_parser()
        args = parser.parse_args(_stage_argv(root, input_root, os.path.join(out_dir, 'goals.json'), stage))
        cli.check_args(parser, args)
        logged.clear()
        status = cli.main(args)
        stages[stage] = dict(final[args.save_folder], status=status, logged=list(logged))
    return stages, mismatches


def run_worker(out_dir, ports):
    torch.set_num_threads(1)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    result = {'rank': rank, 'world': world}
    if world > 1:
        os.environ['MASTER_PORT'] = ports[0]
        dist = Distributed.from_env('cpu')
        result['bn'] = _bn_check(dist, rank, world)
        result['diverged'] = _diverged_pruning(dist, rank)
        dist.close()
    else:
        result['bn'] = _bn_check(None, 0, 1)
    result['stages'], result['mismatches'] = _run_stages(out_dir, world, ports[1:])
    torch.save(result, os.path.join(out_dir, f'world{world}_rank{rank}.pt'))


# ---------------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------------
def _free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('127.0.0.1', 0))
            sockets.append(s)
        return [str(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR',
                        'MASTER_PORT', 'TORCHELASTIC_RUN_ID')}
    env.update({k: str(v) for k, v in extra.items()})
    env['CUDA_VISIBLE_DEVICES'] = ''   # CPU / gloo even on a machine with GPUs
    env['OMP_NUM_THREADS'] = '1'
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    return env


def _launch(out_dir, world):
    """Start `world` ranks (or one plain process when world == 1); returns [(Popen, out file)]."""
    ports = _free_ports(1 + len(STAGES))
    procs = []
    for rank in range(world):
        out = os.path.join(out_dir, f'world{world}_rank{rank}.pt')
        env = (_env(WORLD_SIZE=1) if world == 1 else
               _env(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world, LOCAL_WORLD_SIZE=world,
                    MASTER_ADDR='127.0.0.1'))
        procs.append((subprocess.Popen([sys.executable, os.path.abspath(__file__), out_dir, ','.join(ports)],
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                      out))
    return procs


def _wait(procs):
    deadline = time.monotonic() + TIMEOUT
    logs = []
    for proc, _ in procs:
        try:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p, _ in procs:  # kill only the processes this test started
                p.kill()
            pytest.fail('distributed worker timed out (a rank hung in a collective?)')
        logs.append(output)
    for (proc, _), log in zip(procs, logs):
        assert proc.returncode == 0, f'worker failed (exit {proc.returncode}):\n{log[-4000:]}'
    return [torch.load(out, weights_only=False) for _, out in procs]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp('dist'))
    with open(os.path.join(out_dir, 'goals.json'), 'w') as f:
        json.dump({'t1': '0.0', 't2': '0.0'}, f)
    ranks = _wait(_launch(out_dir, 2))
    single = _wait(_launch(out_dir, 1))[0]  # loads the ranks' checkpoints: after them
    return out_dir, ranks, single


def _owners(state):
    return {k: v for k, v in state.items() if k.endswith('.owner')}


def _picks(state):
    return {k: v for k, v in state.items() if '.pick_bits_' in k}


# ---------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ranks_agree_exactly(runs):
    out_dir, (r0, r1), _ = runs
    assert (r0['rank'], r1['rank'], r0['world']) == (0, 1, 2)
    # both pruning stages asked the hook to broadcast (>= 2 mask updates each), and no rank ever
    # decided differently from rank 0
    assert len(r0['mismatches']) == len(r1['mismatches']) >= 4
    assert not any(r0['mismatches']) and not any(r1['mismatches'])
    for stage in STAGES:
        s0, s1 = r0['stages'][stage], r1['stages'][stage]
        assert s0['status'] == s1['status'] == 0, stage
        assert s0['tasks'] == s1['tasks'], stage  # accuracies recorded in the checkpoint included
        assert s0['state'].keys() == s1['state'].keys(), stage
        for name in s0['state']:  # weights, owners, packed picks, BN statistics, biases, heads
            assert torch.equal(s0['state'][name], s1['state'][name]), f'{stage}: {name} differs between ranks'
        assert s0['logged'] == s1['logged'] and len(s0['logged']) == 1, stage  # train metrics reduced
    # rank 0 wrote exactly what both ranks held
    saved = torch.load(os.path.join(out_dir, 'world2', 't2_prune', 'checkpoint.pth.tar'),
                       map_location='cpu', weights_only=True)
    for name, value in r0['stages']['t2_prune']['state'].items():
        assert torch.equal(saved['model'][name], value), name


@pytest.mark.slow
def test_broadcast_owners_repairs_a_diverged_rank(runs):
    _, (r0, r1), _ = runs
    d0, d1 = r0['diverged'], r1['diverged']
    assert d0['mismatches'] == d1['mismatches'] == 2   # (1, 2) and (3, 5) were decided differently
    for key in ('owner', 'weight', 'momentum', 'grad'):
        assert torch.equal(d0[key], d1[key]), key
    free = d0['owner'] == 0
    assert free.sum() == 2 and bool(free[0, 0]) and bool(free[1, 2])
    assert not d0['weight'][free].any() and not d0['momentum'][free].any()
    assert not d0['grad'][free].any() and d0['grad'][~free].all()  # the gradient gate was refreshed


# Against one process, from the same input checkpoint. DDP averages two half-batch gradients where
# one process sums the full batch, so the floats differ by rounding (at most 3.6e-7 in any tensor
# after a stage, measured). A discrete decision whose inputs are that close can go either way: two
# magnitudes at a pruning cutoff trade places, or a pick score ends at the 5e-3 threshold; the
# flipped entry then changes the rest of that stage. Measured with these settings for seeds 1-8
# (32 stage runs): nothing differs for seeds 1 (the one used here), 2, 5 and 8; one swapped owner
# pair in 1 of 16 pruning stages; 1, 16, 62 and 170 differing picks (at most 0.26% of task 1's
# 65646 entries) in 4 of 8 Phase A runs of task 2. After such a flip, the stage's weights
# differed from one process's by up to 5.6e-2.
OWNER_ENTRIES_ALLOWED = 2   # one released/kept pair per stage
PICK_SHARE_ALLOWED = 0.005  # of task 1's entries: twice the worst measured share


def _mask_differences(ours, ref):
    """(owner entries, pick entries, task 1's entries) that differ between two frozen states."""
    from models.layers import unpack_bits
    owners = picks = old = 0
    for name, owner in _owners(ours).items():
        owners += int((owner != ref[name]).sum())
        layer = name[:-len('.owner')]
        if f'{layer}.pick_bits_2' in ours:
            n_old = int((owner == 1).sum())  # layers never grew: task 2 picks over all of task 1
            assert n_old == int((ref[name] == 1).sum()), f'{name}: same input, same task 1 entries'
            picks += int((unpack_bits(ours[f'{layer}.pick_bits_2'], n_old)
                          != unpack_bits(ref[f'{layer}.pick_bits_2'], n_old)).sum())
            old += n_old
    return owners, picks, old


@pytest.mark.slow
def test_masks_match_single_process(runs):
    _, (r0, _), single = runs
    for stage in STAGES:
        ours, ref = r0['stages'][stage]['state'], single['stages'][stage]['state']
        assert single['stages'][stage]['status'] == 0, stage
        assert _owners(ours).keys() == _owners(ref).keys() and _picks(ours).keys() == _picks(ref).keys()
        for name in _owners(ours):  # both prune exactly round(s * pool) entries per layer
            assert int((ours[name] == 0).sum()) == int((ref[name] == 0).sum()), f'{stage} {name}'
        owners, picks, old = _mask_differences(ours, ref)
        assert owners <= OWNER_ENTRIES_ALLOWED, f'{stage}: {owners} owner entries differ from one process'
        assert picks <= PICK_SHARE_ALLOWED * old, f'{stage}: {picks} of {old} picks differ from one process'

    # the scenario exercises what it claims
    for name, owner in _owners(r0['stages']['t1_prune']['state']).items():
        assert int((owner == 0).sum()) == round(0.5 * owner.numel()), name  # task 1: half of each layer
    from models.layers import unpack_bits
    final = r0['stages']['t2_prune']['state']
    assert sum(int((o == 2).sum()) for o in _owners(final).values()) > 0
    picked = old = 0
    for name, owner in _owners(final).items():
        n_old = int((owner == 1).sum())
        picked += int(unpack_bits(final[name.replace('.owner', '.pick_bits_2')], n_old).sum())
        old += n_old
    assert 0 < picked < old  # task 2's pick dropped some of task 1's weights and kept others


# After a flipped mask entry (see above) the rest of the stage legitimately moves: the stage's
# float state then agrees with one process's within FLIPPED_ATOL (twice the measured 5.6e-2), and
# its accuracy within FLIPPED_ACCURACY (2 of the 40 validation images).
FLIPPED_ATOL = 0.1
FLIPPED_ACCURACY = 2 / 40


@pytest.mark.slow
def test_weights_and_accuracy_match_single_process(runs):
    """Every stage is compared with one process. Where no mask entry flipped, the float state
    agrees within rounding (measured at most 3.6e-7; the bound below leaves room for other CPUs'
    kernels), and so do the accuracies and the reduced train metrics. Where one flipped (none
    does at seed 1 on the machines measured), within the post-flip bounds above, and in one
    stage at most: a stage is never skipped, and a divergence that flips masks stage after stage
    fails even when each stage's flips stay within the mask allowances."""
    _, (r0, _), single = runs
    tight = []
    for stage in STAGES:
        ours, ref = r0['stages'][stage], single['stages'][stage]
        flipped = _mask_differences(ours['state'], ref['state'])[:2] != (0, 0)
        tight += [] if flipped else [stage]
        assert ours['state'].keys() == ref['state'].keys(), stage
        for name, value in ours['state'].items():
            other = ref['state'][name]
            if not value.is_floating_point():
                if not flipped or not (name.endswith('.owner') or '.pick_bits_' in name):
                    assert torch.equal(value, other), f'{stage} {name}'
            elif flipped:
                assert torch.allclose(value, other, rtol=0, atol=FLIPPED_ATOL), \
                    f'{stage} {name} (a mask entry flipped): max diff {float((value - other).abs().max()):.3g}'
            else:
                assert torch.allclose(value, other, rtol=1e-4, atol=1e-5), \
                    f'{stage} {name}: max diff {float((value - other).abs().max()):.3g}'
        assert len(ours['logged']) == len(ref['logged']) == 1, stage
        accuracies = [(t['accuracy'], u['accuracy']) for t, u in zip(ours['tasks'], ref['tasks'])]
        logged = list(zip(ours['logged'], ref['logged']))
        if flipped:
            assert all(abs(a - b) <= FLIPPED_ACCURACY for a, b in accuracies), (stage, accuracies)
            for dist_epoch, one_epoch in logged:
                for split in ('train', 'val'):
                    assert abs(dist_epoch[split]['accuracy'] - one_epoch[split]['accuracy']) <= FLIPPED_ACCURACY, stage
            continue
        assert all(a == b for a, b in accuracies), (stage, accuracies)
        for dist_epoch, one_epoch in logged:
            assert dist_epoch['train']['accuracy'] == one_epoch['train']['accuracy'], stage
            assert dist_epoch['train']['loss'] == pytest.approx(one_epoch['train']['loss'], rel=1e-4)
            assert dist_epoch['val']['accuracy'] == one_epoch['val']['accuracy'], stage
    assert tight[:1] == ['t1_scratch'], tight   # no mask decision in task 1's Phase A: always exact
    # A flip is rare (measured above: 1 of 16 pruning stages, and only at some seeds in task 2's
    # Phase A; none at seed 1): at most one stage may fall back to the post-flip bounds, so the
    # rounding-level comparison covers at least three of the four stages.
    assert len(tight) >= len(STAGES) - 1, f'mask entries flipped in {sorted(set(STAGES) - set(tight))}'


@pytest.mark.slow
def test_batchnorm_uses_global_batch_statistics(runs):
    """Cross-rank BatchNorm == nn.BatchNorm2d on the whole batch: output, gradients, running stats."""
    _, (r0, r1), single = runs
    x_all, coef_all = _bn_inputs()
    ref = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 1.5, 4))
        ref.bias.copy_(torch.linspace(-0.2, 0.2, 4))
    for it in range(2):
        x = x_all.clone().requires_grad_(True)
        y = ref(x)
        (y * coef_all).sum().backward()
        for run in (r0, r1, single):
            rows = _bn_rows(run['rank'], run['world'])
            assert torch.allclose(run['bn'][f'y{it}'], y[rows].detach(), atol=1e-5), it
            assert torch.allclose(run['bn'][f'xgrad{it}'], x.grad[rows], atol=1e-5), it
    param_grad = torch.cat([ref.weight.grad, ref.bias.grad])
    for run in (r0, r1, single):
        assert torch.allclose(run['bn']['param_grad'], param_grad, rtol=1e-5, atol=1e-5)
        for name, value in ref.state_dict().items():
            assert torch.allclose(run['bn']['state'][name].to(value.dtype), value,
                                  rtol=1e-5, atol=1e-6), name
    assert torch.equal(r0['bn']['state']['running_var'], r1['bn']['state']['running_var'])


def test_single_process_batchnorm_is_plain_batchnorm():
    """Without a process group the class is nn.BatchNorm2d: same state-dict keys, same outputs."""
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 6, 5, 5) * 2 + 1
    assert torch.equal(ours(x), ref(x))
    ours.eval(), ref.eval()
    assert torch.equal(ours(x), ref(x))


def test_ranks_draw_different_augmentation():
    """The phases seed the global RNG identically on every rank each epoch; the train sampler
    moves rank r > 0 onto its own (deterministic) augmentation stream."""
    def first_draws(rank):
        sampler = RankSeededSampler(list(range(8)), num_replicas=2, rank=rank, shuffle=True, seed=1)
        torch.manual_seed(5)  # what the per-epoch seeding does on every rank
        indices = list(iter(sampler))
        return indices, torch.rand(4)
    (idx0, draw0), (idx1, draw1) = first_draws(0), first_draws(1)
    assert sorted(idx0 + idx1) == list(range(8))
    assert torch.equal(draw1, first_draws(1)[1])    # reproducible
    assert not torch.equal(draw0, draw1)            # but not the other rank's crops


def test_image_loaders_give_one_process_the_ranks_global_batches(tmp_path):
    """docs/speed.md: under DDP "the result matches one process". That needs the real loaders to feed one
    process (batch 16) exactly the union of the 2 ranks' batches (8 each), augmentation included.
    No process group needed: Distributed's loaders only shard."""
    import CPG_cifar100_main as cli
    from utils.context import PhaseContext
    root = make_toy_data(tmp_path / 'data', tasks=1, train=8, test=2)  # 40 images: 2.5 global batches
    args = cli.get_args_parser().parse_args(['--mode', 'finetune', '--dataset', 'toy_task_1',
                                             '--data_root', root, '--save_folder', str(tmp_path),
                                             '--batch_size', str(GLOBAL_BATCH), '--workers', '0',
                                             '--device', 'cpu'])
    ctx = PhaseContext(args, None, None, 'cpu')

    def epoch_batches(dist):
        train = cli.CifarTasks(args, 'cpu', dist).loaders('toy_task_1')[0]
        ctx.seed_epoch(train, 1)
        return list(train)

    single = epoch_batches(None)
    ranks = [epoch_batches(Distributed(rank, rank, 2, 'cpu', 'gloo')) for rank in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1])
    for k, (images, labels) in enumerate(single):
        # DistributedSampler: rank r's i-th sample is global position 2 i + r
        (x0, y0), (x1, y1) = ranks[0][k], ranks[1][k]
        union_images = torch.stack([x0, x1], dim=1).flatten(0, 1)
        union_labels = torch.stack([y0, y1], dim=1).flatten()
        assert torch.equal(labels, union_labels), f'batch {k}: other samples'
        assert torch.equal(images, union_images), f'batch {k}: other augmentation'


@pytest.mark.slow
def test_cli_under_torchrun(tmp_path):
    """The real entry script, 2 ranks: one checkpoint, one goal entry, one log line per epoch."""
    data = make_toy_data(tmp_path / 'data', tasks=1, train=50, test=10)
    save = tmp_path / 'ckpt' / 'toy_task_1' / 'scratch'
    goal = tmp_path / 'goal.txt'
    log = tmp_path / 'train.log'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(REPO, 'CPG_cifar100_main.py'), '--mode', 'finetune',
           '--dataset', 'toy_task_1', '--data_root', data, '--save_folder', str(save),
           '--save_goal_file', str(goal), '--log_path', str(log), '--base_width', '0.0625',
           '--epochs', '1', '--batch_size', '16', '--val_batch_size', '25', '--workers', '0',
           '--device', 'cpu']
    env = _env()
    env.pop('PYTHONPATH')
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in save.iterdir())
    assert files.count('checkpoint.pth.tar') == 1 and 'resume.pth.tar' not in files, files
    with open(goal) as f:
        assert list(json.load(f)) == ['toy_task_1']
    with open(save / 'log.jsonl') as f:
        assert len(f.read().splitlines()) == 1  # one epoch, written by rank 0 only
    with open(save / 'result.json') as f:
        assert json.load(f)['status'] == 0
    with open(log) as f:
        assert sum('baseline accuracy' in line for line in f) == 1


if __name__ == '__main__':
    run_worker(sys.argv[1], sys.argv[2].split(','))
