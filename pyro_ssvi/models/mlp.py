"""Bayesian multi-layer perceptron."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from ..errors import SSVIConfigError
from .classifier import BayesianClassifier
from .layers import BayesLinear

__all__ = ["mlp"]


def mlp(
    sizes: Sequence[int], prior_scale: float = 1.0, num_data: Optional[int] = None, name: Optional[str] = None
) -> BayesianClassifier:
    """MLP ``sizes[0] -> ... -> sizes[-1]`` with ReLU between layers; input is flattened.

    :param sizes: layer widths including input and output, e.g. ``[64, 256, 256, 10]``.
    :param name: prefix of the biases in Pyro's param store (see :class:`BayesianClassifier`).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise SSVIConfigError(f"mlp sizes must be >= 2 positive widths, got {sizes}")
    layers = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(BayesLinear(n_in, n_out, prior_scale=prior_scale))
    return BayesianClassifier(nn.Sequential(*layers), num_data=num_data, name=name)
