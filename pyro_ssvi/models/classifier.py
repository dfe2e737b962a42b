"""A network of Bayesian layers as a Pyro classification model ``model(x, y=None) -> logits``."""

from __future__ import annotations

from typing import Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..errors import SSVIConfigError
from ..params import StoreEntries, announcing, strip_unconstrained_refs
from .layers import BayesianLayer

__all__ = ["BayesianClassifier"]


class BayesianClassifier(nn.Module):
    """Pyro model: weights of ``net``'s Bayesian layers ~ prior, ``y ~ Categorical(logits=net(x))``.

    Site names are the layers' module paths in ``net`` plus ``.weight`` (e.g. ``"conv1.weight"``);
    the observation site is ``"obs"`` under the plate ``"data"`` of size ``num_data``, so a
    minibatch log-likelihood is scaled by ``num_data / batch`` as for the whole data set.

    The point estimates (biases, BatchNorm) are visible to Pyro as ``pyro.module(name, net)``
    would make them, under ``<name>$$$<path>`` in the param store: ``pyro.infer.SVI`` and JIT
    ELBOs train them, ``get_param_store().save()`` writes them, also when the model is called
    from inside another function. Unlike ``pyro.module``, two live models never share tensors by
    name (see :mod:`pyro_ssvi.params`).

    :param net: a module mapping inputs [B, ...] to logits [B, C].
    :param num_data: the training set size N (None: the batch is the whole data set).
    :param dense_sites: sites that a sparse guide keeps dense (e.g. the stem conv); the layers'
        sample statements say so (``infer={"ssvi_dense": True}``), so it holds however the model
        is wrapped.
    :param name: prefix of the point estimates in Pyro's param store (default ``"model"``, made
        unique among live models).
    """

    def __init__(
        self, net: nn.Module, num_data: Optional[int] = None, dense_sites: Tuple[str, ...] = (),
        name: Optional[str] = None,
    ):
        super().__init__()
        self.net = net
        self.num_data = num_data
        names = []
        for path, module in net.named_modules():
            if isinstance(module, BayesianLayer):
                module.site_name = f"{path}.weight"
                module.dense = module.site_name in dense_sites
                names.append(module.site_name)
        if not names:
            raise SSVIConfigError(
                "BayesianClassifier found no Bayesian layer in the network; use "
                "pyro_ssvi.models.bayesianize(module) to turn its Linear/Conv2d layers into sites."
            )
        unknown = set(dense_sites) - set(names)
        if unknown:
            raise SSVIConfigError(f"dense_sites {sorted(unknown)} are not sites; sites are {names}")
        self.site_names = tuple(names)
        if name is not None and (not isinstance(name, str) or not name or "$$$" in name):
            raise SSVIConfigError(f"name must be a non-empty string without '$$$', got {name!r}")
        self._store = StoreEntries(self, name or "model", explicit=name is not None, sep="$$$")
        self._store_names: Tuple[str, ...] = ()
        self._register_point_estimates()

    def _register_point_estimates(self) -> None:
        self._store.bind(self)
        self._store.clear()
        self._store_names = tuple(
            self._store.add(f"net.{path}", p) for path, p in self.net.named_parameters() if p.requires_grad
        )

    def _announce_point_estimates(self) -> None:
        if self._store.prefix is None:  # unpickled or copied: claim a name in this process
            self._register_point_estimates()
        self._store.sync()
        if announcing():
            for name in self._store_names:
                self._store.announce(name)

    def __getstate__(self):
        # pyro.param leaves a weak reference on each parameter; it cannot be pickled.
        strip_unconstrained_refs(self.parameters())
        return super().__getstate__()

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        self._announce_point_estimates()
        logits = self.net(x)
        batch = logits.shape[0]
        size = self.num_data if self.num_data is not None else batch
        # An explicit subsample (rather than subsample_size) avoids a randperm(N) per step.
        with pyro.plate("data", size=size, subsample=torch.arange(batch, device=logits.device)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits
