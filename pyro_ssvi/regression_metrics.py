"""Metrics of a regression's posterior predictive against held-out targets.

All take a :class:`~pyro_ssvi.predictive.RegressionPrediction` (or its mixture) and targets
``y`` [N] in the model's units, and return floats:

- ``rmse`` / ``mae``: of the predictive mean;
- ``nll``: the mean negative log density of the predictive mixture, ``-log (1/S) sum_s p(y|theta_s)``;
- ``coverage_<p>`` / ``width_<p>``: fraction of targets inside the central p% interval and its
  mean width, for p = 50, 90, 95;
- ``quantile_calibration_error``: mean |observed - expected| over the quantile levels
  0.05, 0.10, ..., 0.95 of the calibration curve, where observed(q) is the fraction of targets
  with PIT ``F(y) <= q`` (:func:`quantile_calibration`);
- ``crps``: the continuous ranked probability score, ``E|Y - y| - E|Y - Y'| / 2``, from samples of
  the mixture (:func:`crps_from_samples`; exact for the ensemble, computed in O(M log M) by
  sorting). scoringrules' ``crps_ensemble`` computes the same number (a test checks it); it is
  not a dependency because it needs Python >= 3.11.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

from .mixture import PredictiveMixture

__all__ = ["crps_from_samples", "quantile_calibration", "regression_metrics"]

LEVELS = (0.5, 0.9, 0.95)


def quantile_calibration(mixture: PredictiveMixture, y: Tensor, levels: Sequence[float] = None) -> Tuple[Tensor, Tensor]:
    """``(expected, observed)``: for each quantile level q, the fraction of targets with
    ``F(y) <= q`` (the PIT below q). A calibrated predictive has observed == expected."""
    expected = torch.tensor(levels if levels is not None else [i / 20 for i in range(1, 20)], dtype=torch.float64)
    pit = mixture.cdf(y).double().reshape(-1)
    observed = (pit[None, :] <= expected[:, None]).double().mean(1)
    return expected, observed


def crps_from_samples(samples: Tensor, y: Tensor) -> Tensor:
    """Ensemble CRPS per target: ``samples`` [M, N], ``y`` [N] -> [N].

    ``mean_i |x_i - y| - (1 / M^2) sum_i (2i - M - 1) x_(i)`` with ``x_(i)`` sorted ascending,
    which equals ``mean_i |x_i - y| - mean_{i,j} |x_i - x_j| / 2``.
    """
    m = samples.shape[0]
    first = (samples - y).abs().mean(0)
    ordered = samples.sort(dim=0).values
    weights = (2 * torch.arange(1, m + 1, dtype=samples.dtype, device=samples.device) - m - 1).reshape(-1, *([1] * (samples.dim() - 1)))
    second = (weights * ordered).sum(0) / m**2
    return first - second


def regression_metrics(prediction, y: Tensor, levels: Sequence[float] = LEVELS, crps_samples: int = 2000) -> Dict[str, float]:
    """The metrics of the module docstring, for targets ``y`` [N]."""
    mixture = prediction.mixture if hasattr(prediction, "mixture") else prediction
    mean = mixture.mean
    y = y.to(mean.dtype)
    out = {
        "rmse": float((mean - y).pow(2).mean().sqrt()),
        "mae": float((mean - y).abs().mean()),
        "nll": float(-mixture.log_prob(y).mean()),
    }
    intervals = getattr(prediction, "intervals", {})
    for level in levels:
        lower, upper = intervals.get(float(level)) or mixture.interval(float(level))
        pct = round(100 * level)
        out[f"coverage_{pct}"] = float(((y >= lower) & (y <= upper)).double().mean())
        out[f"width_{pct}"] = float((upper - lower).mean())
    expected, observed = quantile_calibration(mixture, y)
    out["quantile_calibration_error"] = float((observed - expected).abs().mean())
    samples = mixture.sample(max(1, crps_samples // mixture.num_draws))
    out["crps"] = float(crps_from_samples(samples, y).mean())
    return out
