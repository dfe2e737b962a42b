"""Which loss estimator SSVI runs for the Pyro ELBO it is given.

- ``TraceMeanField_ELBO`` with one particle: the lean, sync-free evaluation of
  :mod:`pyro_ssvi.objective` (same value and gradients).
- JIT ELBOs (``JitTrace_ELBO``, ``JitTraceMeanField_ELBO``, ...): used as they are for gradient
  steps. A JIT trace freezes the masks and the active-entry indices as constants, so after every
  mask update :func:`reset_compiled` throws the compiled functions away (the next step traces
  anew); mask updates themselves run the eager twin (:func:`eager_twin`), since they need the
  dense gradients of the weights, which a compiled function does not expose.
- Anything else: Pyro's own ``loss_and_grads``.
"""

from __future__ import annotations

import copy

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.ops.jit import CompiledFunction
from torch import Tensor

from .errors import SSVIConfigError
from .objective import mean_field_loss, mean_field_loss_of_traces

__all__ = [
    "TracedMeanFieldLoss", "backward_mean_field_loss", "check_supported", "eager_twin", "is_lean", "reset_compiled",
]


def is_lean(elbo: ELBO) -> bool:
    """Whether SSVI may evaluate ``elbo`` with :func:`backward_mean_field_loss`."""
    return type(elbo) is TraceMeanField_ELBO and elbo.num_particles == 1


def check_supported(elbo: ELBO) -> None:
    """Refuse ELBO settings SSVI cannot honour, before anything runs."""
    if getattr(elbo, "vectorize_particles", False):
        raise SSVIConfigError(
            "SSVI does not support vectorize_particles=True: a vectorized particle dimension gives every weight "
            "draw a leading batch dimension that Linear/Conv2d layers (and local reparameterization) cannot take. "
            "Use num_particles=K without vectorize_particles."
        )


def eager_twin(elbo: ELBO) -> ELBO:
    """The non-JIT ELBO of the same family and settings (``elbo`` itself if it is not JIT)."""
    if not type(elbo).__name__.startswith("Jit"):
        return elbo
    base = TraceMeanField_ELBO if isinstance(elbo, TraceMeanField_ELBO) else Trace_ELBO
    if not isinstance(elbo, base):
        raise SSVIConfigError(
            f"SSVI supports the JIT forms of Trace_ELBO and TraceMeanField_ELBO, got {type(elbo).__name__}"
        )
    twin = base.__new__(base)
    twin.__dict__.update(copy.copy(elbo.__dict__))
    for name, value in list(vars(twin).items()):
        if isinstance(value, CompiledFunction):
            delattr(twin, name)
    return twin


def reset_compiled(elbo: ELBO) -> None:
    """Drop ``elbo``'s compiled functions (a JIT ELBO re-traces at its next call)."""
    for value in vars(elbo).values():
        if isinstance(value, CompiledFunction):
            value.compiled.clear()


class TracedMeanFieldLoss:
    """:func:`backward_mean_field_loss` with the traces made by ``traces(model, guide, *args,
    **kwargs) -> (model_trace, guide_trace)`` (SSVI's fused hot-path tracers)."""

    def __init__(self, traces) -> None:
        self.traces = traces

    def __call__(self, model, guide, *args, **kwargs) -> Tensor:
        loss = mean_field_loss_of_traces(*self.traces(model, guide, *args, **kwargs))
        loss.backward()
        return loss.detach()


def backward_mean_field_loss(model, guide, *args, **kwargs) -> Tensor:
    """``loss_and_grads`` for one-particle TraceMeanField_ELBO via
    :func:`~pyro_ssvi.objective.mean_field_loss`.

    Returns the detached loss tensor: converting it to a float (``step``) is the step's only
    host synchronization, and ``step_async`` skips even that.
    """
    loss = mean_field_loss(model, guide, *args, **kwargs)
    loss.backward()
    return loss.detach()
