"""Scale the log-density terms of latent (unobserved) sites only: the KL weight beta of SSVI eq. 3."""

from __future__ import annotations

from pyro.poutine.messenger import Messenger

__all__ = ["ScaleLatentsMessenger", "scale_latents"]


class ScaleLatentsMessenger(Messenger):
    """Multiplies ``msg["scale"]`` of every unobserved sample site by ``beta``, and of every sample
    site by ``scale``.

    Applied to both model and guide, ``beta`` multiplies ``log p(theta) - log q(theta)``
    (Trace_ELBO) or the closed-form KL (TraceMeanField_ELBO) and leaves the likelihood alone: the
    KL-annealed objective ``-E_q log p(y|theta) + beta * KL(q || p)``. ``beta`` may be changed
    between calls (SSVI's warm-up does). Unlike :func:`pyro.poutine.scale`, beta = 0 is allowed.
    ``scale`` is :func:`pyro.poutine.scale`'s factor (SSVI's ``1 / num_data``), folded in here
    because every messenger on the stack costs Python calls at every site of every step.
    """

    def __init__(self, beta: float = 1.0, scale: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.scale = scale

    def _pyro_sample(self, msg) -> None:
        factor = self.scale if msg["is_observed"] else self.scale * self.beta
        if factor != 1.0:
            msg["scale"] = msg["scale"] * factor


def scale_latents(fn=None, beta: float = 1.0, scale: float = 1.0):
    """Handler form of :class:`ScaleLatentsMessenger`."""
    msngr = ScaleLatentsMessenger(beta, scale)
    return msngr(fn) if fn is not None else msngr
