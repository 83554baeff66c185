"""Experiment 3 through the real stages of CPG_face_main, in process on in-memory faces: exact
no-forgetting from verification through gender, expression and two age folds that branch from
the same expression model; AngleLoss's global step carried across stages (and the original's
restart); the class-weighted loss; the 'goal' selection of the pruning stages.

The provider mimics utils/face_dataset.FaceTasks: identities for the verification task's
training, an LFW-like loader of (image1, image2, same) pairs for its selection, classification
tensors for the other tasks (TensorTasks at 16x16).
"""
import copy
import json
import logging
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import CPG_face_main as cli
from cpg_testlib import DEVICE, TensorTasks, begin_all, tiny_model, to_device, tree_bytes
from utils import objectives
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.context import EXIT_OK, EXIT_STOP_PRUNING, PhaseContext
from utils.face_dataset import FaceTasks
from utils.grower import assign_free_capacity
from utils.manager import build_weight_optimizer
from utils.verification import verification_accuracy

SIZE = 16           # SphereNet20 at 16x16: the flat size is 512w
WIDTH = 0.0625      # channels 4..32
IDS, PER_ID = 8, 8  # verification: 8 training identities of 8 images


def _identity_images(identity, count, gen):
    """Images of one identity: its own fixed pattern plus noise (close within, far between)."""
    base = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(500 + identity))
    return base + 0.3 * torch.randn(count, 3, SIZE, SIZE, generator=gen)


class PairSet(Dataset):
    """40 LFW-like pairs over 10 unseen identities, same / different alternating."""

    def __init__(self):
        gen = torch.Generator().manual_seed(7)
        people = [_identity_images(100 + p, 4, gen) for p in range(10)]
        self.items = []
        for i in range(40):
            p = i % 10
            if i % 2 == 0:
                self.items.append((people[p][0], people[p][1 + i % 3], 1))
            else:
                self.items.append((people[p][0], people[(p + 1) % 10][2], 0))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class FaceTensors(TensorTasks):
    """In-memory experiment-3 tasks at SIZE x SIZE (FaceTasks' interface)."""

    TRAIN_SIZE, VAL_SIZE = 48, 24
    weighted = ('emotion',)

    @classmethod
    def tensors(cls, task, split):
        images, labels = super().tensors(task, split)
        return images[:, :, :SIZE, :SIZE].contiguous(), labels

    def loaders(self, task):
        if task != self.args.verification_task:
            return super().loaders(task)
        gen = torch.Generator().manual_seed(3)
        images = torch.cat([_identity_images(i, PER_ID, gen) for i in range(IDS)])
        labels = torch.arange(IDS).repeat_interleave(PER_ID)
        train = DataLoader(TensorDataset(images, labels), batch_size=self.args.batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(self.args.seed))
        return train, self.test_loader(task), IDS

    def test_loader(self, task):
        if task != self.args.verification_task:
            return super().test_loader(task)
        return DataLoader(PairSet(), batch_size=self.args.val_batch_size)

    def class_weights(self, task):
        if task not in self.args.weighted_loss_tasks:
            return None
        counts = torch.bincount(self.tensors(task, 'train')[1]).float()
        return ((counts.sum() - counts) / counts).to(self.device)


GOALS = {'face_verification': 0.0, 'gender': 0.0, 'emotion': 0.0, 'age0': 0.0, 'age1': 0.0}


def _args(root, mode, dataset, save, load=None, **flags):
    goals = root / 'goals.json'
    if not goals.exists():
        goals.write_text(json.dumps({k: str(v) for k, v in GOALS.items()}))
    argv = ['--mode', mode, '--dataset', dataset, '--save_folder', str(root / save),
            '--baseline_acc_file', str(goals), '--device', DEVICE, '--batch_size', '16',
            '--val_batch_size', '20', '--workers', '0', '--image_size', str(SIZE),
            '--base_width', str(WIDTH), '--epochs', '2', '--lr', '0.01', '--lr_mask', '0.01',
            '--patience', '1', '--pruning_interval', '1', '--pruning_frequency', '2',
            '--resume_every_minutes', '0', '--pruning_ratio_to_acc_record_file',
            str(root / dataset / 'record.txt'), '--log_path', str(root / dataset / 'train.log')]
    if load:
        argv += ['--load_folder', str(root / load)]
    for key, value in flags.items():
        argv += [f'--{key}'] + ([] if value is True else [str(value)])
    parser = cli.get_args_parser()
    args = parser.parse_args(argv)
    cli.check_args(parser, args)
    return args


