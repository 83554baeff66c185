"""tools/benchmark.py on a tiny configuration: it runs, its JSON has every figure, and the figures
are what they claim to be: each ratio is CPG's median time over dense's, each throughput is the
batch over the step time, each headline figure is the headline batch's.

Timing is the script's business, not the tests': no ratio is asserted against its target here.
The smoke run stays on the CPU whatever CPG_TEST_DEVICE says (it checks the CPU notes); the CUDA
benchmark is run by hand (docs/speed.md).
"""

import json
import os
import subprocess
import sys

import pytest

from cpg_testlib import load_tool, subprocess_env
from utils.data import default_workers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIO_KEYS = {'train_task1', 'train_prune', 'train_taskk', 'inference'}
# ratio key -> (CPG's ms key, dense's ms key)
RATIO_OF = {'train_task1': ('cpg_task1', 'dense_train'), 'train_prune': ('cpg_prune', 'dense_train'),
            'train_taskk': ('cpg_taskk', 'dense_train'), 'inference': ('cpg_infer', 'dense_infer')}
EPOCH_PARTS = {'train', 'validate', 'resume_write', 'log'}
TRAIN_STEPS = {'dense_train', 'cpg_task1', 'cpg_prune', 'cpg_taskk'}


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    """One tiny run with --epoch: 5 classes x 8 train / 4 test generated PNGs, width 0.0625."""
    out = tmp_path_factory.mktemp('bench') / 'out.json'
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'benchmark.py'), '--quick',
                           '--device', 'cpu', '--json', str(out), '--base_width', '0.0625',
                           '--steps', '2', '--warmup', '1', '--batches', '16,32', '--amp',
                           '--epoch', '--epoch_train', '8', '--epoch_test', '4', '--epoch_warmup', '1'],
                          capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def _check_figures(size, per):
    """One batch size's figures: ratios are CPG / dense medians, throughputs are size / time."""
    assert set(per['ratios']) == RATIO_KEYS
    for key, (cpg, dense) in RATIO_OF.items():
        assert per['ms'][cpg] > 0 and per['ms'][dense] > 0, key
        assert per['ratios'][key] == pytest.approx(per['ms'][cpg] / per['ms'][dense]), key
    for name, images_per_s in per['images_per_s'].items():
        assert images_per_s == pytest.approx(size * 1e3 / per['ms'][name]), name


@pytest.mark.slow  # the benchmark runs as a subprocess
def test_quick_benchmark_writes_all_figures(quick_run):
    proc, result = quick_run
    assert 'train task 1' in proc.stdout and 'ignored on CPU' in proc.stdout
    assert result['device'] == 'cpu' and result['quick'] is True
    assert isinstance(result['torch'], str) and isinstance(result['threads'], int)
    assert result['amp'] is False and result['notes']  # --amp is reported as ignored on CPU
    assert set(result['ratios']) == RATIO_KEYS | {'epoch_taskk'}
    assert result['headline_batch'] == 32
    assert set(result['per_batch']) == {'16', '32'}
    assert {k: v for k, v in result['ratios'].items() if k != 'epoch_taskk'} == result['per_batch']['32']['ratios']
    for size, per in result['per_batch'].items():
        _check_figures(int(size), per)
        assert per['prune_updates_timed'] >= 1  # the timed prune steps include a mask update
        # the pruning step's cost: the plain step's plus a mask update amortized over 10 steps
        ms = per['ms']
        assert ms['cpg_prune'] == pytest.approx(
            ms['cpg_prune_plain_step'] + (ms['cpg_prune_update_step'] - ms['cpg_prune_plain_step']) / 10)


@pytest.mark.slow  # the benchmark runs as a subprocess
def test_bytes_per_weight_report_the_exported_file(quick_run):
    proc, result = quick_run
    assert set(result['bytes_per_weight']) == {'2', '20'}
    assert all(isinstance(v, float) and v > 4 for v in result['bytes_per_weight'].values())
    assert result['bytes_per_weight']['20'] > result['bytes_per_weight']['2']
    for tasks, bits in (('2', 2), ('20', 5)):
        report = result['checkpoint'][tasks]
        assert report['tasks'] == int(tasks) and report['owner_dtype'] == 'torch.uint8'
        assert report['owner_bits'] == bits and report['four_plus_t_over_8'] == 4 + int(tasks) / 8
        assert report['bytes_per_weight'] == result['bytes_per_weight'][tasks]
        assert report['bytes_per_weight'] < report['training_file_bytes_per_weight']
        assert report['bound_bytes_per_weight'] > report['four_plus_t_over_8']
        assert set(report['breakdown_per_weight']) == {'weights', 'owner', 'pick_bits', 'per_task'}
        owner = report['breakdown_per_weight']['owner']
        assert owner < 1 and owner == pytest.approx(bits / 8, rel=1e-3)  # packed: under a byte
    assert '4+T/8' in proc.stdout and 'owner ids 5 bits' in proc.stdout


