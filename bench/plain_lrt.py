"""Plain-PyTorch reference networks for the throughput benchmark (no Pyro anywhere).

Two CIFAR ResNet-18s with the architecture of :func:`pyro_ssvi.models.resnet18` (3x3 stride-1
stem, no max-pool, BasicBlocks [2, 2, 2, 2] at ``64 * width * 2**i`` channels, 1x1 conv + BN
shortcuts, global average pool, linear head with a bias):

- :func:`deterministic_resnet18`: ``nn.Conv2d`` / ``nn.Linear`` point estimates.
- :func:`lrt_resnet18`: mean-field Gaussian weights computed by local reparameterization
  (SSVI eq. 4), one ``mu``, ``rho`` and bool ``mask`` per weight::

      sigma = softplus(rho)
      y     = conv(x, mu * mask) + sqrt(conv(x ** 2, sigma ** 2 * mask)) * eps,  eps ~ N(0, 1)

  and the loss ``mean CE + beta * KL(q || N(0, s_p^2)) / N`` with the closed-form KL summed over
  active entries only. This is the floor against which Pyro's overhead is measured: the same
  arithmetic as pyro_ssvi's LRT step with none of the tracing.

The masks are fixed random subsets (the benchmark does no surgery on this network): masked dense
kernels cost the same at any density, so the step time does not depend on which entries are on.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LRTConv2d", "LRTLinear", "ResNet18", "deterministic_resnet18", "lrt_resnet18", "lrt_loss", "kl_sum"]

# Same floor as pyro_ssvi.handlers.lrt: d sqrt(v)/dv is infinite at v = 0.
_VARIANCE_FLOOR = 1e-16


class _LRTMixin(nn.Module):
    """Holds ``mu``, ``rho`` (sigma = softplus(rho)) and a bool ``mask`` of one weight tensor."""

    def _init_weights(self, shape, density: float, prior_scale: float, generator: Optional[torch.Generator]) -> None:
        numel = math.prod(shape)
        num_active = numel if density >= 1.0 else max(1, round(density * numel))
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[torch.randperm(numel, generator=generator)[:num_active]] = True
        mask = mask.view(shape)
        # The paper's initialization: mu ~ N(0, 0.01^2), sigma ~ |N(6e-4, 5e-4^2)|.
        self.mu = nn.Parameter(torch.randn(shape, generator=generator) * 0.01 * mask)
        sigma = (torch.randn(shape, generator=generator) * 5e-4 + 6e-4).abs().clamp_min(1e-8)
        self.rho = nn.Parameter(sigma + torch.log(-torch.expm1(-sigma)))  # softplus^-1(sigma)
        self.register_buffer("mask", mask)
        self.register_buffer("prior_scale", torch.tensor(float(prior_scale)))

    def moments(self):
        """``(mean, variance)`` of the weight, zero at inactive entries; same shape as ``mu``."""
        return self.mu * self.mask, F.softplus(self.rho).square() * self.mask

    def kl(self) -> Tensor:
        """Closed-form ``KL(N(mu, sigma^2) || N(0, s_p^2))`` summed over active entries, nats (scalar)."""
        sp = self.prior_scale
        var_ratio = (F.softplus(self.rho) / sp).square()
        kl = 0.5 * (var_ratio + (self.mu / sp).square() - 1.0 - var_ratio.log())
        return torch.where(self.mask, kl, 0.0).sum()


class LRTConv2d(_LRTMixin):
    """Bayesian conv (no bias) computed by local reparameterization; weight [out, in, k, k]."""

    def __init__(self, in_c: int, out_c: int, k: int, stride: int = 1, padding: int = 0, *,
                 density: float = 1.0, prior_scale: float = 0.005, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.stride, self.padding = stride, padding
        self._init_weights((out_c, in_c, k, k), density, prior_scale, generator)

    def forward(self, x: Tensor) -> Tensor:
        w_mean, w_var = self.moments()
        mean = F.conv2d(x, w_mean, None, self.stride, self.padding)
        var = F.conv2d(x.square(), w_var, None, self.stride, self.padding)
        return mean + var.clamp_min(_VARIANCE_FLOOR).sqrt() * torch.randn_like(mean)


class LRTLinear(_LRTMixin):
    """Bayesian linear layer with a point-estimate bias, by local reparameterization."""

    def __init__(self, n_in: int, n_out: int, *, density: float = 1.0, prior_scale: float = 0.005,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self._init_weights((n_out, n_in), density, prior_scale, generator)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        w_mean, w_var = self.moments()
        mean = F.linear(x, w_mean, self.bias)
        var = F.linear(x.square(), w_var)
        return mean + var.clamp_min(_VARIANCE_FLOOR).sqrt() * torch.randn_like(mean)


ConvFactory = Callable[..., nn.Module]  # (in_c, out_c, k, stride, padding, dense: bool) -> module


class _Block(nn.Module):
    def __init__(self, conv: ConvFactory, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride, 1, False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1, False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(conv(in_planes, planes, 1, stride, 0, False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu_()


class ResNet18(nn.Module):
    """CIFAR ResNet-18 whose convs come from ``conv`` and whose head comes from ``linear``."""

    def __init__(self, conv: ConvFactory, linear: Callable[[int, int], nn.Module], num_classes: int = 10,
                 width: float = 1.0, in_channels: int = 3):
        super().__init__()
        planes = [max(1, int(round(64 * width * 2**i))) for i in range(4)]
        self.conv1 = conv(in_channels, planes[0], 3, 1, 1, True)  # the stem stays dense (paper)
        self.bn1 = nn.BatchNorm2d(planes[0])
        blocks: List[nn.Module] = []
        in_planes = planes[0]
        for i, p in enumerate(planes):
            for j in range(2):
                blocks.append(_Block(conv, in_planes, p, 2 if (i > 0 and j == 0) else 1))
                in_planes = p
        self.layers = nn.Sequential(*blocks)
        self.linear = linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.bn1(self.conv1(x)).relu_())
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def bayesian_layers(self) -> Iterator[_LRTMixin]:
        return (m for m in self.modules() if isinstance(m, _LRTMixin))


def deterministic_resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet18:
    """Point-estimate ResNet-18 (plain ``nn.Conv2d`` without bias, ``nn.Linear`` with bias)."""
    def conv(i, o, k, s, p, dense):
        return nn.Conv2d(i, o, k, s, p, bias=False)
    return ResNet18(conv, nn.Linear, num_classes, width)


def lrt_resnet18(num_classes: int = 10, width: float = 1.0, sparsity: float = 0.0,
                 prior_scale: float = 0.005, seed: int = 0) -> ResNet18:
    """LRT ResNet-18 with a random ``1 - sparsity`` fraction of each weight active (stem dense)."""
    gen = torch.Generator().manual_seed(seed)
    density = 1.0 - sparsity

    def conv(i, o, k, s, p, dense):
        return LRTConv2d(i, o, k, s, p, density=1.0 if dense else density, prior_scale=prior_scale, generator=gen)

    def linear(i, o):
        return LRTLinear(i, o, density=density, prior_scale=prior_scale, generator=gen)

    return ResNet18(conv, linear, num_classes, width)


def kl_sum(net: ResNet18) -> Tensor:
    """Sum of the closed-form KL of every Bayesian layer, nats (scalar)."""
    return torch.stack([m.kl() for m in net.bayesian_layers()]).sum()


def lrt_loss(net: ResNet18, x: Tensor, y: Tensor, beta: float, num_data: int) -> Tensor:
    """``mean CE + beta * KL / num_data`` (per-datapoint negative ELBO with KL weight beta), nats."""
    return F.cross_entropy(net(x), y) + kl_sum(net) * (beta / num_data)