def _stage(root, mode, dataset, save, load=None, **flags):
    return cli.main(_args(root, mode, dataset, save, load, **flags))


def _learn(root, dataset, load=None, ratio='0.5', **flags):
    """Phase A then one pruning stage 0 -> ratio; returns the stage folder (what the next loads)."""
    assert _stage(root, 'finetune', dataset, f'{dataset}/scratch', load, **flags) == EXIT_OK
    stage = f'{dataset}/gradual_prune/{ratio}'
    assert _stage(root, 'prune', dataset, stage, f'{dataset}/scratch', initial_sparsity=0.0,
                  target_sparsity=ratio, **flags) == EXIT_OK
    return stage


@torch.no_grad()
def _outputs(folder):
    """{task name: embedding (verification) or logits} of every task on fixed inputs."""
    model = model_from_checkpoint(load_checkpoint(folder), DEVICE).eval()
    images = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    out = {}
    for task, record in enumerate(model.tasks, start=1):
        model.set_task(task)
        out[record['name']] = (model.embed(images) if record['head'] == 'angle' else model(images)).cpu()
        assert torch.isfinite(out[record['name']]).all()
    return out


@pytest.fixture(scope='module')
def sequence(tmp_path_factory):
    """face_verification -> gender -> emotion -> {age0, age1}, each task pruned to 0.5."""
    root = tmp_path_factory.mktemp('face_seq')
    mp = pytest.MonkeyPatch()
    mp.setattr(cli, 'FaceTasks', FaceTensors)
    try:
        stages = {'face_verification': _learn(root, 'face_verification')}
        stages['gender'] = _learn(root, 'gender', stages['face_verification'])
        stages['emotion'] = _learn(root, 'emotion', stages['gender'])
        emotion_files = tree_bytes(str(root / stages['emotion']))
        for fold in ('age0', 'age1'):
            stages[fold] = _learn(root, fold, stages['emotion'])
    finally:
        mp.undo()
    return root, stages, emotion_files


def test_earlier_tasks_stay_bitwise_equal_through_every_task_and_both_age_folds(sequence):
    root, stages, emotion_files = sequence
    outputs = {name: _outputs(str(root / stage)) for name, stage in stages.items()}
    order = ['face_verification', 'gender', 'emotion']
    for i, later in enumerate(order[1:] + ['age0', 'age1'], start=1):
        for earlier in order[:min(i, 3)]:
            got, want = outputs[later][earlier], outputs[earlier][earlier]
            assert torch.equal(got, want), (earlier, later)
    # the two folds branch from the same expression model: its tasks are identical in both ...
    for task in order:
        assert torch.equal(outputs['age0'][task], outputs['age1'][task]), task
    # ... and that model's files were only read
    assert tree_bytes(str(root / stages['emotion'])) == emotion_files
    assert list(outputs['age0']) == order + ['age0'] and list(outputs['age1']) == order + ['age1']


def test_verification_task_has_the_angle_head_and_an_lfw_accuracy_with_std(sequence):
    root, stages, _ = sequence
    ckpt = load_checkpoint(str(root / stages['age1']))
    heads = [t['head'] for t in ckpt['tasks']]
    assert heads == ['angle', 'linear', 'linear', 'linear']
    assert ckpt['model_kwargs'] == {'image_size': SIZE}
    folder = root / 'face_verification' / 'scratch'
    result = json.loads((folder / 'result.json').read_text())
    lines = [json.loads(x) for x in (folder / 'log.jsonl').read_text().splitlines()]
    assert all('accuracy_std' in line['val'] and line['val']['pairs'] == 40 for line in lines)
    # the recorded accuracy is the 10-fold protocol over the saved model's embeddings of the 40
    # pairs: distances computed here (d = arccos(clip(cos, 0, 1)) * 4 / pi, eval mode)
    model = model_from_checkpoint(load_checkpoint(str(folder)), DEVICE).eval()
    model.set_task(1)
    pairs = PairSet()
    with torch.no_grad():
        first = model.embed(to_device(torch.stack([a for a, _, _ in pairs.items]))).cpu().double()
        second = model.embed(to_device(torch.stack([b for _, b, _ in pairs.items]))).cpu().double()
    cos = (first * second).sum(1) / (first.norm(dim=1) * second.norm(dim=1))
    distances = torch.arccos(cos.clamp(0.0, 1.0)) * 4 / math.pi
    expected = verification_accuracy(distances.numpy(), [same == 1 for _, _, same in pairs.items])
    assert result['accuracy'] == pytest.approx(expected['accuracy'])
    logged = lines[result['epoch']]['val']   # the selected epoch's validation
    assert logged['accuracy'] == pytest.approx(expected['accuracy'])
    assert logged['accuracy_std'] == pytest.approx(expected['accuracy_std'])
    log = (root / 'face_verification' / 'train.log').read_text()
    assert 'trained from scratch with AngleLoss: not the paper' in log