@pytest.mark.slow  # the benchmark runs as a subprocess
def test_epoch_figures(quick_run):
    proc, result = quick_run
    epoch = result['epoch']
    assert result['ratios']['epoch_taskk'] == epoch['ratio']
    assert result['targets']['epoch_taskk'] == 1.10
    assert epoch['train_images'] == 40 and epoch['test_images'] == 20 and epoch['batch'] == 32
    assert set(epoch['ms']) == {'dense_epoch', 'cpg_epoch_taskk'}
    seconds = epoch['epoch_seconds']
    for name, key in (('dense', 'dense_epoch'), ('cpg', 'cpg_epoch_taskk')):
        assert set(epoch['parts_ms'][name]) == EPOCH_PARTS
        assert len(seconds[name]) == epoch['repeats'] == 2
        # the epoch time is the median of the repeats (of 2: their mean), in ms
        assert epoch['ms'][key] == pytest.approx(1e3 * sum(seconds[name]) / 2)
        # the parts tile each epoch, so (medians of 2 = means) they add up to the epoch's median
        assert sum(epoch['parts_ms'][name].values()) == pytest.approx(epoch['ms'][key])
    assert epoch['ratio'] == pytest.approx(epoch['ms']['cpg_epoch_taskk'] / epoch['ms']['dense_epoch'])
    assert epoch['ratio_best'] == pytest.approx(min(seconds['cpg']) / min(seconds['dense']))
    # paired: each repeat's CPG epoch over the dense epoch of the same round, their median (mean)
    assert epoch['ratio_paired'] == pytest.approx(
        sum(c / d for c, d in zip(seconds['cpg'], seconds['dense'])) / 2)
    assert 'epoch task k>=2' in proc.stdout
    assert 'finetune task 2 epoch' in proc.stdout and 'dense epoch' in proc.stdout  # the log lines


def test_epoch_data_takes_root_slash_task_or_a_root(tmp_path):
    bench = load_tool('bench_epoch')
    root = tmp_path / 'data'
    for task in ('b_task', 'a_task'):
        (root / 'train' / task / 'class_0').mkdir(parents=True)
    assert bench.epoch_data_task(str(root / 'b_task')) == (str(root), 'b_task')
    assert bench.epoch_data_task(str(root)) == (str(root), 'a_task')  # a root: its first task
    with pytest.raises(SystemExit, match='--epoch_data'):
        bench.epoch_data_task(str(root / 'missing_task'))


# ----- ResNet-50 (experiment 2) and the JPEG loader ------------------------------------------------
@pytest.fixture(scope='module')
def resnet_run(tmp_path_factory):
    """One tiny ResNet-50 run: width 0.0625, 32x32 inputs, batch 4, and the loader on 16 small JPEGs
    with the default worker count."""
    out = tmp_path_factory.mktemp('bench_resnet') / 'out.json'
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'benchmark.py'), '--arch', 'resnet50',
                           '--quick', '--device', 'cpu', '--json', str(out), '--base_width', '0.0625',
                           '--sim_width', '0.0625', '--image_size', '32', '--batches', '4', '--steps', '2',
                           '--warmup', '1', '--loader_images', '16', '--loader_image_side', '24'],
                          capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


@pytest.mark.slow  # the benchmark runs as a subprocess (and starts loader workers)
def test_resnet50_benchmark_reports_ratios_and_the_loader(resnet_run):
    proc, result = resnet_run
    assert result['arch'] == 'resnet50' and result['model'] == 'ResNet-50'
    assert result['image_size'] == 32 and result['base_width'] == 0.0625
    assert result['batches'] == [4] and result['headline_batch'] == 4 and set(result['per_batch']) == {'4'}
    assert set(result['ratios']) == RATIO_KEYS and result['ratios'] == result['per_batch']['4']['ratios']
    assert result['targets']['train_taskk'] == 1.15 and result['targets']['inference'] == 1.05
    per = result['per_batch']['4']
    _check_figures(4, per)
    loader = result['loader']
    assert loader['loader_images_per_s'] > 0 and loader['fed_images_per_s'] > 0
    assert set(loader['step_images_per_s']) == TRAIN_STEPS
    assert loader['step_images_per_s'] == {k: per['images_per_s'][k] for k in TRAIN_STEPS}
    fastest = max(loader['step_images_per_s'].values())
    assert loader['loader_keeps_up'] is (loader['loader_images_per_s'] >= fastest)
    # the training loader itself: default workers for decoded files, persistent, pinned only on CUDA
    assert loader['workers'] == default_workers(decode=True)
    assert loader['persistent_workers'] is (loader['workers'] > 0) and loader['pin_memory'] is False
    assert loader['batch'] == 4 and loader['image_size'] == 32 and loader['train_images'] == 16
    assert result['checkpoint']['2']['tasks'] == 2 and result['bytes_per_weight']['20'] > 4
    assert 'CPG vs dense ResNet-50' in proc.stdout and 'loader alone' in proc.stdout


def test_loader_measurement_in_process(tmp_path):
    """measure_loader on 8 tiny JPEGs without workers: both figures, the verdict, the settings."""
    from types import SimpleNamespace

    import torch
    tool = load_tool('bench_loader')
    args = SimpleNamespace(loader_images=8, loader_image_side=16, seed=0, loader_batch=2, image_size=16,
                           loader_workers=0)
    fed = []
    report = tool.measure_loader(args, torch.device('cpu'), str(tmp_path),
                                 lambda x, y: fed.append((tuple(x.shape), y.tolist())),
                                 {'dense_train': 1e9, 'cpg_task1': 1.0})
    assert report['loader_images_per_s'] > 0 and report['fed_images_per_s'] > 0
    assert report['loader_keeps_up'] is False and report['fastest_step'] == 'dense_train'
    assert report['workers'] == 0 and report['warmup_batches'] == 1 and report['train_images'] == 8
    assert report['timed_images'] == {'alone': 6, 'fed': 6}  # 4 batches of 2, the first is warm-up
    assert len(fed) == 4 and all(shape == (2, 3, 16, 16) for shape, _ in fed)
    assert report['jpeg_sides'] == [12, 24]
    with pytest.raises(SystemExit, match='--loader_images'):
        tool.timed_epoch(tool.train_loader(os.path.join(str(tmp_path), 'loader_data'), 8, 16, 'cpu', 0, 0),
                         0, 0, 1, lambda x, y: None, lambda: None)


def test_benchmark_defaults_per_architecture_and_device():
    """resnet50: 224 x 224, batch 32 on CUDA; reduced on CPU; the loader on. VGG: unchanged."""
    import torch
    bench = load_tool('benchmark')
    for arch, device, size, batches, loader in (('resnet50', 'cuda', 224, '32', True),
                                                ('resnet50', 'cpu', 112, '8', True),
                                                ('custom_vgg_cifar100', 'cpu', 32, '32,128', False)):
        args = bench.get_args_parser().parse_args(['--arch', arch])
        bench.resolve_defaults(args, torch.device(device))
        assert (args.image_size, args.batches, args.loader, args.base_width) == (size, batches, loader, 1.0)
    args = bench.get_args_parser().parse_args(['--arch', 'resnet50', '--no-loader', '--image_size', '96'])
    bench.resolve_defaults(args, torch.device('cpu'))
    assert args.loader is False and args.image_size == 96
    with pytest.raises(SystemExit, match='--epoch'):
        bench.resolve_defaults(bench.get_args_parser().parse_args(['--arch', 'resnet50', '--epoch']),
                               torch.device('cpu'))


def test_dense_resnet50_is_torchvisions_at_the_cpg_widths():
    """The dense reference: torchvision's ResNet-50 layout, at every width the CPG model's convs."""
    import torch
    import torchvision

    from models import build_model
    lib = load_tool('bench_lib')
    shapes = [tuple(v.shape) for v in lib.plain_resnet50(1.0).state_dict().values()]
    assert shapes == [tuple(v.shape) for v in torchvision.models.resnet50(num_classes=5).state_dict().values()]
    for width in (0.25, 0.0625):
        plain = [tuple(m.weight.shape[:2]) for m in lib.dense_resnet50(width).modules()
                 if isinstance(m, torch.nn.Conv2d)]
        assert plain == list(build_model('resnet50', base_width=width).layer_shapes(1.0).values())
    assert lib.dense_resnet50(0.0625)(torch.randn(2, 3, 32, 32)).shape == (2, 5)
