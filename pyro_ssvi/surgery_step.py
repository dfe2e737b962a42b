"""SSVI's mask-update step: addition scores from dense weight gradients, then drop/grow every sparse site.

Addition criteria (SSVI sec. 3.3.2), scores of shape ``[*site shape]`` in loss units per weight unit;
``g(theta, x)`` is the gradient of the loss with respect to a sparse site's weight *as the model
used it* (dense: inactive entries included):

- ``grad``: ``|g(theta, x)|`` at one draw ``theta ~ q`` on the update step's minibatch;
- ``grad_mean``: ``|g(E_q theta, x)|``, every latent of the guide at its mean (weight sites, dense
  ones included; other latents at the transformed mean of their unconstrained q);
- ``grad_mc``: the paper's multi-step criterion ``1/K sum_k |g(theta_k, x_k)|``;
- ``grad_mc_mean``: ``|1/K sum_k g(theta_k, x_k)|``, the absolute Monte Carlo *mean* gradient
  (what pyro_ssvi called ``grad_mc`` before; gradients of opposite sign cancel).

With ``window="batch"`` the K pairs are K draws on the update step's minibatch. With
``window="recent"`` they are the K most recent minibatches, one draw each: the K-1 ordinary steps
before an update run at sampled weights (not local reparameterization, so they cost a weight
draw and have noisier gradients) and record their gradient, which does not change their
parameter update, and the update step adds its own. The window never spans an update
(``K <= update_interval``); after a resume inside a window the update averages what it has.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .criteria import RemovalCriterion, check_addition_criterion
from .errors import SSVIConfigError
from .handlers import RetainWeightGradsMessenger, UseMeansMessenger
from .schedule import SurgerySchedule
from .surgery import StateLookup, update_site
from .variant import Variant

__all__ = ["ADDITION_WINDOWS", "AdditionScorer", "apply_surgery", "drop_count"]

ADDITION_WINDOWS = ("batch", "recent")
_MC = ("grad_mc", "grad_mc_mean")


class AdditionScorer:
    """Accumulates the addition scores of the sparse sites over the draws of one mask update.

    :param criterion: a name of :data:`~pyro_ssvi.criteria.ADDITION_CRITERIA`.
    :param samples: K, the number of ``(theta, x)`` pairs of ``grad_mc`` / ``grad_mc_mean``
        (ignored by the others, which use one).
    :param window: ``"batch"`` or ``"recent"`` (see the module docstring).
    :param update_interval: steps between updates (``"recent"`` needs ``samples <=`` it).

    ``reduce``: None, or a function that averages a dict of tensors over data-parallel ranks in
    place (:meth:`pyro_ssvi.distributed.DistributedSync.average_`); it is applied to each draw's
    signed gradients before their magnitude is taken, so that the score is that of the global
    batch.
    """

    def __init__(self, criterion: str, samples: int, window: str = "batch", update_interval: int = 1) -> None:
        self.criterion = check_addition_criterion(criterion)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise SSVIConfigError(f"addition_samples must be an int >= 1, got {samples!r}")
        if window not in ADDITION_WINDOWS:
            raise SSVIConfigError(
                f"addition_window must be one of {', '.join(ADDITION_WINDOWS)}, got {window!r}"
            )
        if window == "recent" and self.criterion not in _MC:
            raise SSVIConfigError(
                f"addition_window='recent' averages over minibatches and applies to {' and '.join(_MC)} only; "
                f"addition is {criterion!r}: use addition_window='batch' or a Monte Carlo criterion"
            )
        if window == "recent" and samples > update_interval:
            raise SSVIConfigError(
                f"addition_window='recent' takes the K = addition_samples most recent minibatches before an update, "
                f"so K must be <= update_interval; got K={samples}, update_interval={update_interval}"
            )
        self.samples = samples if self.criterion in _MC else 1
        self.window = window
        self.retain = RetainWeightGradsMessenger(())
        self.reduce: Optional[Callable[[Dict[str, Tensor]], None]] = None
        self._sums: Dict[str, Tensor] = {}
        self._count = 0

    @property
    def draws_at_update(self) -> int:
        """Forward/backward passes the update step itself runs."""
        return 1 if self.window == "recent" else self.samples

    def records_at(self, t: int, is_update_step: Callable[[int], bool]) -> bool:
        """Whether the ordinary step ``t`` records its gradient: ``window="recent"`` and an update
        within the next ``samples - 1`` steps."""
        return self.window == "recent" and any(is_update_step(t + j) for j in range(1, self.samples))

    def guide(self, guide, sparse_guide):
        """``guide`` wrapped so that the draws of ``sparse_guide``'s sparse weight sites keep their
        gradients (and, for ``grad_mean``, every latent is at its mean)."""
        self.retain.sites = tuple(name for name, info in sparse_guide.sites.items() if info.sparse)
        wrapped = self.retain(guide)
        return UseMeansMessenger(None)(wrapped) if self.criterion == "grad_mean" else wrapped

    def record(self) -> None:
        """Add the gradients of the last backward pass through :meth:`guide`'s draws."""
        grads = {
            name: value.grad.detach() if value.grad is not None else torch.zeros_like(value)
            for name, value in self.retain.values.items()
        }
        if self.reduce is not None:
            self.reduce(grads)
        for name, grad in grads.items():
            # The paper's grad_mc averages magnitudes; grad_mc_mean averages signed gradients.
            grad = grad if self.criterion == "grad_mc_mean" else grad.abs()
            total = self._sums.get(name)
            self._sums[name] = grad if total is None else total + grad
        self.retain.values.clear()
        self._count += 1

    def take(self) -> Dict[str, Tensor]:
        """Site name -> score ``[*site shape]`` (>= 0) of the recorded passes; starts afresh."""
        scores = {name: (total / self._count).abs() for name, total in self._sums.items()}
        self._sums, self._count = {}, 0
        return scores


