"""Restrict a model's Normal priors to the guide's active subspace."""

from __future__ import annotations

from pyro.distributions import Independent, Normal
from pyro.poutine.messenger import Messenger

from ..distributions import SubspacePrior

__all__ = ["MaskPriorMessenger", "mask_prior"]


class MaskPriorMessenger(Messenger):
    """Replaces the plain ``Normal(m, s)`` prior of each of the guide's weight sites by
    :class:`~pyro_ssvi.distributions.SubspacePrior` ``(m, s)``.

    SSVI's objective counts prior terms over active entries only. A model whose priors are plain
    Normals (a ``PyroSample``, a hand-written ``pyro.sample``) would otherwise add
    ``log N(0 | m, s)`` for every inactive (exactly zero) weight under ``Trace_ELBO`` or a
    ``log_prob_sum``; with a learned prior scale that term drags the scale to 0. SSVI applies this
    handler itself; with ``pyro.infer.SVI`` write ``SVI(mask_prior(model, guide=guide), guide, ...)``.
    pyro_ssvi's own layers already use a ``SubspacePrior`` and need nothing.

    :param guide: an object with ``sites`` (the weight site names), e.g. MaskedAutoNormal.
    """

    def __init__(self, guide) -> None:
        super().__init__()
        self.guide = guide
        self._cache: dict = {}  # site -> (prior, masked prior)

    def _pyro_sample(self, msg) -> None:
        name = msg["name"]
        if msg["is_observed"] or name not in self.guide.sites:
            return
        prior = msg["fn"]
        # Reused while the model hands over the same prior object (pyro_ssvi's layers build theirs
        # once); the mask is read from the draw at evaluation time, so surgery needs no rebuild.
        cached = self._cache.get(name)
        if cached is not None and cached[0] is prior:
            msg["fn"] = cached[1]
            return
        fn, event_dim = prior, 0
        if isinstance(fn, Independent):
            event_dim = fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        if type(fn) is not Normal:
            return  # a SubspacePrior already, or not a plain Normal
        masked = SubspacePrior(fn.loc, fn.scale, validate_args=False)
        msg["fn"] = masked.to_event(event_dim) if event_dim else masked
        self._cache[name] = (prior, msg["fn"])


def mask_prior(fn=None, guide=None):
    """Handler form of :class:`MaskPriorMessenger`: ``mask_prior(model, guide=guide)``."""
    msngr = MaskPriorMessenger(guide)
    return msngr(fn) if fn is not None else msngr
