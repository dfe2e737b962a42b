"""Local reparameterization: output mean and std against the exact values, inactive entries ignored."""

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from pyro_ssvi import MaskedAutoNormal, models, ops
from pyro_ssvi.guides import softplus_inverse
from pyro_ssvi.handlers import lrt

NUM = 40000  # independent noise draws (one per repeated example)


def _prepare(model, x_one, sparsity=0.5):
    guide = MaskedAutoNormal(model, sparsity=sparsity, sparse_1d=True, seed=1)
    guide(x_one, torch.zeros(len(x_one), dtype=torch.long))
    with torch.no_grad():
        for name in guide.sites:
            loc, rho = guide.site_params(name)
            mask = guide.site_mask(name)
            loc.copy_(torch.randn_like(loc))
            # Deliberately non-zero loc at inactive entries: LRT must still ignore them.
            loc[~mask] = 5.0
            rho.copy_(softplus_inverse(torch.rand_like(rho) * 0.5 + 0.1))
    return guide


def _lrt_outputs(model, guide, x):
    trace = poutine.trace(guide).get_trace(x)
    with lrt(guide=guide):
        return poutine.replay(model.net, trace=trace)(x)


def _check(out, mean, std):
    # Per output: |sample mean - mean| within 5 standard errors; sample std within 5% (the std
    # of a sample std is std / sqrt(2 NUM) = 0.35% here).
    se = std / NUM**0.5
    assert ((out.mean(0) - mean).abs() <= 5 * se + 1e-6).all()
    assert torch.allclose(out.std(0), std, rtol=0.03, atol=1e-6)


def test_linear_moments_match_hand_computation():
    model = models.mlp([5, 4])
    x = torch.randn(1, 5)
    guide = _prepare(model, x)
    mask = guide.site_mask("1.weight")
    loc, _ = guide.site_params("1.weight")
    sigma = guide.scale("1.weight")
    mean = x @ (loc * mask).T
    std = ((x**2) @ (sigma**2 * mask).T).sqrt()
    out = _lrt_outputs(model, guide, x.expand(NUM, 5))
    _check(out.detach(), mean[0], std[0])


def test_conv2d_moments_match_hand_computation():
    # Flatten so the classifier sees logits [B, C] (C = 3 * 5 * 5).
    model = models.bayesianize(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Flatten()))
    x = torch.randn(1, 2, 5, 5)
    guide = _prepare(model, x, sparsity=0.6)
    name = "0.weight"
    mask = guide.site_mask(name)
    loc, _ = guide.site_params(name)
    sigma = guide.scale(name)
    mean = F.conv2d(x, loc * mask, padding=1)
    std = F.conv2d(x**2, sigma**2 * mask, padding=1).sqrt()
    out = _lrt_outputs(model, guide, x.expand(NUM, 2, 5, 5))
    _check(out.detach().flatten(1), mean.flatten(), std.flatten())


def test_ops_are_plain_torch_without_handler():
    x, w, b = torch.randn(3, 4), torch.randn(2, 4), torch.randn(2)
    assert torch.equal(ops.linear(x, w, b), F.linear(x, w, b))
    xi, k = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    assert torch.equal(ops.conv2d(xi, k, None, 2, 1), F.conv2d(xi, k, None, 2, 1))


@pytest.mark.parametrize("op", ["linear", "conv2d"])
def test_lrt_leaves_unknown_weights_alone(op):
    guide = MaskedAutoNormal(models.mlp([2, 2]), sparsity=0.0)
    guide(torch.randn(1, 2), torch.tensor([0]))
    with lrt(guide=guide):
        if op == "linear":
            x, w = torch.randn(3, 4), torch.randn(2, 4)
            assert torch.equal(ops.linear(x, w, None), F.linear(x, w))
        else:
            x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
            assert torch.equal(ops.conv2d(x, w, None, 1, 1), F.conv2d(x, w, None, 1, 1))
