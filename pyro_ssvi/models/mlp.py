"""Bayesian multi-layer perceptron."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from ..errors import SSVIConfigError
from .layers import BayesLinear
from .likelihoods import get_likelihood
from .network import BayesianNetwork

__all__ = ["mlp"]


def mlp(
    sizes: Sequence[int], prior_scale: float = 1.0, num_data: Optional[int] = None, name: Optional[str] = None,
    likelihood="categorical",
) -> BayesianNetwork:
    """MLP ``sizes[0] -> ... -> sizes[-1]`` with ReLU between layers; input is flattened.

    :param sizes: layer widths including input and output, e.g. ``[64, 256, 256, 10]``; the last
        is the number of classes (categorical) or of the likelihood's outputs (1 for bernoulli and
        normal, 2 for heteroscedastic_normal).
    :param likelihood: see :mod:`pyro_ssvi.models.likelihoods`.
    :param name: prefix of the biases in Pyro's param store (see :class:`BayesianNetwork`).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise SSVIConfigError(f"mlp sizes must be >= 2 positive widths, got {sizes}")
    layers = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(BayesLinear(n_in, n_out, prior_scale=prior_scale))
    likelihood = get_likelihood(likelihood)
    needed = likelihood.outputs(sizes[-1])
    if needed != sizes[-1]:
        raise SSVIConfigError(
            f"a {likelihood.name} likelihood needs {needed} network output(s), but sizes ends with {sizes[-1]}"
        )
    model = BayesianNetwork(nn.Sequential(*layers), num_data=num_data, name=name, likelihood=likelihood)
    model.spec = {"builder": "mlp", "sizes": sizes, "prior_scale": float(prior_scale), "num_data": num_data,
                  "likelihood": likelihood.spec()}
    return model
