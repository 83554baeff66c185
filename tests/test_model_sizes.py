"""tools/model_sizes.py: the compared methods' 6-task ResNet-50 sizes, recomputed here from
ResNet-50's parameter counts written out, its counting equal to the compact export of a real
model, the table and JSON, the >10 % rule, and no tensor allocated off the meta device."""
import json
import os

import pytest
import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cpg_testlib import (DEVICE, REPO, begin_all, learn_task, load_tool, run_main_block, tiny_model,
                         train_steps)
from models import build_model
from utils.compact import compact_state_dict
from utils.grower import assign_free_capacity
from utils.manager import build_weight_optimizer
from utils.picker import build_pick_optimizer

TOOL = os.path.join(REPO, 'tools', 'model_sizes.py')
MB = 2 ** 20
CLASSES = (1000, 200, 196, 102, 195, 250)   # imagenet, cubs, cars, flowers, wikiart, sketches (spec §5.2)
# torchvision's resnet50: 25,557,032 parameters = 53 convs' 23,454,912 weights + 53 BNs' 2 x 26,560
# affine + fc's 2048 x 1000 + 1000 (checked against torchvision itself below)
CONV_WEIGHTS = 23_454_912
BN_CHANNELS = 26_560
BN_LAYERS = 53
NORM_BYTES = BN_CHANNELS * 4 * 4 + BN_LAYERS * 8   # weight, bias, mean, var (fp32); batch count (int64)
HEAD_BYTES = sum((2048 * c + c) * 4 for c in CLASSES)
# adapters of 6 columns (tests/test_progressive.py's formula), plus their BNs' buffers: mean and var
# of r = 2+8+16+32+64 channels and a batch count, 5 points in each of columns 2..6
ADAPTER_PARAMETERS = 3_485_405
ADAPTER_BUFFER_BYTES = 5 * (2 * 122 * 4 + 5 * 8)


@pytest.fixture(scope='module')
def tool():
    return load_tool('model_sizes')


@pytest.fixture(scope='module')
def rows(tool):
    return {r['method']: r for r in tool.compute_sizes()}


def test_written_out_counts_are_torchvision_resnet50():
    with torch.device('meta'):
        net = torchvision.models.resnet50()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert sum(m.weight.numel() for m in convs) == CONV_WEIGHTS and len(convs) == BN_LAYERS
    assert sum(m.num_features for m in norms) == BN_CHANNELS and len(norms) == BN_LAYERS
    assert sum(p.numel() for p in net.parameters()) == CONV_WEIGHTS + 2 * BN_CHANNELS + 2048 * 1000 + 1000
    # every conv holds a multiple of 8 weights: packing per layer rounds nothing up
    assert all(m.weight.numel() % 8 == 0 for m in convs)


