"""Scale the log-density terms of latent (unobserved) sites only: the KL weight beta of SSVI eq. 3."""

from __future__ import annotations

from typing import Union

from pyro.poutine.messenger import Messenger
from torch import Tensor

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

    def __init__(self, beta: Union[float, Tensor] = 1.0, scale: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.scale = scale
        self._latent_factor: Union[float, Tensor] = scale * beta

    def __enter__(self):
        self.refresh()
        return super().__enter__()

    def refresh(self) -> None:
        """Fix the factor of this run's latent sites (also called by a fused messenger that
        applies this one). Once per run: every latent site then carries the same factor object
        (SSVI's flat KL needs one common scale), and a tensor beta (CUDA graphs) is read by one kernel."""
        self._latent_factor = self.scale * self.beta

    def _pyro_sample(self, msg) -> None:
        factor = self.scale if msg["is_observed"] else self._latent_factor
        if isinstance(factor, float) and factor == 1.0:
            return
        current = msg["scale"]
        msg["scale"] = factor if isinstance(current, float) and current == 1.0 else current * factor


def scale_latents(fn=None, beta: float = 1.0, scale: float = 1.0):
    """Handler form of :class:`ScaleLatentsMessenger`."""
    msngr = ScaleLatentsMessenger(beta, scale)
    return msngr(fn) if fn is not None else msngr
