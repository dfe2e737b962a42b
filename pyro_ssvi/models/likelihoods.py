"""Observation models for a Bayesian network's output: what ``y`` given ``net(x)`` is.

Each likelihood takes the network's output ``[B, out]`` and draws (or scores) the observation
site ``"obs"`` inside the model's data plate. Its ``prediction`` is what the model returns (the
logits, or the mean); ``outputs(targets)`` says how many network outputs it needs.

- ``categorical``: ``y ~ Categorical(logits=out)``, integer labels ``[B]``;
- ``bernoulli``: ``y ~ Bernoulli(logits=out[:, 0])``, 0/1 float labels ``[B]``;
- ``normal``: ``y ~ Normal(out[:, 0], sigma)`` with a learned noise scale ``sigma ~ HalfNormal(s)``,
  a global latent site ``"sigma"`` of its own (a sparse guide fits it with a dense Normal in log
  space);
- ``heteroscedastic_normal``: ``y ~ Normal(out[:, 0], softplus(out[:, 1]) + 1e-6)``: the network
  predicts the noise scale per input (softplus rather than exp of the second output, which
  would overflow for large outputs).
"""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SSVIConfigError

__all__ = ["LIKELIHOODS", "Likelihood", "get_likelihood"]


class Likelihood:
    """Base class: ``name``, ``task`` (classification | regression) and the observation site."""

    name = ""
    task = "classification"

    def outputs(self, num_targets: int) -> int:
        """Network outputs needed for ``num_targets`` classes (classification) or 1 target."""
        return num_targets

    def check_targets(self, y: Tensor, batch: int) -> None:
        """A clear error for targets of the wrong kind (cheap: no device synchronization)."""

    def example_targets(self, batch: int, device) -> Tensor:
        """Zero targets ``[batch]`` of the kind :meth:`check_targets` takes (float here): with
        them a guide's set-up call sees ``"obs"`` observed, as in training."""
        return torch.zeros(batch, device=device)

    def latents(self, output: Tensor) -> dict:
        """Global latent sites of the likelihood (sampled before the data plate), by name."""
        return {}

    def spec(self):
        """What :func:`get_likelihood` rebuilds this likelihood from (JSON-serializable)."""
        return self.name

    def observe(self, output: Tensor, y: Optional[Tensor], latents: dict) -> Tensor:
        """Sample site ``"obs"`` (inside the data plate); returns the model's return value."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _Classes(Likelihood):
    def example_targets(self, batch: int, device) -> Tensor:
        return torch.zeros(batch, dtype=torch.long, device=device)

    def check_targets(self, y: Tensor, batch: int) -> None:
        if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise SSVIConfigError(
                f"labels y must be an integer tensor of class indices, got "
                f"{y.dtype if torch.is_tensor(y) else type(y).__name__}: pass y.long()"
            )
        if y.shape != (batch,):
            raise SSVIConfigError(f"x holds {batch} examples but y has shape {tuple(y.shape)}; give one label per example")


def full_precision(output: Tensor) -> Tensor:
    """``output`` in float32 if it is half precision (under bf16 autocast the network's output
    is bf16, and the likelihood's logsumexp / squared error would be rounded to 3 digits)."""
    return output.float() if output.dtype in (torch.float16, torch.bfloat16) else output


class CategoricalLikelihood(_Classes):
    name = "categorical"

    def observe(self, output: Tensor, y: Optional[Tensor], latents: dict) -> Tensor:
        output = full_precision(output)
        pyro.sample("obs", dist.Categorical(logits=output), obs=y)
        return output


class BernoulliLikelihood(Likelihood):
    name = "bernoulli"

    def outputs(self, num_targets: int) -> int:
        return 1

    def check_targets(self, y: Tensor, batch: int) -> None:
        if not torch.is_tensor(y) or not y.dtype.is_floating_point or y.shape != (batch,):
            raise SSVIConfigError(
                f"bernoulli targets y must be a float tensor of 0/1 of shape ({batch},), got "
                f"{y.dtype if torch.is_tensor(y) else type(y).__name__} {tuple(getattr(y, 'shape', ()))}: pass y.float()"
            )

    def observe(self, output: Tensor, y: Optional[Tensor], latents: dict) -> Tensor:
        logits = full_precision(output).squeeze(-1)
        pyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)
        return logits


class _Real(Likelihood):
    task = "regression"

    def check_targets(self, y: Tensor, batch: int) -> None:
        if not torch.is_tensor(y) or not y.dtype.is_floating_point or y.shape != (batch,):
            raise SSVIConfigError(
                f"regression targets y must be a float tensor of shape ({batch},), got "
                f"{y.dtype if torch.is_tensor(y) else type(y).__name__} {tuple(getattr(y, 'shape', ()))}"
            )


class NormalLikelihood(_Real):
    """Homoscedastic: one noise scale for all inputs, a latent with prior ``HalfNormal(noise_prior_scale)``."""

    name = "normal"

    def __init__(self, noise_prior_scale: float = 1.0) -> None:
        if not noise_prior_scale > 0:
            raise SSVIConfigError(f"noise_prior_scale must be > 0, got {noise_prior_scale!r}")
        self.noise_prior_scale = float(noise_prior_scale)

    def outputs(self, num_targets: int) -> int:
        return 1

    def latents(self, output: Tensor) -> dict:
        scale = torch.tensor(self.noise_prior_scale, dtype=full_precision(output).dtype, device=output.device)
        return {"sigma": pyro.sample("sigma", dist.HalfNormal(scale))}

    def observe(self, output: Tensor, y: Optional[Tensor], latents: dict) -> Tensor:
        mean = full_precision(output).squeeze(-1)
        pyro.sample("obs", dist.Normal(mean, latents["sigma"]), obs=y)
        return mean

    def spec(self):
        return {"name": self.name, "noise_prior_scale": self.noise_prior_scale}

    def __repr__(self) -> str:
        return f"NormalLikelihood(noise_prior_scale={self.noise_prior_scale})"


class HeteroscedasticNormalLikelihood(_Real):
    name = "heteroscedastic_normal"

    def outputs(self, num_targets: int) -> int:
        return 2

    def observe(self, output: Tensor, y: Optional[Tensor], latents: dict) -> Tensor:
        output = full_precision(output)
        mean, raw_scale = output[..., 0], output[..., 1]
        pyro.sample("obs", dist.Normal(mean, F.softplus(raw_scale) + 1e-6), obs=y)
        return mean


LIKELIHOODS = {
    cls.name: cls for cls in (CategoricalLikelihood, BernoulliLikelihood, NormalLikelihood, HeteroscedasticNormalLikelihood)
}


def get_likelihood(spec) -> Likelihood:
    """A :class:`Likelihood` from itself, its name (``categorical``, ``bernoulli``, ``normal``,
    ``heteroscedastic_normal``) or its :meth:`Likelihood.spec`."""
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, str) and spec in LIKELIHOODS:
        return LIKELIHOODS[spec]()
    if isinstance(spec, dict) and spec.get("name") in LIKELIHOODS:
        return LIKELIHOODS[spec["name"]](**{k: v for k, v in spec.items() if k != "name"})
    raise SSVIConfigError(f"likelihood={spec!r} is not allowed; expected one of: {', '.join(LIKELIHOODS)}")
