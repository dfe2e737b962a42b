"""Posterior predictive of a Bayesian classifier under a guide, with uncertainty decompositions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from pyro import poutine
from torch import Tensor

from .errors import SSVIConfigError
from .handlers import UseMeansMessenger, lrt

__all__ = ["PredictiveResult", "predict"]


@dataclass
class PredictiveResult:
    """Predictions for N inputs from S posterior draws over C classes.

    ``probs`` [N, C] is the mean of ``samples`` [S, N, C] (per-draw softmax). ``entropy`` [N]
    is H[probs] (total uncertainty, nats), ``expected_entropy`` [N] the mean per-draw entropy
    (aleatoric part) and ``mutual_information`` [N] their difference (epistemic part).
    """

    probs: Tensor
    samples: Tensor

    @property
    def entropy(self) -> Tensor:
        return _entropy(self.probs)

    @property
    def expected_entropy(self) -> Tensor:
        return _entropy(self.samples).mean(0)

    @property
    def mutual_information(self) -> Tensor:
        # Clamp: the difference can be a rounding error below zero when draws agree.
        return (self.entropy - self.expected_entropy).clamp_min(0.0)


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


@torch.no_grad()
def predict(
    model,
    guide,
    x: Tensor,
    num_samples: int = 5,
    mode: str = "sample",
    batch_size: Optional[int] = 1024,
    local_reparameterization: bool = False,
) -> PredictiveResult:
    """Softmax predictions of ``model(x) -> logits`` under ``num_samples`` draws of ``guide``.

    Each draw of the weights is shared by all N inputs (the paper's 5-draw evaluation), and
    inputs go through in chunks of ``batch_size``, so memory holds one draw's weights and one
    chunk's activations at a time. ``mode="mean"`` runs once at the posterior means (S = 1).
    ``local_reparameterization=True`` draws activations per example instead of weights.
    BatchNorm layers use their running statistics (the model is put in eval mode and restored).

    :param x: inputs [N, ...] on the model's device.
    :returns: :class:`PredictiveResult` with ``probs`` [N, C] and ``samples`` [S, N, C] (float32).
    """
    if mode not in ("sample", "mean"):
        raise SSVIConfigError(f"mode must be 'sample' or 'mean', got {mode!r}")
    if mode == "sample" and (not isinstance(num_samples, int) or num_samples < 1):
        raise SSVIConfigError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if mode == "mean" and local_reparameterization:
        raise SSVIConfigError(
            "mode='mean' uses the posterior means and draws nothing; local_reparameterization=True "
            "would add per-example noise. Use one or the other."
        )
    if batch_size is not None and batch_size < 1:
        raise SSVIConfigError(f"batch_size must be >= 1 or None, got {batch_size!r}")
    if len(x) == 0:
        raise SSVIConfigError("predict() got an empty input x")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise SSVIConfigError(f"predict() needs a float tensor x [N, ...], got {getattr(x, 'dtype', type(x).__name__)}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise SSVIConfigError(
            f"predict() got {int((~finite).sum())} NaN or infinite input values (of {x.numel()}); clean or drop "
            "those examples first"
        )
    if getattr(guide, "prototype_trace", True) is None:
        raise SSVIConfigError(
            "predict() needs a guide that is set up: train it first, or call guide(x, y) once with observations"
        )
    chunks = x.split(batch_size) if batch_size else (x,)
    guide_fn = guide
    if mode == "mean":
        num_samples = 1
        guide_fn = UseMeansMessenger(tuple(guide.sites) if hasattr(guide, "sites") else ())(guide)
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        draws = []
        for _ in range(num_samples):
            guide_trace = poutine.trace(guide_fn).get_trace(chunks[0])
            run = poutine.replay(model, trace=guide_trace)
            if local_reparameterization:
                run = lrt(run, guide=guide)
            probs = [run(chunk).float().softmax(-1) for chunk in chunks]
            draws.append(torch.cat(probs))
    finally:
        if was_training:
            model.train()
    samples = torch.stack(draws)
    return PredictiveResult(probs=samples.mean(0), samples=samples)
