"""The posterior predictive of a regression as an equal-weight mixture over weight draws.

``S`` posterior draws of the weights give ``S`` predictive distributions per input,
``p(y | x, theta_s)``, all of one family (Normal, Laplace or StudentT); the posterior
predictive is their average. :class:`PredictiveMixture` holds the family's parameters stacked
over draws ``[S, N, ...]`` and answers what metrics need: density, CDF (the PIT), quantiles,
moments and samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Type

import torch
from pyro.distributions import Laplace, Normal, StudentT
from torch import Tensor

__all__ = ["FAMILIES", "PredictiveMixture"]

#: Likelihood families with a regression summary: name -> (class, parameter names).
FAMILIES: Dict[str, tuple] = {
    "Normal": (Normal, ("loc", "scale")),
    "Laplace": (Laplace, ("loc", "scale")),
    "StudentT": (StudentT, ("df", "loc", "scale")),
}


@dataclass
class PredictiveMixture:
    """``(1/S) sum_s family(params_s)``; every tensor in ``params`` is ``[S, N, ...]``."""

    family: str
    params: Dict[str, Tensor]

    def affine(self, scale: float, shift: float) -> "PredictiveMixture":
        """The mixture of ``scale * y + shift`` (e.g. back from standardized units): locations
        and scales map, StudentT's degrees of freedom stay."""
        params = dict(self.params)
        params["loc"] = params["loc"] * scale + shift
        params["scale"] = params["scale"] * abs(scale)
        return PredictiveMixture(self.family, params)

    def draws(self):
        """The ``S`` component distributions, batched: batch shape ``[S, N, ...]``."""
        cls: Type = FAMILIES[self.family][0]
        return cls(**self.params, validate_args=False)

    @property
    def num_draws(self) -> int:
        return next(iter(self.params.values())).shape[0]

    @property
    def component_means(self) -> Tensor:
        """``E[y | theta_s]``, ``[S, N, ...]`` (nan for StudentT with df <= 1)."""
        return self.draws().mean

    @property
    def component_variances(self) -> Tensor:
        """``Var[y | theta_s]``, ``[S, N, ...]`` (inf for StudentT with df <= 2)."""
        return self.draws().variance

    @property
    def mean(self) -> Tensor:
        return self.component_means.mean(0)

    @property
    def epistemic_variance(self) -> Tensor:
        """Variance of the draws' means (the weights' uncertainty), ``[N, ...]``."""
        return self.component_means.var(0, unbiased=False)

    @property
    def aleatoric_variance(self) -> Tensor:
        """Mean of the draws' variances (the noise the likelihood expects), ``[N, ...]``."""
        return self.component_variances.mean(0)

    @property
    def variance(self) -> Tensor:
        """Total predictive variance = epistemic + aleatoric (law of total variance)."""
        return self.epistemic_variance + self.aleatoric_variance

    def log_prob(self, y: Tensor) -> Tensor:
        """``log (1/S) sum_s p(y | theta_s)``, ``[N, ...]`` (nats)."""
        return torch.logsumexp(self.draws().log_prob(y), dim=0) - math.log(self.num_draws)

    def cdf(self, y: Tensor, num_samples: int = 4000) -> Tensor:
        """``P(Y <= y)`` under the mixture, ``[N, ...]`` (the probability integral transform).
        StudentT has no CDF in torch: it is estimated from ``num_samples`` draws."""
        components = self.draws()
        if self.family == "StudentT":
            samples = self.sample(max(1, num_samples // self.num_draws))
            return (samples <= y).to(y.dtype).mean(0)
        return components.cdf(y.expand_as(components.loc)).mean(0)

    def quantile(self, q: float, iterations: int = 60) -> Tensor:
        """The ``q``-quantile of the mixture, ``[N, ...]``: by bisection on its CDF (StudentT:
        from 4000 samples)."""
        if self.family == "StudentT":
            return self.sample(max(1, 4000 // self.num_draws)).quantile(q, dim=0)
        spread = self.variance.clamp(max=1e12).sqrt().nan_to_num(1e6) * 50 + 1
        low, high = self.mean - spread, self.mean + spread
        for _ in range(iterations):
            mid = (low + high) / 2
            below = self.cdf(mid) < q
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        return (low + high) / 2

    def interval(self, level: float):
        """The central ``level`` predictive interval: ``(lower, upper)``, each ``[N, ...]``."""
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def sample(self, per_draw: int = 1) -> Tensor:
        """``per_draw`` samples of ``y`` from each draw's distribution: ``[per_draw * S, N, ...]``."""
        samples = self.draws().sample((per_draw,))
        return samples.reshape(-1, *samples.shape[2:])
