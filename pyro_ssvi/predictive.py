"""Posterior predictive of any Pyro model under a guide, summarized by its likelihood's family.

:func:`predict` draws the weights ``num_samples`` times and runs the model on every input per
draw. It returns the draws of the model's return value and of its observation sites (the
sites the guide does not cover, sampled since no data are given), and a summary chosen from
the likelihood's distribution:

- Categorical / Bernoulli: :class:`ClassPrediction`, class probabilities with their entropy,
  expected entropy and mutual information;
- Normal / Laplace / StudentT: :class:`RegressionPrediction`, predictive mean, epistemic /
  aleatoric / total variance, central intervals and the mixture itself (density, CDF);
- anything else (or several observation sites): :class:`Prediction`, the draws and a note
  that says why there is no summary. Never a silent softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from pyro import poutine
from pyro.distributions import Bernoulli, Categorical, Independent
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from .errors import NonFiniteOutputError, SSVIConfigError
from .handlers import UseMeansMessenger, UseValuesMessenger, lrt
from .mixture import FAMILIES, PredictiveMixture

__all__ = ["ClassPrediction", "Prediction", "RegressionPrediction", "predict"]


@dataclass
class Prediction:
    """What every prediction holds, for S weight draws and N inputs.

    ``returns``: the model's return value per draw ``[S, N, ...]`` (None if it returned no
    tensor); ``observations``: observation site -> one posterior-predictive draw per weight draw
    ``[S, N, ...]``; ``note``: why there is no summary, if there is none.
    """

    returns: Optional[Tensor]
    observations: Dict[str, Tensor]
    note: Optional[str] = None


@dataclass
class ClassPrediction(Prediction):
    """Class probabilities: ``probs`` [N, C] is the mean of ``samples`` [S, N, C] (per-draw
    probabilities). ``entropy`` [N] is H[probs] (total uncertainty, nats), ``expected_entropy``
    [N] the mean per-draw entropy (aleatoric part) and ``mutual_information`` [N] their
    difference (epistemic part)."""

    probs: Tensor = field(default=None)
    samples: Tensor = field(default=None)

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


@dataclass
class RegressionPrediction(Prediction):
    """A real-valued likelihood: ``mixture`` is the posterior predictive (see
    :class:`~pyro_ssvi.mixture.PredictiveMixture`); ``intervals`` maps each requested level to
    the central interval ``(lower [N], upper [N])``."""

    mixture: PredictiveMixture = field(default=None)
    intervals: Dict[float, Tuple[Tensor, Tensor]] = field(default_factory=dict)

    @property
    def mean(self) -> Tensor:
        return self.mixture.mean

    @property
    def epistemic_variance(self) -> Tensor:
        return self.mixture.epistemic_variance

    @property
    def aleatoric_variance(self) -> Tensor:
        return self.mixture.aleatoric_variance

    @property
    def total_variance(self) -> Tensor:
        return self.mixture.variance


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def _check(x, mode, num_samples, batch_size, local_reparameterization, guide) -> None:
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
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise SSVIConfigError(f"predict() needs a float tensor x [N, ...], got {getattr(x, 'dtype', type(x).__name__)}")
    if len(x) == 0:
        raise SSVIConfigError("predict() got an empty input x")
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


def _observation_sites(trace, guide_trace) -> List[str]:
    return [
        name for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site) and name not in guide_trace.nodes
        and not site["infer"].get("_deterministic")
    ]


def _likelihood_params(fn) -> Tuple[str, Dict[str, Tensor]]:
    """``(family, parameters broadcast to the batch and event shape)`` of an observation site."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    if isinstance(fn, Categorical):
        return "Categorical", {"probs": fn.probs}
    if isinstance(fn, Bernoulli):
        return "Bernoulli", {"probs": fn.probs}
    for family, (cls, names) in FAMILIES.items():
        if type(fn) is cls or isinstance(fn, cls):
            values = torch.broadcast_tensors(*(getattr(fn, n) for n in names))
            return family, dict(zip(names, values))
    return type(fn).__name__, {}


