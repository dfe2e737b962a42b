"""Bayesian ``Linear`` and ``Conv2d`` layers: the weight is a Pyro sample site, the bias a point estimate.

The layers are plain :class:`torch.nn.Module` s, not ``PyroModule`` s: the enclosing
:class:`~pyro_ssvi.models.network.BayesianNetwork` names their weight sites and makes their
point estimates visible to Pyro (see :mod:`pyro_ssvi.params`). The weight prior is a
:class:`~pyro_ssvi.distributions.SubspacePrior`, so the objective counts the active entries of a
sparse guide's draw only, under any Pyro inference.
"""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .. import ops
from ..distributions import SubspacePrior
from ..errors import SSVIConfigError
from ..guides.init import INIT_LOC_KEY

__all__ = ["BayesianLayer", "BayesLinear", "BayesConv2d"]


class BayesianLayer(nn.Module):
    """Holds a weight of ``weight_shape`` with prior ``N(0, prior_scale^2)`` per entry.

    The prior's parameters are buffers, so the prior follows ``.to(device)``. ``dense`` asks a
    sparse guide to keep the whole weight active; an ``initial_weight`` buffer (see
    :meth:`keep_initial_weight`) becomes the guide's initial mean.
    """

    site_name: Optional[str] = None
    dense: bool = False

    def __init__(self, weight_shape, prior_scale: float) -> None:
        super().__init__()
        if not prior_scale > 0:
            raise SSVIConfigError(f"prior_scale must be > 0, got {prior_scale}")
        self.weight_shape = torch.Size(weight_shape)
        self.register_buffer("prior_loc", torch.zeros(()))
        self.register_buffer("prior_scale", torch.tensor(float(prior_scale)))

    def weight_prior(self) -> dist.Distribution:
        """``Normal(0, prior_scale)`` over the whole weight, all dimensions as one event.

        Built once and reused while the buffers stay the same tensors (``.to()`` replaces
        them); in-place edits of the buffers show through, since the prior holds views of them.
        """
        cached = self.__dict__.get("_prior")
        buffers = self._buffers  # not self.prior_loc: nn.Module.__getattr__ is a Python call per access
        loc, scale = buffers["prior_loc"], buffers["prior_scale"]
        if cached is None or cached[0] is not loc or cached[1] is not scale:
            prior = (
                SubspacePrior(loc, scale, validate_args=False)
                .expand(self.weight_shape)
                .to_event(len(self.weight_shape))
            )
            cached = (loc, scale, prior)
            self.__dict__["_prior"] = cached
        return cached[2]

    def keep_initial_weight(self, weight: Tensor) -> None:
        """Store ``weight`` (e.g. a trained deterministic layer's) as the guide's initial mean."""
        self.register_buffer("initial_weight", weight.detach().clone().reshape(self.weight_shape))

    def sample_weight(self) -> Tensor:
        if self.site_name is None:
            raise SSVIConfigError(
                f"{type(self).__name__} has no site name. Wrap the network in "
                "pyro_ssvi.models.BayesianNetwork (or bayesianize()), which names its sites."
            )
        infer = {"ssvi_dense": True} if self.dense else {}
        initial = self._buffers.get("initial_weight")
        if initial is not None:
            infer[INIT_LOC_KEY] = initial
        return pyro.sample(self.site_name, self.weight_prior(), infer=infer)


class BayesLinear(BayesianLayer):
    """``y = x W^T + b`` with W ~ N(0, prior_scale^2) a sample site, b a point estimate.

    :param in_features: size of the input's last dimension.
    :param out_features: size of the output's last dimension.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, prior_scale: float = 1.0):
        super().__init__((out_features, in_features), prior_scale)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.sample_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, site={self.site_name}"


class BayesConv2d(BayesianLayer):
    """2-D convolution whose kernel [out, in/groups, kh, kw] is a sample site; bias a point estimate."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        prior_scale: float = 1.0,
    ):
        kernel_size = _pair(kernel_size)
        super().__init__((out_channels, in_channels // groups, *kernel_size), prior_scale)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.groups = _pair(stride), _pair(padding), _pair(dilation), groups
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return ops.conv2d(
            x, self.sample_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, site={self.site_name}"
        )
