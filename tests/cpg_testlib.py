"""Shared helpers of the CPG core tests: the test device, tiny models, data-free task learning.

The tiny VGG (base_width 0.0625: channels 4..32, FC 256) and random inputs make a whole task
(finetune + prune + retrain) take well under a second on a CPU.

Device: CPG_TEST_DEVICE (default `cpu`; `cuda`, `cuda:N` on a GPU machine). Models and inputs go
there; random numbers are always drawn on the CPU with explicit generators and then moved, so a
test sees the same values on every device.
"""
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from models import build_model  # noqa: E402
from utils.grower import assign_free_capacity  # noqa: E402
from utils.manager import build_weight_optimizer  # noqa: E402
from utils.picker import build_pick_optimizer, reset_picks  # noqa: E402
from utils.pruner import release_smallest  # noqa: E402

ARCH = 'custom_vgg_cifar100'
TINY = 0.0625
WD = 4e-5


def device_error(name):
    """Why `name` cannot be the test device here (one line), or None if it can."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f'CPG_TEST_DEVICE={name!r} is not a device; use cpu, cuda or cuda:N'
    if device.type == 'cpu':
        return None
    if device.type != 'cuda':
        return f'CPG_TEST_DEVICE={name!r}: the suite runs on cpu or cuda only'
    if not torch.cuda.is_available():
        return f'CPG_TEST_DEVICE={name!r} but CUDA is not available here; unset it or use cpu'
    if device.index is not None and device.index >= torch.cuda.device_count():
        return (f'CPG_TEST_DEVICE={name!r} but only {torch.cuda.device_count()} CUDA device(s) '
                f'are visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}')
    return None


# conftest.py stops the session with device_error(DEVICE) before any test runs if it is unusable.
DEVICE = os.environ.get('CPG_TEST_DEVICE', 'cpu')
ON_CUDA = DEVICE.startswith('cuda')


def to_device(*tensors):
    """The tensors on the test device (one tensor -> one tensor)."""
    moved = tuple(t.to(DEVICE) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


def tiny_model(seed=0):
    """The tiny VGG on the test device, built before any task exists (as Phase A of task 1 does)."""
    torch.manual_seed(seed)
    return build_model(ARCH, base_width=TINY).to(DEVICE)


def fixed_inputs(n=4, seed=123):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen).to(DEVICE)


def begin_all(model, task, learn_pick=False, fixed_pick=False, weight_decay=WD):
    for _, layer in model.masked_layers():
        layer.begin_phase(task, learn_pick=learn_pick, fixed_pick=fixed_pick, weight_decay=weight_decay)


def end_all(model):
    for _, layer in model.masked_layers():
        layer.end_phase()


def train_steps(model, task, optimizers, steps, gen, classes=5, batch=4):
    """`steps` optimizer steps of task `task` on random images/labels (train mode); `gen` is a
    CPU generator, the batches are moved to the test device."""
    model.set_task(task)
    model.train()
    optimizers = [opt for opt in optimizers if opt is not None]
    for _ in range(steps):
        x = torch.randn(batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        x, y = to_device(x, y)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for opt in optimizers:
            opt.step()


def momentum_of(optimizer, param):
    return optimizer.state.get(param, {}).get('momentum_buffer')


def prune_all(model, task, sparsity, optimizer=None):
    """One-shot release to `sparsity` of the pool (task's entries + free) in every layer."""
    for _, layer in model.masked_layers():
        pool = int(((layer.owner == task) | (layer.owner == 0)).sum())
        release_smallest(layer, task, sparsity, pool,
                         momentum_of(optimizer, layer.weight) if optimizer is not None else None)


def learn_task(model, task, steps=3, sparsity=None, retrain=False, seed=0, lr=0.05, lr_mask=0.01,
               learn_pick=None):
    """CPG's phases of `task` without data: Phase A (+ pick), optional prune, optional retrain.

    The task must already be added (model.add_task). lr_mask is large so that some picks flip.
    """
    gen = torch.Generator().manual_seed(1000 + seed)
    learn_pick = task >= 2 if learn_pick is None else learn_pick
    assign_free_capacity(model, task)
    # Phase A
    begin_all(model, task, learn_pick=learn_pick)
    sgd = build_weight_optimizer(model, task, lr)
    adam = build_pick_optimizer(model, lr_mask) if learn_pick else None
    train_steps(model, task, [sgd, adam], steps, gen)
    end_all(model)
    if sparsity:
        # Phase B: pick frozen, release then fine-tune the survivors
        begin_all(model, task, learn_pick=False, fixed_pick=learn_pick)
        sgd = build_weight_optimizer(model, task, lr)
        train_steps(model, task, [sgd], 1, gen)
        prune_all(model, task, sparsity, sgd)
        train_steps(model, task, [sgd], steps, gen)
        end_all(model)
    if retrain and learn_pick:
        # Phase C: a fresh pick mask is learned again with the surviving weights
        reset_picks(model, task)
        begin_all(model, task, learn_pick=True)
        sgd = build_weight_optimizer(model, task, lr)
        adam = build_pick_optimizer(model, lr_mask)
        train_steps(model, task, [sgd, adam], steps, gen)
        end_all(model)


@torch.no_grad()
def task_logits(model, x, tasks=None):
    """{task: logits} in eval mode (per-task BN running statistics, frozen effective weights)."""
    was_training = model.training
    model.eval()
    tasks = range(1, len(model.tasks) + 1) if tasks is None else tasks
    out = {}
    for task in tasks:
        model.set_task(task)
        out[task] = model(x).clone()
    model.train(was_training)
    return out


def snapshot(model):
    """Detached copies of the whole state dict (weights, owners, picks, BN, heads)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class TensorTasks:
    """The data provider CPG_cifar100_main.main builds (CifarTasks' interface), over fixed random
    tensors without augmentation: monkeypatch it over `CPG_cifar100_main.CifarTasks` to run the
    real phases in process in about a second.

    Every task has TRAIN_SIZE train and VAL_SIZE test samples of 5 classes (class k shifts channel
    0 by k/2: learnable). Train batches come from the production RankSeededSampler for every world
    size (one process: num_replicas=1), so under DDP the ranks' k-th batches together are exactly
    the k-th batch of one process with the same global batch. Tensors stay on the CPU: the Manager
    moves batches to the device, as with the image loaders.
    """

    TRAIN_SIZE, VAL_SIZE, NUM_CLASSES = 64, 40, 5

    def __init__(self, args, device, dist=None):
        self.args, self.device, self.dist = args, device, dist

    @classmethod
    def tensors(cls, task, split):
        """(images (N, 3, 32, 32), labels (N,)) of `task`; the same in every process."""
        from zlib import crc32  # str hash() differs between processes
        size = cls.TRAIN_SIZE if split == 'train' else cls.VAL_SIZE
        gen = torch.Generator().manual_seed(crc32(f'{task}/{split}'.encode()))
        labels = torch.arange(size) % cls.NUM_CLASSES
        images = torch.randn(size, 3, 32, 32, generator=gen)
        images[:, 0] += labels.view(-1, 1, 1).float() * 0.5
        return images, labels

    def loaders(self, task):
        from torch.utils.data import DataLoader, TensorDataset

        from utils.distributed import RankSeededSampler
        world, rank = (self.dist.world_size, self.dist.rank) if self.dist is not None else (1, 0)
        assert self.args.batch_size % world == 0, 'the global batch must split evenly over the ranks'
        train_set = TensorDataset(*self.tensors(task, 'train'))
        sampler = RankSeededSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                    seed=self.args.seed)
        train = DataLoader(train_set, batch_size=self.args.batch_size // world, sampler=sampler,
                           generator=torch.Generator().manual_seed(self.args.seed))
        return train, self.test_loader(task), self.NUM_CLASSES

    def test_loader(self, task):
        from torch.utils.data import DataLoader, TensorDataset
        return DataLoader(TensorDataset(*self.tensors(task, 'test')), batch_size=self.args.val_batch_size)


def stage_args(argv, **flags):
    """CPG_cifar100_main's parsed and checked args for `argv` plus --key value for each flag
    (--key alone for a value of True).

    Through get_args_parser, so flags a test does not name keep their defaults; --device is the
    test device unless given.
    """
    import CPG_cifar100_main as cli
    argv = list(argv)
    flags.setdefault('device', DEVICE)
    for key, value in flags.items():
        argv += [f'--{key}'] if value is True else [f'--{key}', str(value)]  # True: a bare switch
    parser = cli.get_args_parser()
    args = parser.parse_args(argv)
    cli.check_args(parser, args)
    return args


def toy_stage_args(toy_data, goals, mode, save_folder, load_folder=None, epochs=2, **flags):
    """Stage args on the toy data at the tiny width; the resume file is written after every epoch
    (so that interruptions resume), the train-accuracy gate is off."""
    settings = dict(dataset='toy_task_2', data_root=toy_data, save_folder=save_folder, epochs=epochs,
                    base_width=TINY, workers=0, batch_size=64, baseline_acc_file=goals,
                    train_acc_gate=0, lr_mask=0.01, resume_every_minutes=0)
    if load_folder:
        settings['load_folder'] = load_folder
    settings.update(flags)
    return stage_args(['--mode', mode], **settings)


def tree_bytes(folder):
    """relative path -> bytes of every file under `folder` (to prove that nothing changed)."""
    tree = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                tree[os.path.relpath(path, folder)] = f.read()
    return tree


def load_tool(name):
    """Import tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_toy_data(out, tasks=3, train=300, test=40, **flags):
    """tools/make_toy_data.py in this process (no interpreter start): returns `out` as a string."""
    spec = importlib.util.spec_from_file_location('make_toy_data', os.path.join(REPO, 'tools', 'make_toy_data.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = ['--out', str(out), '--tasks', str(tasks), '--train', str(train), '--test', str(test)]
    for key, value in flags.items():
        argv += [f'--{key}'] + ([str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)])
    if tool.main(tool.get_args_parser().parse_args(argv)) != 0:
        raise RuntimeError(f'tools/make_toy_data.py failed for {out}')
    return str(out)


def contradict_test_split(data_root, task, layout='cifar'):
    """Copy the first test image of class_0 of `task` into its class_1 test folder as well: no
    model classifies both copies right, so test accuracy stays below 1.0 and a goal of 1.0 (the
    largest goal a goal file may hold) is missed on every device. Returns the copy's path."""
    import shutil
    split = (os.path.join(data_root, 'test', task) if layout == 'cifar'
             else os.path.join(data_root, task, 'test'))
    first = sorted(os.listdir(os.path.join(split, 'class_0')))[0]
    copy = os.path.join(split, 'class_1', 'contradiction' + os.path.splitext(first)[1])
    shutil.copyfile(os.path.join(split, 'class_0', first), copy)
    return copy


def wait_lock_free(lock, timeout=30):
    """Wait until nobody holds the flock on `lock` (a killed run's processes are gone: the kernel
    drops the lock with its last holder). The test takes it for an instant; fails if it never frees."""
    import fcntl
    import time
    started = time.monotonic()
    with open(lock, 'a') as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() - started < timeout, f'the lock on {lock} stayed held'
                time.sleep(0.05)


def subprocess_env(**extra):
    """Environment for CLI / script subprocesses: one OpenMP thread, this interpreter first on
    PATH, and DEVICE (the experiment scripts' knob) set to the test device."""
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
    env['DEVICE'] = DEVICE
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_main_block(argv, capsys):
    """The script argv[0]'s own __main__ block, run in this process (the fast loop's stand-in for
    a subprocess): (exit status, stdout, stderr)."""
    import runpy
    saved = sys.argv
    sys.argv = [str(a) for a in argv]
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
        rc = 0
    except SystemExit as exc:
        rc = exc.code
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def spy_on_paths(monkeypatch, prefixes):
    """Record every stat / listing / open of a path under any of `prefixes`: returns the list the
    calls are appended to, as (function name, path)."""
    import builtins
    prefixes = [os.path.abspath(p) for p in prefixes]
    touched = []

    def spy(function):
        def wrapper(path, *args, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                name = os.path.abspath(os.fsdecode(path))
                if any(name == p or name.startswith(p + os.sep) for p in prefixes):
                    touched.append((function.__name__, name))
            return function(path, *args, **kwargs)
        return wrapper

    for module, name in ((os, 'stat'), (os, 'lstat'), (os, 'listdir'), (os, 'scandir'),
                         (builtins, 'open')):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    return touched


def kill_script_when(script, env, due, delay, name, timeout=600, before_kill=None):
    """Start `bash script` in its own process group, wait until `due()` is true, sleep `delay`
    seconds, call `before_kill()` (e.g. to note where the run is), then SIGKILL the whole group
    (kill -9 as a user's machine does it). Fails the test if the script ends first."""
    import signal
    import subprocess
    import time

    import pytest
    proc = subprocess.Popen(['bash', script], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        while proc.poll() is None and not due():
            assert time.monotonic() - started < timeout, f'{name}: never due'
            time.sleep(0.01)
        if proc.poll() is not None:
            pytest.fail(f'{name}: the script ended (exit {proc.returncode}) before the kill point: '
                        f'{proc.stderr.read()[-2000:]}')
        time.sleep(delay)
        if before_kill is not None:
            before_kill()
    finally:  # also when due() or the timeout raised: never leave the script running
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the whole group has already ended
            pass
        proc.wait()
        proc.stderr.close()


# ----- the experiment scripts end to end (tests/test_experiment*_e2e.py) ---------------------------
def run_script(script, env, *args, timeout=900, **extra):
    """`bash script args...` in the repository with `env` plus `extra` (values as strings):
    the CompletedProcess, output captured as text."""
    import subprocess
    env = dict(env, **{k: str(v) for k, v in extra.items()})
    return subprocess.run(['bash', script, *(str(a) for a in args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_pick(env, root, task, ratio):
    """tools/pick_pruning_ratio.py: pick `ratio` by hand for `root`/`task` (goals: env's GOALS_FILE)."""
    import subprocess
    return subprocess.run(['python', 'tools/pick_pruning_ratio.py', '--task_folder', str(os.path.join(root, task)),
                           '--baseline_acc_file', env['GOALS_FILE'], '--ratio', str(ratio)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def tail(proc, n=3000):
    """A finished process's exit status and the ends of its output (assertion messages)."""
    return f'exit {proc.returncode}\nstdout: {proc.stdout[-n:]}\nstderr: {proc.stderr[-n:]}'


def assert_same_state(got, want):
    """Two checkpoints hold the same task table and bitwise-equal tensors under the same keys."""
    assert got['tasks'] == want['tasks']
    assert got['model'].keys() == want['model'].keys()
    for key, value in want['model'].items():
        assert torch.equal(got['model'][key], value), key


def one_line_error(fn, exc=ValueError):
    """The message of the `exc` that fn() raises, asserted to be a single line."""
    import pytest
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    assert '\n' not in message, message
    return message


def torchvision_resnet50():
    """A seeded random-init torchvision ResNet-50 (CPU, eval) whose BN tensors all matter (fresh
    BNs are the identity), to compare a model loaded from its state dict with it."""
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(7)
    return net.eval()
