"""Scale the log-density terms of latent (unobserved) sites only: the KL weight beta of SSVI eq. 3."""

from __future__ import annotations

from pyro.poutine.messenger import Messenger

__all__ = ["ScaleLatentsMessenger", "scale_latents"]


class ScaleLatentsMessenger(Messenger):
    """Multiplies ``msg["scale"]`` of every unobserved sample site by ``beta``.

    Applied to both model and guide, this multiplies ``log p(theta) - log q(theta)`` (Trace_ELBO)
    or the closed-form KL (TraceMeanField_ELBO) by ``beta`` and leaves the likelihood alone: the
    KL-annealed objective ``-E_q log p(y|theta) + beta * KL(q || p)``. ``beta`` may be changed
    between calls (SSVI's warm-up does). Unlike :func:`pyro.poutine.scale`, beta = 0 is allowed.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def _pyro_sample(self, msg) -> None:
        if not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


def scale_latents(fn=None, beta: float = 1.0):
    """Handler form of :class:`ScaleLatentsMessenger`."""
    msngr = ScaleLatentsMessenger(beta)
    return msngr(fn) if fn is not None else msngr