@torch.no_grad()
def predict(
    model,
    guide,
    x: Tensor,
    num_samples: int = 5,
    mode: str = "sample",
    batch_size: Optional[int] = 1024,
    local_reparameterization: bool = False,
    levels: Sequence[float] = (0.5, 0.9, 0.95),
) -> Prediction:
    """The posterior predictive of ``model(x)`` under ``num_samples`` draws of ``guide``.

    Each draw of the weights is shared by all N inputs (the paper's 5-draw evaluation), and
    inputs go through in chunks of ``batch_size``, so memory holds one draw's weights and one
    chunk's activations at a time. ``mode="mean"`` runs once at the guide's ``median()``: the
    posterior means of the weights and the medians of other latents (S = 1).
    ``local_reparameterization=True`` draws activations per example instead of weights.
    BatchNorm layers use their running statistics (the model is put in eval mode and restored).

    :param x: inputs [N, ...] on the model's device; the model is called as ``model(x)``.
    :param levels: central interval levels of a regression summary.
    :returns: :class:`ClassPrediction`, :class:`RegressionPrediction` or :class:`Prediction`
        (see the module docstring); tensors are float32 where they are probabilities.
    """
    _check(x, mode, num_samples, batch_size, local_reparameterization, guide)
    chunks = x.split(batch_size) if batch_size else (x,)
    guide_fn = guide
    if mode == "mean":
        num_samples = 1
        if hasattr(guide, "median"):  # weights at their means, other latents at their medians
            guide_fn = UseValuesMessenger(guide.median())(guide)
        else:
            guide_fn = UseMeansMessenger(tuple(getattr(guide, "sites", ())))(guide)
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        draws = [_one_draw(model, guide, guide_fn, chunks, local_reparameterization) for _ in range(num_samples)]
    finally:
        if was_training:
            model.train()
    return _summarize(draws, levels)


class _RefuseNonFiniteLikelihoods(Messenger):
    """Raise :class:`NonFiniteOutputError` at an observation site whose distribution has NaN or
    infinite parameters, before it is sampled (torch's samplers fail there with a native error
    that names neither the site nor the cause)."""

    def __init__(self, covered) -> None:
        super().__init__()
        self.covered = covered

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["name"] in self.covered:
            return
        for name, value in _likelihood_params(msg["fn"])[1].items():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                raise NonFiniteOutputError(
                    f"predict(): the {name} of observation site {msg['name']!r} are NaN or infinite in "
                    f"{int(bad.sum())} of {value.numel()} entries, so the model's outputs are not finite; this "
                    "usually means training diverged (a loss that grew by orders of magnitude): retrain with "
                    "lower learning rates (the training app: train.lr, train.sigma_lr) or a smaller KL weight"
                )


def _one_draw(model, guide, guide_fn, chunks, local_reparameterization) -> dict:
    """One weight draw run over every chunk: return value, observation values and likelihood."""
    guide_trace = poutine.trace(guide_fn).get_trace(chunks[0])
    run = _RefuseNonFiniteLikelihoods(frozenset(guide_trace.nodes))(poutine.replay(model, trace=guide_trace))
    if local_reparameterization:
        run = lrt(run, guide=guide)
    parts = []
    for chunk in chunks:
        trace = poutine.trace(run).get_trace(chunk)
        sites = _observation_sites(trace, guide_trace)
        returned = trace.nodes["_RETURN"]["value"]
        parts.append({
            "returns": returned if torch.is_tensor(returned) else None,
            "observations": {name: trace.nodes[name]["value"] for name in sites},
            "likelihood": _likelihood_params(trace.nodes[sites[0]]["fn"]) if len(sites) == 1 else None,
        })
    cat = _concat_chunks
    likelihoods = [p["likelihood"] for p in parts]
    family = likelihoods[0][0] if likelihoods[0] is not None else None
    return {
        "returns": cat([p["returns"] for p in parts]),
        "observations": {k: cat([p["observations"][k] for p in parts]) for k in parts[0]["observations"]},
        "family": family,
        "params": {k: cat([lk[1][k] for lk in likelihoods]) for k in likelihoods[0][1]} if family else {},
    }


def _concat_chunks(pieces):
    if any(p is None for p in pieces):
        return None
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _stack(pieces) -> Optional[Tensor]:
    return None if any(p is None for p in pieces) else torch.stack(pieces)


def _summarize(draws: List[dict], levels: Sequence[float]) -> Prediction:
    returns = _stack([d["returns"] for d in draws])
    observations = {k: torch.stack([d["observations"][k] for d in draws]) for k in draws[0]["observations"]}
    family = draws[0]["family"]
    params = {k: torch.stack([d["params"][k] for d in draws]) for k in draws[0]["params"]}
    if family == "Categorical":
        samples = params["probs"].float()
        return ClassPrediction(returns, observations, probs=samples.mean(0), samples=samples)
    if family == "Bernoulli":
        p = params["probs"].float()
        samples = torch.stack([1 - p, p], dim=-1)
        return ClassPrediction(returns, observations, probs=samples.mean(0), samples=samples)
    if family in FAMILIES:
        mixture = PredictiveMixture(family, params)
        intervals = {float(level): mixture.interval(float(level)) for level in levels}
        return RegressionPrediction(returns, observations, mixture=mixture, intervals=intervals)
    if not observations:
        note = "the model has no observation site (a sample site the guide does not cover): no summary"
    elif len(observations) > 1:
        note = f"the model has {len(observations)} observation sites {sorted(observations)}: no single-likelihood summary"
    else:
        note = (f"no summary for a {family} likelihood (summaries exist for Categorical, Bernoulli, "
                f"{', '.join(FAMILIES)}); the draws are in .observations and .returns")
    return Prediction(returns, observations, note=note)
