"""AngleLinear (m = 4), AngleLoss and the face-verification head (spec §5.4) against direct
evaluations of the formulas."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpg_testlib import DEVICE, to_device
from models.angle import AngleHead, AngleLinear, angle_lambda, angle_loss, angle_margin_logits


def _reference(x, weight):
    """(cos θ·|x|, φ·|x|, k) in float64, entry by entry, straight from the formulas."""
    x, weight = x.double().cpu().numpy(), weight.double().cpu().numpy()
    n, c = x.shape[0], weight.shape[1]
    cos_x, phi_x, ks = np.zeros((n, c)), np.zeros((n, c)), np.zeros((n, c), dtype=int)
    for i in range(n):
        x_len = math.sqrt(float(np.dot(x[i], x[i])))
        for j in range(c):
            w = weight[:, j] / math.sqrt(float(np.dot(weight[:, j], weight[:, j])))
            cos_theta = min(1.0, max(-1.0, float(np.dot(x[i], w)) / x_len))
            theta = math.acos(cos_theta)
            k = math.floor(4 * theta / math.pi)
            cos_x[i, j] = cos_theta * x_len
            phi_x[i, j] = ((-1) ** k * math.cos(4 * theta) - 2 * k) * x_len
            ks[i, j] = k
    return cos_x, phi_x, ks


def _inputs_at_angles(weight, thetas, gen):
    """Rows x_i at angle thetas[i] to weight column 0 (lengths 0.5..3): x = r(cos θ u + sin θ v)."""
    u = weight[:, 0] / weight[:, 0].norm()
    rows = []
    for theta in thetas:
        v = torch.randn(weight.shape[0], generator=gen, dtype=torch.float64)
        v = v - v.dot(u) * u
        v = v / v.norm()
        r = 0.5 + 2.5 * torch.rand((), generator=gen, dtype=torch.float64)
        rows.append(r * (math.cos(theta) * u + math.sin(theta) * v))
    return torch.stack(rows).float()


def test_lambda_schedule():
    assert angle_lambda(0) == 1500.0
    assert angle_lambda(10) == 750.0
    assert angle_lambda(2989) > 5.0
    assert angle_lambda(2990) == 5.0   # 1500 / 300: the floor is reached after 2990 calls
    assert angle_lambda(5000) == 5.0


def test_angle_linear_matches_the_formulas_in_every_branch():
    gen = torch.Generator().manual_seed(0)
    layer = AngleLinear(16, 5)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(16, 5, generator=gen) * 0.3)   # columns of any length
    # two angles inside each quarter [kπ/4, (k+1)π/4), well away from the branch boundaries
    thetas = [(k + f) * math.pi / 4 for k in range(4) for f in (0.2, 0.7)] + [0.0]
    x = _inputs_at_angles(layer.weight.detach().double(), thetas, gen)
    cos_ref, phi_ref, ks = _reference(x, layer.weight.detach())
    assert [int(k) for k in ks[:-1, 0]] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert set(ks.reshape(-1)) >= {0, 1, 2, 3}
    layer = layer.to(DEVICE)
    with torch.no_grad():
        cos_x, phi_x = layer(to_device(x))
    assert cos_x.shape == phi_x.shape == (len(thetas), 5)
    assert cos_x.dtype == phi_x.dtype == torch.float32
    np.testing.assert_allclose(cos_x.cpu().double().numpy(), cos_ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(phi_x.cpu().double().numpy(), phi_ref, rtol=1e-5, atol=5e-5)
    # φ is continuous and decreasing in θ: -2k ± 1 at the quarter boundaries
    assert np.all(np.diff(phi_ref[:-1, 0] / np.linalg.norm(x.double().numpy()[:-1], axis=1)) < 0)


def test_angle_linear_weight_is_never_rescaled_in_place():
    layer = AngleLinear(8, 3).to(DEVICE)
    assert layer.weight.shape == (8, 3)   # (in, out): the original's fc6 layout
    assert torch.allclose(layer.weight.detach().norm(dim=0), torch.ones(3, device=DEVICE), atol=1e-5)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    before, version = layer.weight.detach().clone(), layer.weight._version
    x = to_device(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)))
    cos_x, phi_x = layer(x)
    (cos_x.sum() + phi_x.sum()).backward()
    assert layer.weight._version == version and torch.equal(layer.weight.detach(), before)
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='m = 4'):
        AngleLinear(8, 3, m=2)


def test_margin_logits_by_hand():
    cos_x = to_device(torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], requires_grad=True))
    phi_x = to_device(torch.tensor([[-4.0, -6.0, -1.0], [-2.0, 1.0, -5.0]], requires_grad=True))
    cos_x.retain_grad()
    phi_x.retain_grad()
    target = to_device(torch.tensor([2, 0]))
    lam = 3.0   # 1/(1+λ) = 0.25
    logits = angle_margin_logits((cos_x, phi_x), target, lam)
    expected = torch.tensor([[1.0, -2.0, 0.5 * 0.75 - 1.0 * 0.25],
                             [0.25 * 0.75 - 2.0 * 0.25, 3.0, -1.0]])
    assert torch.allclose(logits.detach().cpu(), expected)
    # the inputs are untouched and the gradient reaches both halves of the pair
    assert cos_x.detach().cpu()[0, 2] == 0.5 and phi_x.detach().cpu()[1, 0] == -2.0
    loss = angle_loss((cos_x, phi_x), target, lam)
    assert torch.allclose(loss, F.cross_entropy(logits, target))
    loss.backward()
    assert phi_x.grad.cpu()[0, 2] != 0 and phi_x.grad.cpu()[0, 0] == 0 and cos_x.grad.cpu()[0, 1] != 0
    # λ -> ∞: the plain softmax loss on cos θ·|x|
    assert torch.allclose(angle_loss((cos_x, phi_x), target, 1e12), F.cross_entropy(cos_x, target))


def test_angle_loss_decreases_on_a_separable_toy_problem():
    gen = torch.Generator().manual_seed(0)
    classes, dim = 4, 8
    centers = torch.randn(classes, dim, generator=gen) * 3
    y = torch.arange(64) % classes
    x = centers[y] + 0.3 * torch.randn(64, dim, generator=gen)
    x, y = to_device(x, y)
    torch.manual_seed(0)
    head = AngleHead(dim, classes, embedding_size=16).to(DEVICE)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    with torch.no_grad():
        start = angle_loss(head(x), y, 5.0).item()   # with the full margin (λ = 5)
    for step in range(200):
        opt.zero_grad()
        angle_loss(head(x), y, angle_lambda(step)).backward()
        opt.step()
    with torch.no_grad():
        cos_x, phi_x = head(x)
        end = angle_loss((cos_x, phi_x), y, 5.0).item()
    assert start > 1.0 and end < 0.1, (start, end)
    assert torch.equal(cos_x.argmax(1), y)


def test_autocast_keeps_angle_linear_in_float32():
    device_type = torch.device(DEVICE).type
    layer = AngleLinear(32, 6).to(DEVICE)
    x = to_device(torch.randn(5, 32, generator=torch.Generator().manual_seed(2)))
    reference = layer(x)
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        assert torch.mm(x, layer.weight).dtype == torch.bfloat16   # autocast is really on
        out = layer(x)
        low = layer(x.bfloat16())   # what an autocast embedding layer hands over
    for got, want in zip(out, reference):
        assert got.dtype == torch.float32 and torch.equal(got, want)
    for got, want in zip(low, layer(x.bfloat16().float())):
        assert got.dtype == torch.float32 and torch.equal(got, want)


def test_angle_head_init_and_embedding():
    torch.manual_seed(0)
    head = AngleHead(600, 1000, std=0.01)
    assert head.embed.weight.shape == (512, 600) and head.angle.weight.shape == (512, 1000)
    for weight in (head.embed.weight, head.angle.weight):   # N(0, 0.01), not the renorm init
        assert abs(weight.detach().std().item() - 0.01) < 5e-4
        assert abs(weight.detach().mean().item()) < 1e-4
    assert torch.all(head.embed.bias == 0)
    head = head.to(DEVICE)
    features = to_device(torch.randn(3, 600, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        emb = head.embedding(features)
        assert torch.equal(emb, head.embed(features)) and emb.shape == (3, 512)
        for got, want in zip(head(features), head.angle(emb)):
            assert torch.equal(got, want)


def test_angle_head_runs_on_the_meta_device():
    head = AngleHead(20, 7).to('meta')
    cos_x, phi_x = head(torch.randn(3, 20, device='meta'))
    assert cos_x.device.type == phi_x.device.type == 'meta' and cos_x.shape == phi_x.shape == (3, 7)
    target = torch.zeros(3, dtype=torch.long, device='meta')
    assert angle_loss((cos_x, phi_x), target, 5.0).device.type == 'meta'
