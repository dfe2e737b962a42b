"""Turn the ``Linear`` / ``Conv2d`` layers of a user's own network into Bayesian sample sites."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..errors import SSVIConfigError
from .network import BayesianNetwork
from .layers import BayesConv2d, BayesLinear

__all__ = ["bayesianize"]


def _convert(layer: nn.Module, prior_scale: float, keep_weights: bool) -> Optional[nn.Module]:
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
    if keep_weights:
        new.keep_initial_weight(layer.weight)
    return new.to(layer.weight.device)


def _replace_in_place(module: nn.Module, prior_scale: float, keep_weights: bool) -> None:
    for name, child in module.named_children():
        new = _convert(child, prior_scale, keep_weights)
        if new is not None:
            setattr(module, name, new)
        else:
            _replace_in_place(child, prior_scale, keep_weights)


def bayesianize(
    module: nn.Module,
    prior_scale: float = 1.0,
    num_data: Optional[int] = None,
    dense_sites: Tuple[str, ...] = (),
    keep_weights: bool = False,
    name: Optional[str] = None,
    likelihood="categorical",
) -> BayesianNetwork:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` of ``module`` (in place) by a Bayesian layer.

    Their weights become ``N(0, prior_scale^2)`` sample sites named by module path; biases stay
    point estimates (their current values are kept). Convolutions with string padding or a
    non-zero padding mode are left deterministic. Returns ``module`` wrapped as a Pyro
    model ``model(x, y=None)`` (``name``: its prefix in Pyro's param store, see
    :class:`BayesianNetwork`). ``likelihood`` says what the network's output means
    (:mod:`pyro_ssvi.models.likelihoods`: categorical, bernoulli, normal, heteroscedastic_normal).

    ``keep_weights=True`` starts the posterior from the network as it is (e.g. trained): a
    MaskedAutoNormal takes each weight as its initial mean, with the largest-magnitude entries
    as the initial active set (whatever its ``init_loc_fn``).

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> model = bayesianize(net, prior_scale=0.1)
    >>> model.site_names
    ('1.weight', '3.weight')
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        module = nn.Sequential(module)
    elif isinstance(module, BayesianNetwork):
        raise SSVIConfigError("bayesianize() got a model that is already Bayesian; pass the plain nn.Module")
    _replace_in_place(module, prior_scale, keep_weights)
    return BayesianNetwork(module, num_data=num_data, dense_sites=dense_sites, name=name, likelihood=likelihood)
