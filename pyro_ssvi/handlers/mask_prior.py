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
        self._cache: dict = {}  # site -> (prior, mask, mask version, masked prior)

    def _pyro_sample(self, msg) -> None:
        name = msg["name"]
        if msg["is_observed"] or name not in self.guide.sites:
            return
        mask, prior = self.guide.site_mask(name), msg["fn"]
        # Reused while the prior object and the mask (identity and version) are unchanged, e.g.
        # a model that builds its prior once (pyro_ssvi's layers do) between two mask updates.
        cached = self._cache.get(name)
        if cached is not None and cached[0] is prior and cached[1] is mask and cached[2] == mask._version:
            msg["fn"] = cached[3]
            return
        fn, event_dim = prior, 0
        if isinstance(fn, Independent):
            event_dim = fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        if type(fn) is not Normal:
            return
        indicator = self.guide.site_indicator(name) if hasattr(self.guide, "site_indicator") else None
        masked = MaskedNormal(fn.loc, fn.scale, mask.expand(fn.batch_shape), indicator=indicator)
        msg["fn"] = masked.to_event(event_dim) if event_dim else masked
        self._cache[name] = (prior, mask, mask._version, msg["fn"])


def mask_prior(fn=None, guide=None):
    """Handler form of :class:`MaskPriorMessenger`."""
    msngr = MaskPriorMessenger(guide)
    return msngr(fn) if fn is not None else msngr
