"""Restrict the model's Normal priors to the guide's active subspace."""

from __future__ import annotations

from pyro.distributions import Independent, Normal
from pyro.poutine.messenger import Messenger

from ..distributions import MaskedNormal

__all__ = ["MaskPriorMessenger", "mask_prior"]


class MaskPriorMessenger(Messenger):
    """Replaces the prior ``Normal(m, s)`` of each guide site by ``MaskedNormal(m, s, mask)``.

    SSVI's objective counts prior terms over active entries only. Without this, Trace_ELBO adds
    ``log N(0 | 0, s^2)`` for every inactive (exactly zero) weight: a constant without gradient,
    but several nats per entry in the reported loss.

    :param guide: an object with ``sites`` (names) and ``site_mask(name)``, e.g. MaskedAutoNormal.
    """

    def __init__(self, guide) -> None:
        super().__init__()
        self.guide = guide

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["name"] not in self.guide.sites:
            return
        mask = self.guide.site_mask(msg["name"])
        fn = msg["fn"]
        event_dim = 0
        if isinstance(fn, Independent):
            event_dim = fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        if type(fn) is not Normal:
            return
        indicator = self.guide.site_indicator(msg["name"]) if hasattr(self.guide, "site_indicator") else None
        masked = MaskedNormal(fn.loc, fn.scale, mask.expand(fn.batch_shape), indicator=indicator)
        msg["fn"] = masked.to_event(event_dim) if event_dim else masked


def mask_prior(fn=None, guide=None):
    """Handler form of :class:`MaskPriorMessenger`."""
    msngr = MaskPriorMessenger(guide)
    return msngr(fn) if fn is not None else msngr
