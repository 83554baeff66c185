"""SphereFace's angular-margin head of experiment 3 (spec §5.4): AngleLinear (m = 4) and AngleLoss.

AngleLinear maps an embedding x to the pair (cos θ·|x|, φ(θ)·|x|) per identity, where θ is the
angle between x and the identity's (unit) weight column and φ(θ) = (-1)^k cos(4θ) - 2k is the
monotonic extension of cos(4θ). The loss blends φ into the target logit with weight 1/(1+λ),
λ annealed from 1500 down to 5, so training starts as a plain softmax and ends with the margin.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

PI_ORIGINAL = 3.14159265   # the original's π in k = floor(mθ/π): θ = π gives k = 4, as there


def angle_lambda(step):
    """λ of AngleLoss after `step` calls: max(5, 1500 / (1 + 0.1·step)) (spec §5.4)."""
    return max(5.0, 1500.0 / (1 + 0.1 * step))


def _full_precision(device):
    """Autocast switched off on `device` (a no-op where autocast does not exist, e.g. `meta`)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class AngleLinear(nn.Module):
    """SphereFace's AngleLinear with m = 4; weight (in_features, out_features) as in the original,
    so a pretrained `fc6.weight` (512 × identities) copies straight in."""

    def __init__(self, in_features, out_features, m=4):
        super().__init__()
        if m != 4:
            raise ValueError(f'AngleLinear supports the margin m = 4 only (got m = {m})')
        self.in_features, self.out_features, self.m = in_features, out_features, m
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():   # the original's init; a new head overrides it (AngleHead)
            self.weight.uniform_(-1, 1)
            self.weight.copy_(self.weight.renorm(2, 1, 1e-5).mul(1e5))

    def forward(self, x):
        """x (N, in) -> (cos θ·|x|, φ·|x|), each (N, out), computed in float32 (or float64)."""
        dtype = torch.promote_types(torch.promote_types(x.dtype, self.weight.dtype), torch.float32)
        with _full_precision(x.device):   # cos θ near ±1 and the quartic need full precision
            x = x.to(dtype)
            # unit columns, formed functionally: the shared parameter is never rescaled in place
            w_unit = self.weight.to(dtype).renorm(2, 1, 1e-5).mul(1e5)   # (in, out)
            x_len = x.pow(2).sum(1).pow(0.5).view(-1, 1)                 # (N, 1)
            w_len = w_unit.pow(2).sum(0).pow(0.5).view(1, -1)            # (1, out)
            cos_theta = (x.mm(w_unit) / x_len / w_len).clamp(-1, 1)      # (N, out)
            cos_m_theta = 8 * cos_theta ** 4 - 8 * cos_theta ** 2 + 1    # cos 4θ (Chebyshev T4)
            with torch.no_grad():
                theta = cos_theta.acos()
                k = (self.m * theta / PI_ORIGINAL).floor()               # 0..4
                sign = 1 - 2 * torch.remainder(k, 2)                     # (-1)^k
            phi_theta = sign * cos_m_theta - 2 * k
            return cos_theta * x_len, phi_theta * x_len

    def extra_repr(self):
        return f'in_features={self.in_features}, out_features={self.out_features}, m={self.m}'


def angle_margin_logits(output, target, lam):
    """Logits of AngleLoss: cos θ·|x| except the target entry of each row, which becomes
    cos θ_y·|x|·(1 - 1/(1+λ)) + φ_y·|x|/(1+λ) (spec §5.4). Nothing is modified in place."""
    cos_x, phi_x = output                                 # (N, C) each
    index = target.view(-1, 1)                            # (N, 1)
    blend = 1.0 / (1 + lam)
    target_logit = cos_x.gather(1, index) * (1 - blend) + phi_x.gather(1, index) * blend
    return cos_x.scatter(1, index, target_logit)          # (N, C), a new tensor


def angle_loss(output, target, lam):
    """AngleLoss with γ = 0: mean cross-entropy of the margin logits."""
    return F.cross_entropy(angle_margin_logits(output, target, lam), target)


class AngleHead(nn.Module):
    """The face-verification head (spec §2.5, §5.3): Linear(features -> 512) embedding, then
    AngleLinear(512 -> identities); both weights N(0, std), the embedding's bias 0."""

    def __init__(self, in_features, num_classes, embedding_size=512, std=0.01):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.embed = nn.Linear(in_features, embedding_size)
        nn.init.normal_(self.embed.weight, 0.0, std)
        nn.init.zeros_(self.embed.bias)
        self.angle = AngleLinear(embedding_size, num_classes)
        nn.init.normal_(self.angle.weight, 0.0, std)   # a new head is N(0, 0.01), not the renorm init

    def embedding(self, features):
        """(N, in_features) -> (N, 512): the face descriptor compared in verification (unnormalized)."""
        return self.embed(features)

    def forward(self, features):
        return self.angle(self.embedding(features))
