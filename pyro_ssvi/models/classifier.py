"""A network of Bayesian layers as a Pyro classification model ``model(x, y=None) -> logits``."""

from __future__ import annotations

from typing import Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..errors import SSVIConfigError
from .layers import BayesianLayer

__all__ = ["BayesianClassifier"]


class BayesianClassifier(nn.Module):
    """Pyro model: weights of ``net``'s Bayesian layers ~ prior, ``y ~ Categorical(logits=net(x))``.

    Site names are the layers' module paths in ``net`` plus ``.weight`` (e.g. ``"conv1.weight"``);
    the observation site is ``"obs"`` under the plate ``"data"`` of size ``num_data``, so a
    minibatch log-likelihood is scaled by ``num_data / batch`` as for the whole data set.

    :param net: a module mapping inputs [B, ...] to logits [B, C].
    :param num_data: the training set size N (None: the batch is the whole data set).
    :param dense_sites: sites that a sparse guide keeps dense by default (e.g. the stem conv).
    """

    def __init__(self, net: nn.Module, num_data: Optional[int] = None, dense_sites: Tuple[str, ...] = ()):
        super().__init__()
        self.net = net
        self.num_data = num_data
        self.default_dense_sites = tuple(dense_sites)
        names = []
        for name, module in net.named_modules():
            if isinstance(module, BayesianLayer):
                module.site_name = f"{name}.weight"
                names.append(module.site_name)
        if not names:
            raise SSVIConfigError(
                "BayesianClassifier found no Bayesian layer in the network; use "
                "pyro_ssvi.models.bayesianize(module) to turn its Linear/Conv2d layers into sites."
            )
        unknown = set(self.default_dense_sites) - set(names)
        if unknown:
            raise SSVIConfigError(f"dense_sites {sorted(unknown)} are not sites; sites are {names}")
        self.site_names = tuple(names)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        logits = self.net(x)
        batch = logits.shape[0]
        size = self.num_data if self.num_data is not None else batch
        # An explicit subsample (rather than subsample_size) avoids a randperm(N) per step.
        with pyro.plate("data", size=size, subsample=torch.arange(batch, device=logits.device)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits
