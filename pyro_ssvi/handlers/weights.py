"""Handlers acting on the guide's weight draws: keep their gradients, or replace them by means."""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from pyro.distributions import Independent, TransformedDistribution
from pyro.poutine.messenger import Messenger
from torch import Tensor

__all__ = ["RetainWeightGradsMessenger", "UseMeansMessenger", "UseValuesMessenger", "location", "use_means"]


class RetainWeightGradsMessenger(Messenger):
    """Keeps the drawn weight tensors of the listed sites and their gradients after backward.

    Apply it to the guide. ``.values[name].grad`` is then the dense gradient of the loss with
    respect to the weight *as used by the model*, inactive positions included: the quantity
    SSVI's gradient-based addition criteria rank (section 3.3.2).
    """

    def __init__(self, sites) -> None:
        super().__init__()
        self.sites = sites
        self.values: Dict[str, Tensor] = {}

    def _pyro_post_sample(self, msg) -> None:
        if msg["name"] in self.sites and not msg["is_observed"]:
            value = msg["value"]
            if value.requires_grad:
                value.retain_grad()
            self.values[msg["name"]] = value


def location(fn) -> Tensor:
    """The mean of ``fn``; for a transformed distribution (a constrained latent's q), its base's
    location pushed through the transforms: ``transform(E[u])``, q's median (the mean itself for
    real-valued latents). Differentiable in the distribution's parameters."""
    if isinstance(fn, Independent):
        return location(fn.base_dist)
    if isinstance(fn, TransformedDistribution):
        value = location(fn.base_dist)
        for transform in fn.transforms:
            value = transform(value)
        return value
    return fn.mean


class UseMeansMessenger(Messenger):
    """Sets each listed site's value to its distribution's :func:`location` instead of drawing it.

    Apply it to the guide: the model then runs at theta = E_q[theta] (for MaskedNormal, the
    masked means; a constrained latent at the transformed mean of its unconstrained q), which is
    SSVI's "grad_mean" addition criterion and the "mean" prediction mode.

    :param sites: site names, or None for every unobserved sample site.
    """

    def __init__(self, sites: Optional[Iterable[str]] = None) -> None:
        super().__init__()
        self.sites = None if sites is None else frozenset(sites)

    def _pyro_sample(self, msg) -> None:
        wanted = self.sites is None or msg["name"] in self.sites
        if wanted and not msg["is_observed"] and msg["value"] is None:
            msg["value"] = location(msg["fn"])


class UseValuesMessenger(Messenger):
    """Sets each site named in ``values`` to that value instead of drawing it (unobserved sites
    only): e.g. ``guide.median()``, the posterior's point estimate of every latent."""

    def __init__(self, values: Dict[str, Tensor]) -> None:
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.values and not msg["is_observed"] and msg["value"] is None:
            msg["value"] = self.values[msg["name"]]


def use_means(fn=None, sites: Optional[Iterable[str]] = ()):
    """Handler form of :class:`UseMeansMessenger`."""
    msngr = UseMeansMessenger(sites)
    return msngr(fn) if fn is not None else msngr