def test_sizes_from_parameter_counts(rows):
    # train from scratch / finetune: six one-task networks; owner ids take 1 bit (T = 1)
    scratch = 6 * (CONV_WEIGHTS * 4 + CONV_WEIGHTS // 8 + NORM_BYTES) + HEAD_BYTES
    # PackNet: one network, owner ids of 6 tasks in 3 bits, six tasks' BN and heads
    packnet = CONV_WEIGHTS * 4 + CONV_WEIGHTS * 3 // 8 + 6 * NORM_BYTES + HEAD_BYTES
    # Piggyback and CPG (default layout): PackNet's plus one bit per weight for each of tasks 2..6
    piggyback = packnet + 5 * CONV_WEIGHTS // 8
    # ProgressiveNet: six columns (weights and BN, no owner ids), their adapters, six heads
    progressive = 6 * (CONV_WEIGHTS * 4 + NORM_BYTES) + ADAPTER_PARAMETERS * 4 + ADAPTER_BUFFER_BYTES + HEAD_BYTES
    expected = {'Train from scratch': scratch, 'Finetune': scratch, 'PackNet': packnet,
                'Piggyback': piggyback, 'CPG': piggyback, 'ProgressiveNet': progressive}
    assert list(rows) == ['Train from scratch', 'Finetune', 'ProgressiveNet', 'PackNet', 'Piggyback', 'CPG']
    for method, size in expected.items():
        assert rows[method]['computed_mb'] * MB == size, method   # exact: bytes / 2^20
    assert rows['PackNet']['parts_mb'] == {'weights': CONV_WEIGHTS * 4 / MB, 'owner ids': CONV_WEIGHTS * 3 / 8 / MB,
                                           'norms': 6 * NORM_BYTES / MB, 'heads': HEAD_BYTES / MB}
    assert rows['Piggyback']['parts_mb']['pick bits'] == 5 * CONV_WEIGHTS / 8 / MB
    assert rows['Train from scratch']['networks'] == 6 and rows['PackNet']['networks'] == 1
    # 554 MB (the paper) is six plain ResNet-50s with their heads: ours adds only the owner bits
    assert round((scratch - 6 * CONV_WEIGHTS // 8) / MB) == 554


def test_counting_equals_the_compact_export_and_set_pick_bits(tool):
    """A real tiny model whose tasks own 1/2, 1/4, 1/4 of every layer and whose tasks 2 and 3
    stored picks through MaskedLayer.set_pick_bits: the tool counts exactly the bytes of
    utils/compact.py's export; its meta twin with add_pick_layout counts the same."""
    tasks = [('a', 5), ('b', 7), ('c', 3)]
    torch.manual_seed(0)
    real = build_model('resnet50', base_width=0.0625).to(DEVICE)
    for name, classes in tasks:
        real.add_task(name, classes)
    for _, layer in real.masked_layers():
        n = layer.owner.numel()   # a multiple of 4 at this width: the shares are whole entries
        owner = torch.full((n,), 3, dtype=layer.owner.dtype, device=layer.owner.device)
        owner[:n // 2], owner[n // 2:3 * n // 4] = 1, 2
        layer.owner.copy_(owner.view_as(layer.owner))
        for task in (2, 3):
            layer.set_pick_bits(task, torch.rand(layer.weight.shape, device=layer.weight.device) > 0.5)
    export = sum(t.numel() * t.element_size() for t in compact_state_dict(real).values())
    counted = tool.stored_bytes(real)
    assert sum(counted.values()) == export
    picks = sum(b.numel() for n, b in real.named_buffers() if '.pick_bits_' in n)
    assert counted['pick bits'] == picks > 0
    with torch.device('meta'):   # the real model's meta twin, picks from the shares alone
        twin = build_model('resnet50', base_width=0.0625)
        for name, classes in tasks:
            twin.add_task(name, classes)
    assert tool.stored_bytes(tool.add_pick_layout(twin, [0.5, 0.25, 0.25])) == counted


def test_counting_equals_the_compact_export_mid_phase(tool):
    """The tiny VGG (per-task biases) after CPG's phases of tasks 1-2 (pruned, picks) and in the
    middle of task 3's Phase A (a float pick mask): the export packs that pick, so does the count."""
    model = tiny_model()
    for task in (1, 2):
        model.add_task(f't{task}', 5)
        learn_task(model, task, sparsity=0.5)
    model.add_task('t3', 5)
    assign_free_capacity(model, 3)
    begin_all(model, 3, learn_pick=True)
    train_steps(model, 3, [build_weight_optimizer(model, 3, 0.05), build_pick_optimizer(model, 0.01)], 2,
                torch.Generator().manual_seed(0))
    assert any(layer.pick_score is not None for _, layer in model.masked_layers())
    counted = tool.stored_bytes(model)
    assert sum(counted.values()) == sum(t.numel() * t.element_size() for t in compact_state_dict(model).values())
    assert counted['pick bits'] > 0 and counted['norms'] > 0


class RealTensors(TorchDispatchMode):
    """Counts the elements of every tensor an operation creates off the meta device."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.elements += sum(t.numel() for t in tree_flatten(out)[0]
                             if isinstance(t, torch.Tensor) and t.device.type != 'meta')
        return out


def test_meta_device_allocates_nothing(tool):
    with RealTensors() as spy:
        sizes = tool.compute_sizes()
        models = tool.method_models('progressive_resnet50', 'columns', tool.paper_tasks())
    assert spy.elements == 0
    assert len(sizes) == 6 and all(r['computed_mb'] > 100 for r in sizes)
    assert all(t.device.type == 'meta' for m in models for t in list(m.parameters()) + list(m.buffers()))


def test_table_and_json(capsys, rows):
    rc, out, err = run_main_block([TOOL, '--json'], capsys)
    assert rc == 0, err
    data = json.loads(out)
    assert data['tasks'] == dict(zip(['imagenet', 'cubs_cropped', 'stanford_cars_cropped', 'flowers',
                                      'wikiart', 'sketches'], CLASSES))
    paper = {'Train from scratch': '554', 'Finetune': '551 / 554', 'ProgressiveNet': '563',
             'PackNet': '115', 'Piggyback': '121', 'CPG': '121'}
    assert {r['method']: r['paper_mb'] for r in data['methods']} == paper
    for r in data['methods']:
        assert r['computed_mb'] == rows[r['method']]['computed_mb']
        assert sum(r['parts_mb'].values()) == pytest.approx(r['computed_mb'], rel=1e-12)
        assert r['ratio'] == pytest.approx(r['computed_mb'] / float(r['paper_mb'].split(' / ')[0]))
        assert abs(r['ratio'] - 1) <= 0.10 and not r['off'] and r['counted'] and r['reason']

    rc, out, err = run_main_block([TOOL], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    for method, r in rows.items():
        assert f'| {method} | {r["computed_mb"]:.1f} | {paper[method]} | {r["ratio"]:.3f} |' in lines
        assert any(line.startswith(f'- {method}: ') and 'weights ' in line for line in lines)
    # Piggyback is 7 % over the paper: its reason is printed; PackNet (0.4 %) prints none
    assert f'- Piggyback (+7.0 %): {rows["Piggyback"]["reason"]}' in lines
    assert not any(line.startswith('- PackNet (') for line in lines)


def test_cpg_owned_counts_a_runs_picks(capsys, rows):
    rc, out, err = run_main_block([TOOL, '--json', '--cpg_owned', '0.5', '0.1', '0.1', '0.1', '0.1', '0.1'], capsys)
    assert rc == 0, err
    cpg = {r['method']: r for r in json.loads(out)['methods']}['CPG']
    # task k's pick covers tasks 1..k-1's share: 0.5 + 0.6 + 0.7 + 0.8 + 0.9 = 3.5 bits per weight
    # (each layer rounds its entries, then its bytes: at most 53 x 5 bytes apart)
    assert cpg['parts_mb']['pick bits'] * MB == pytest.approx(3.5 * CONV_WEIGHTS / 8, abs=53 * 5)
    assert cpg['computed_mb'] < rows['CPG']['computed_mb']
    for bad, message in ((['0.5'], 'takes 6 shares'), (['0.5', '0.6', '0', '0', '0', '0'], 'sum to at most 1')):
        rc, out, err = run_main_block([TOOL, '--cpg_owned', *bad], capsys)
        assert rc == 1 and out == '' and len(err.splitlines()) == 1 and message in err, err


def test_more_than_10_percent_off_prints_its_reason(tool, monkeypatch):
    methods = [m if m[0] != 'PackNet' else (m[0], '100', 100, *m[3:]) for m in tool.METHODS]
    monkeypatch.setattr(tool, 'METHODS', tuple(methods))
    sizes = tool.compute_sizes()
    packnet = next(r for r in sizes if r['method'] == 'PackNet')
    assert packnet['off'] and packnet['ratio'] == pytest.approx(packnet['computed_mb'] / 100)
    assert [r['method'] for r in sizes if r['off']] == ['PackNet']
    report = tool.format_report(sizes)
    assert f'- PackNet (+15.5 %, more than 10 % off): {packnet["reason"]}' in report.splitlines()
