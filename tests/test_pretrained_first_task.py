"""The three first-task cases of experiment 2 (spec §5.2) through the real Phase A of
CPG_imagenet_main: a pretrained 1000-class task evaluated and not trained (its logits equal
torchvision's), a pretrained backbone with a fresh head that trains, and the one-line errors."""
import json
import os

import pytest
import torch
import torchvision

import CPG_imagenet_main as cli
from cpg_testlib import DEVICE, TensorTasks
from utils.checkpoint import load_checkpoint, model_from_checkpoint


class ImageNetLike(TensorTasks):
    """In-memory tasks: 'imagenet' has 1000 classes (64 train / 40 test images), others 5."""

    def loaders(self, task):
        train, test, num_classes = super().loaders(task)
        return train, test, 1000 if task == 'imagenet' else num_classes


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A torchvision ResNet-50 state dict (random init, BN statistics perturbed) saved as a user
    would save IMAGENET1K_V1 weights; and the torchvision model itself."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp('pretrained') / 'resnet50.pth'
    torch.save(net.state_dict(), path)
    return str(path), net.eval()


def _args(tmp_path, dataset, **flags):
    goals = tmp_path / 'goals.json'
    goals.write_text(json.dumps({'imagenet': '0.0', 'mine': '0.0'}))
    argv = ['--mode', 'finetune', '--dataset', dataset, '--save_folder', str(tmp_path / dataset),
            '--baseline_acc_file', str(goals), '--device', DEVICE, '--batch_size', '16',
            '--val_batch_size', '20', '--workers', '0', '--image_size', '32',
            '--pruning_ratio_to_acc_record_file', str(tmp_path / dataset / 'record.txt')]
    for key, value in flags.items():
        argv += [f'--{key}', str(value)]
    parser = cli.get_args_parser()
    args = parser.parse_args(argv)
    cli.check_args(parser, args)
    return args


def test_pretrained_imagenet_task_is_evaluated_not_trained(tmp_path, pretrained, monkeypatch):
    path, net = pretrained
    monkeypatch.setattr(cli, 'FineGrainedTasks', ImageNetLike)
    args = _args(tmp_path, 'imagenet', pretrained=path, epochs=0)
    assert cli.main(args) == 0
    assert not os.path.exists(os.path.join(args.save_folder, 'log.jsonl'))  # no epoch trained
    model = model_from_checkpoint(load_checkpoint(args.save_folder), DEVICE).eval()
    model.set_task(1)
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(images.to(DEVICE)).cpu(), net(images))
    record = json.loads((tmp_path / 'imagenet' / 'record.txt').read_text())
    result = json.loads((tmp_path / 'imagenet' / 'result.json').read_text())
    assert record == {'0.0': round(result['accuracy'], 4)} and result['status'] == 0


def test_pretrained_backbone_with_a_fresh_head_trains(tmp_path, pretrained, monkeypatch, capsys):
    """One epoch (4 SGD steps at LR 1e-4) from torchvision's backbone: every shared conv moved
    (it trained), each by less than half its size (it started from the copied weights: a fresh
    N(0, 0.001) init lies at least 100% of their size away; measured here: at most 29%, conv1);
    the new head is 5 classes wide."""
    path, net = pretrained
    monkeypatch.setattr(cli, 'FineGrainedTasks', ImageNetLike)
    args = _args(tmp_path, 'mine', pretrained=path, epochs=1, lr=1e-4)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert 'tensors copied, head fresh' in out
    state = load_checkpoint(args.save_folder)['model']
    assert state['heads.1.weight'].shape == (5, 2048)
    theirs = net.state_dict()
    convs = [k for k, v in theirs.items() if k.endswith('weight') and v.dim() == 4]
    assert len(convs) == 53
    for key in convs:
        ours, start = state[key].float(), theirs[key]
        assert not torch.equal(ours, start), f'{key} took no step'
        assert float((ours - start).norm() / start.norm()) < 0.5, key
    bn = 'layer4.2.bn3.per_task.1.weight'   # trained too, from torchvision's value
    assert not torch.equal(state[bn], theirs['layer4.2.bn3.weight'])
    assert torch.allclose(state[bn], theirs['layer4.2.bn3.weight'], atol=0.05)
    epochs = [json.loads(line) for line in open(os.path.join(args.save_folder, 'log.jsonl'))]
    assert len(epochs) == 1 and epochs[0]['lr']['lr'] == 1e-4


def test_pretrained_errors_are_one_line(tmp_path, pretrained, monkeypatch, capsys):
    path, _ = pretrained
    monkeypatch.setattr(cli, 'FineGrainedTasks', ImageNetLike)
    missing = str(tmp_path / 'nope.pth')
    assert cli.main(_args(tmp_path, 'imagenet', pretrained=missing, epochs=0)) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and f'pretrained weights not found: {missing}' in err
    assert cli.main(_args(tmp_path, 'imagenet', pretrained=path, epochs=0, base_width=0.5)) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'BASE_WIDTH 1.0' in err
    with pytest.raises(SystemExit) as exit_info:
        _args(tmp_path, 'mine', pretrained=path, load_folder=str(tmp_path))
    assert exit_info.value.code == 1
    assert '--pretrained is for the first task' in capsys.readouterr().err
