"""Turn the ``Linear`` / ``Conv2d`` layers of a user's own network into Bayesian sample sites."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .classifier import BayesianClassifier
from .layers import BayesConv2d, BayesLinear

__all__ = ["bayesianize"]


def _convert(layer: nn.Module, prior_scale: float) -> Optional[nn.Module]:
    if type(layer) is nn.Linear:
        new = BayesLinear(layer.in_features, layer.out_features, layer.bias is not None, prior_scale)
    elif type(layer) is nn.Conv2d:
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return None  # keep as a deterministic layer; documented below
        new = BayesConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups, layer.bias is not None, prior_scale,
        )
    else:
        return None
    if layer.bias is not None:
        with torch.no_grad():
            new.bias.copy_(layer.bias)
    return new.to(layer.weight.device)


def _replace_in_place(module: nn.Module, prior_scale: float) -> None:
    for name, child in module.named_children():
        new = _convert(child, prior_scale)
        if new is not None:
            setattr(module, name, new)
        else:
            _replace_in_place(child, prior_scale)


def bayesianize(
    module: nn.Module,
    prior_scale: float = 1.0,
    num_data: Optional[int] = None,
    dense_sites: Tuple[str, ...] = (),
) -> BayesianClassifier:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` of ``module`` (in place) by a Bayesian layer.

    Their weights become ``N(0, prior_scale^2)`` sample sites named by module path; biases stay
    point estimates (their current values are kept). Convolutions with string padding or a
    non-zero padding mode are left deterministic. Returns ``module`` wrapped as a Pyro
    classification model ``model(x, y=None) -> logits``.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> model = bayesianize(net, prior_scale=0.1)
    >>> model.site_names
    ('1.weight', '3.weight')
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        module = nn.Sequential(module)
    _replace_in_place(module, prior_scale)
    return BayesianClassifier(module, num_data=num_data, dense_sites=dense_sites)
