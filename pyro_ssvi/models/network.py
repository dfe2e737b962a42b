"""A network of Bayesian layers as a Pyro model ``model(x, y=None)``, with a likelihood of choice."""

from __future__ import annotations

from typing import Optional, Tuple

import pyro
import torch
from torch import Tensor, nn

from ..errors import SSVIConfigError
from ..params import StoreEntries, announcing, strip_unconstrained_refs
from .layers import BayesianLayer
from .likelihoods import CategoricalLikelihood, get_likelihood

__all__ = ["BayesianClassifier", "BayesianNetwork", "from_spec"]


class BayesianNetwork(nn.Module):
    """Pyro model: weights of ``net``'s Bayesian layers ~ prior, ``y ~ likelihood(net(x))``.

    The likelihood (:mod:`pyro_ssvi.models.likelihoods`) decides what ``y`` is and what the
    model returns: ``categorical`` (the default; returns the logits), ``bernoulli``, ``normal``
    (a learned noise scale, the latent site ``"sigma"``; returns the mean) or
    ``heteroscedastic_normal``.

    Site names are the layers' module paths in ``net`` plus ``.weight`` (e.g. ``"conv1.weight"``);
    the observation site is ``"obs"`` under the plate ``"data"`` of size ``num_data``, so a
    minibatch log-likelihood is scaled by ``num_data / batch`` as for the whole data set.

    The point estimates (biases, BatchNorm) are visible to Pyro as ``pyro.module(name, net)``
    would make them, under ``<name>$$$<path>`` in the param store: ``pyro.infer.SVI`` and JIT
    ELBOs train them, ``get_param_store().save()`` writes them, also when the model is called
    from inside another function. Unlike ``pyro.module``, two live models never share tensors by
    name (see :mod:`pyro_ssvi.params`).

    :param net: a module mapping inputs [B, ...] to outputs [B, k] (logits, or the likelihood's
        parameters).
    :param likelihood: a :class:`~pyro_ssvi.models.likelihoods.Likelihood` or its name.
    :param num_data: the training set size N (None: the batch is the whole data set).
    :param dense_sites: sites that a sparse guide keeps dense (e.g. the stem conv); the layers'
        sample statements say so (``infer={"ssvi_dense": True}``), so it holds however the model
        is wrapped.
    :param name: prefix of the point estimates in Pyro's param store (default ``"model"``, made
        unique among live models).
    """

    def __init__(
        self, net: nn.Module, num_data: Optional[int] = None, dense_sites: Tuple[str, ...] = (),
        name: Optional[str] = None, likelihood="categorical",
    ):
        super().__init__()
        self.net = net
        self.num_data = num_data
        self.likelihood = get_likelihood(likelihood)
        names = []
        for path, module in net.named_modules():
            if isinstance(module, BayesianLayer):
                module.site_name = f"{path}.weight"
                module.dense = module.site_name in dense_sites
                names.append(module.site_name)
        if not names:
            raise SSVIConfigError(
                "BayesianNetwork found no Bayesian layer in the network; use "
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

    _inputs_checked = False
    #: How the model was built (set by :func:`~pyro_ssvi.models.mlp` and
    #: :func:`~pyro_ssvi.models.resnet18`; None for ``bayesianize``): :func:`from_spec` rebuilds it.
    spec: Optional[dict] = None

    def _check_inputs(self, x, y) -> None:
        """Cheap checks of every call (no device synchronization)."""
        if not torch.is_tensor(x):
            raise SSVIConfigError(
                f"the model needs inputs x (a tensor [batch, ...]), got {type(x).__name__}: call it as model(x, y), "
                "svi.step(x, y) or predict(model, guide, x)"
            )
        dtype = next((p.dtype for p in self.parameters()), None) or next(iter(self.buffers())).dtype
        if x.dtype != dtype:
            raise SSVIConfigError(
                f"inputs x are {x.dtype} but the model computes in {dtype}: pass x.to({dtype}) (or convert the "
                "model and guide with .to(dtype))"
            )
        if y is not None:
            self.likelihood.check_targets(y, x.shape[0])

    def _first_forward(self, x: Tensor) -> Tensor:
        try:
            return self.net(x)
        except RuntimeError as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not any(word in message for word in ("shape", "size", "Expected", "channels")):
                raise
            raise SSVIConfigError(
                f"inputs x of shape {tuple(x.shape)} do not fit the network ({message}); the model was built for "
                f"inputs {self.input_description()}"
            ) from None

    def _check_labels(self, y, num_classes: int) -> None:
        """Once: labels must index the network's outputs (reads y's range from the device)."""
        if y is None or y.numel() == 0 or not isinstance(self.likelihood, CategoricalLikelihood):
            return
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            raise SSVIConfigError(
                f"labels y range over [{low}, {high}] but the network has {num_classes} outputs: labels must be "
                f"class indices in [0, {num_classes - 1}]"
            )

    def input_description(self) -> str:
        """What the first layer takes, in words (for error messages)."""
        from .layers import BayesConv2d, BayesLinear

        for module in self.net.modules():
            if isinstance(module, BayesLinear):
                return f"with {module.in_features} features per example (after flattening)"
            if isinstance(module, BayesConv2d):
                return f"[batch, {module.in_channels}, height, width]"
        return "of the shape its first layer takes"

    def __getstate__(self):
        # pyro.param leaves a weak reference on each parameter; it cannot be pickled.
        strip_unconstrained_refs(self.parameters())
        return super().__getstate__()

    def forward(self, x: Optional[Tensor] = None, y: Optional[Tensor] = None) -> Tensor:
        self._announce_point_estimates()
        self._check_inputs(x, y)
        if self._inputs_checked:
            logits = self.net(x)
        else:  # the first call: a shape error of the network becomes one that names the inputs
            logits = self._first_forward(x)
            self._check_labels(y, logits.shape[-1])
            self._inputs_checked = True
        batch = logits.shape[0]
        size = self.num_data if self.num_data is not None else batch
        latents = self.likelihood.latents(logits)
        # An explicit subsample (rather than subsample_size) avoids a randperm(N) per step.
        with pyro.plate("data", size=size, subsample=torch.arange(batch, device=logits.device)):
            return self.likelihood.observe(logits, y, latents)


#: The categorical case, by its earlier name.
BayesianClassifier = BayesianNetwork


def from_spec(spec: dict) -> BayesianNetwork:
    """Rebuild a model from its :attr:`BayesianNetwork.spec` (a fresh, untrained one)."""
    from .mlp import mlp
    from .resnet import resnet18

    if not isinstance(spec, dict) or spec.get("builder") not in ("mlp", "resnet18"):
        raise SSVIConfigError(
            f"cannot rebuild a model from {spec!r}: only models.mlp and models.resnet18 record how they were built; "
            "pass the model (the same architecture) yourself"
        )
    kwargs = {k: v for k, v in spec.items() if k != "builder"}
    return (mlp if spec["builder"] == "mlp" else resnet18)(**kwargs)