def test_angle_loss_step_carries_over_stages(sequence):
    """λ's step is the task's global step: the pruning stage continues where Phase A stopped
    (spec §12 item 34), recorded in the task table of each checkpoint."""
    root, stages, _ = sequence
    steps_per_epoch = IDS * PER_ID // 16
    after_a = load_checkpoint(str(root / 'face_verification' / 'scratch'))['tasks'][0]
    after_prune = load_checkpoint(str(root / stages['face_verification']))['tasks'][0]
    a_epoch = json.loads((root / 'face_verification' / 'scratch' / 'result.json').read_text())['epoch']
    assert after_a['objective_state'] == {'step': (a_epoch + 1) * steps_per_epoch}
    p_epoch = json.loads((root / stages['face_verification'] / 'result.json').read_text())['epoch']
    assert after_prune['objective_state'] == {'step': (a_epoch + 1 + p_epoch + 1) * steps_per_epoch}
    log = (root / 'face_verification' / 'train.log').read_text()
    assert f'AngleLoss continues at step {(a_epoch + 1) * steps_per_epoch}' in log


def test_angle_loss_lambda_anneals_stage_after_stage(tmp_path, monkeypatch):
    """The λ every training step's AngleLoss uses is max(5, 1500 / (1 + 0.1 t)) at the task's
    global step t: Phase A from t = 0, the pruning stage from the step its input checkpoint (the
    selected Phase-A epoch) stopped at, not from 0 (spec §5.4, §12 item 34)."""
    monkeypatch.setattr(cli, 'FaceTasks', FaceTensors)
    used = []
    angle_loss = objectives.angle_loss

    def recording_angle_loss(output, target, lam):
        used.append(lam)
        return angle_loss(output, target, lam)

    monkeypatch.setattr(objectives, 'angle_loss', recording_angle_loss)
    steps_per_epoch = IDS * PER_ID // 16

    def lam(t):
        return max(5.0, 1500.0 / (1 + 0.1 * t))

    def epochs_run(folder):
        return len((tmp_path / folder / 'log.jsonl').read_text().splitlines())

    assert _stage(tmp_path, 'finetune', 'face_verification', 'fv/scratch') == EXIT_OK
    phase_a, used[:] = list(used), []
    assert phase_a == pytest.approx([lam(t) for t in range(epochs_run('fv/scratch') * steps_per_epoch)])
    selected = json.loads((tmp_path / 'fv' / 'scratch' / 'result.json').read_text())['epoch']
    assert _stage(tmp_path, 'prune', 'face_verification', 'fv/prune', 'fv/scratch',
                  initial_sparsity=0.0, target_sparsity=0.5) == EXIT_OK
    start = (selected + 1) * steps_per_epoch
    expected = [lam(t) for t in range(start, start + epochs_run('fv/prune') * steps_per_epoch)]
    assert used == pytest.approx(expected)
    assert len(phase_a) >= steps_per_epoch and len(used) >= steps_per_epoch
    assert used[0] < phase_a[0] == 1500.0


def test_angle_lambda_restart_reproduces_the_original(sequence, tmp_path, monkeypatch):
    root, _, _ = sequence
    monkeypatch.setattr(cli, 'FaceTasks', FaceTensors)
    stage = 'face_verification/restart'
    assert _stage(root, 'prune', 'face_verification', stage, 'face_verification/scratch',
                  initial_sparsity=0.0, target_sparsity=0.3, angle_lambda_restart=True) == EXIT_OK
    p_epoch = json.loads((root / stage / 'result.json').read_text())['epoch']
    state = load_checkpoint(str(root / stage))['tasks'][0]['objective_state']
    assert state == {'step': (p_epoch + 1) * (IDS * PER_ID // 16)}


def test_expression_uses_the_class_weighted_loss(tmp_path):
    """The expression task's loss (spec §6.3) as the stages get it (FaceTasks.class_weights ->
    PhaseContext.manager): weights (total - n_c) / n_c from imbalanced class folders change the
    loss and its gradient against plain cross-entropy, in evaluation and in training; a task
    outside weighted_loss_tasks gets the plain loss. Expected values written out here."""
    counts = {'angry': 2, 'happy': 6, 'sad': 4}
    for task in ('emotion', 'gender'):
        for name, n in counts.items():
            folder = tmp_path / task / 'train' / name
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f'{i}.jpg').write_bytes(b'')   # counted, never decoded
    args = SimpleNamespace(data_root=str(tmp_path), batch_size=12, val_batch_size=12, workers=0, seed=1,
                           val_fraction=0.0, image_size=SIZE, pairs_file=None, verification_task=None,
                           weighted_loss_tasks=None)   # the default: ['emotion']
    ctx = PhaseContext(args, FaceTasks(args, DEVICE), logging.getLogger('test_face_engine'), DEVICE)
    total = sum(counts.values())
    weight = torch.tensor([(total - n) / n for n in counts.values()])   # [5, 1, 2]

    gen = torch.Generator().manual_seed(4)
    images = torch.randn(12, 3, 32, 32, generator=gen)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    loader = DataLoader(TensorDataset(images, labels), batch_size=12)

    def weighted_ce(logits):
        nll = -logits.log_softmax(1)[torch.arange(len(labels)), labels]
        return (weight[labels] * nll).sum() / weight[labels].sum()

    managers = {}
    for task in ('emotion', 'gender'):
        torch.manual_seed(0)
        model = tiny_model()
        model.add_task(task, 3)
        managers[task] = ctx.manager(model, 1, loader, loader)

    # the objective itself: loss and gradient w.r.t. the logits
    logits = torch.randn(12, 3, generator=gen) * 2
    got = {}
    for task, manager in managers.items():
        x = to_device(logits).clone().requires_grad_()   # a leaf of its own (to_device is a no-op on cpu)
        loss = manager.objective.loss(x, to_device(labels))
        got[task] = (loss.detach().cpu(), torch.autograd.grad(loss, x)[0].cpu())
    x = logits.clone().requires_grad_()
    want_loss = weighted_ce(x)
    want_grad = torch.autograd.grad(want_loss, x)[0]
    want_loss = want_loss.detach()
    plain_loss = F.cross_entropy(logits, labels)
    assert torch.allclose(got['emotion'][0], want_loss, atol=1e-6)
    assert torch.allclose(got['emotion'][1], want_grad, atol=1e-6)
    assert torch.allclose(got['gender'][0], plain_loss, atol=1e-6)
    assert abs(float(want_loss) - float(plain_loss)) > 0.05
    assert float((got['emotion'][1] - got['gender'][1]).abs().max()) > 1e-2

    # evaluation (eval-mode logits) and a training step (train-mode logits) report the weighted loss
    manager = managers['emotion']
    model = manager.model
    model.set_task(1)
    model.eval()
    with torch.no_grad():
        eval_logits = model(to_device(images)).cpu()
    assert manager.validate()['loss'] == pytest.approx(float(weighted_ce(eval_logits)), rel=1e-5)
    assign_free_capacity(model, 1)
    begin_all(model, 1)
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        train_logits = reference(to_device(images)).cpu()
    sgd = build_weight_optimizer(model, 1, lr=0.0)
    train, _ = manager.train_epoch(0, [sgd])
    assert train['loss'] == pytest.approx(float(weighted_ce(train_logits)), rel=1e-5)
    assert abs(train['loss'] - float(F.cross_entropy(train_logits, labels))) > 1e-3


def test_pruning_stage_without_an_epoch_above_goal_minus_margin_saves_nothing(sequence, monkeypatch):
    """Selection 'goal' (spec §9.1): an unreachable goal ends the task's pruning (exit 6), no
    checkpoint and no record entry are written, and the reason says what was missed."""
    root, _, _ = sequence
    monkeypatch.setattr(cli, 'FaceTasks', FaceTensors)
    goals = root / 'goals_high.json'
    goals.write_text(json.dumps({'gender': '1.0'}))   # with margin 0: an epoch must beat 1.0
    record = root / 'gender' / 'record.txt'
    before = record.read_text()
    stage = 'gender/gradual_prune/0.7'
    status = _stage(root, 'prune', 'gender', stage, 'gender/gradual_prune/0.5', initial_sparsity=0.5,
                    target_sparsity=0.7, baseline_acc_file=goals, goal_margin=0)
    assert status == EXIT_STOP_PRUNING
    assert not os.path.exists(root / stage / 'checkpoint.pth.tar')
    result = json.loads((root / stage / 'result.json').read_text())
    assert result['reason'].startswith('no epoch after the pruning interval beat goal - margin = 1.0000')
    assert record.read_text() == before