def drop_count(r_t: float, num_active: int, numel: int, variant: Variant) -> int:
    """Entries moved at one site: ``round`` or ``int`` (``variant.drop_count``) of ``r_t *
    num_active``, at most the candidates for regrowth (the inactive entries; with
    ``variant.regrow_removed`` the removed ones too, so at most ``num_active``)."""
    limit = num_active if variant.regrow_removed else numel - num_active
    return min(variant.count("drop_count", r_t, num_active), limit)


@torch.no_grad()
def apply_surgery(
    guide,
    t: int,
    schedule: SurgerySchedule,
    addition_scores: Dict[str, Tensor],
    removal: RemovalCriterion,
    sigma_init,
    variant: Variant,
    state_lookup: Optional[StateLookup] = None,
    reduce_scores: Optional[Callable[[Dict[str, Tensor]], None]] = None,
) -> dict:
    """Drop/grow every sparse site of the MaskedAutoNormal ``guide`` at step ``t``; returns the
    log record ``{"step", "drop_fraction", "sites": {name: {"removed", "added"}}}``.

    ``sigma_init="mean"`` with ``variant.regrown_sigma="softplus_mean_rho"`` regrows at
    ``softplus(mean rho)`` (:func:`~pyro_ssvi.surgery.update_site`'s ``"mean_rho"``).
    ``reduce_scores``: applied to the dict of removal scores before any top-k (data-parallel
    ranks average them, so that all take the same decision; see :mod:`pyro_ssvi.distributed`).
    """
    r_t = schedule.drop_fraction_at(t)
    record = {"step": t, "drop_fraction": r_t, "sites": {}}
    if sigma_init == "mean" and variant.regrown_sigma == "softplus_mean_rho":
        sigma_init = "mean_rho"
    counts = {
        name: drop_count(r_t, info.num_active, info.numel, variant) for name, info in guide.sites.items() if info.sparse
    }
    # All removal scores first (each site's depends on its own parameters only), so that they can
    # be reduced together.
    removal_scores = {}
    for name, k in counts.items():
        if k > 0:
            loc, rho = guide.site_params(name)
            removal_scores[name] = removal(loc, F.softplus(rho))
    if reduce_scores is not None:
        reduce_scores(removal_scores)
    for name, k in counts.items():
        if k > 0:
            loc, rho = guide.site_params(name)
            update_site(
                loc, rho, guide.site_mask(name), removal_scores[name], addition_scores[name], k,
                sigma_init, state_lookup, regrow_removed=variant.regrow_removed,
            )
        record["sites"][name] = {"removed": k, "added": k}
    return record
