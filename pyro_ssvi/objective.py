"""A lean evaluation of TraceMeanField_ELBO's loss for SSVI's hot path.

Pyro's ``TraceMeanField_ELBO.loss_and_grads`` computes the log-density of *every* site in both
traces (``compute_log_prob`` / ``compute_score_parts``), although a closed-form KL uses none of
the weight sites' values, and it calls ``.item()`` per particle. Here the same quantity is
computed from the same two traces touching only what it needs: the observed sites' log-likelihood
and, per latent site, the registered KL (falling back to ``log p - log q`` where no KL is
registered, exactly as Pyro does). The result is a tensor: no host synchronization.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from pyro import poutine
from pyro.distributions import Independent, Normal
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import kl_divergence

from .distributions import ActiveSubspace, SubspacePrior
from .guides.flat import FlatMoments

# Priors whose density is a Normal's (SubspacePrior only masks it at sparse draws): their KL to a
# masked Normal is the closed form over the active entries.
_NORMAL_LOG_PROBS = (Normal.log_prob, SubspacePrior.log_prob)
_INDEPENDENT = (Independent, torch.distributions.Independent, ActiveSubspace)

__all__ = ["mean_field_loss", "mean_field_loss_of_traces"]


def mean_field_loss(model, guide, *args, **kwargs) -> Tensor:
    """``-ELBO`` as TraceMeanField_ELBO (one particle) defines it, as a differentiable scalar tensor."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return mean_field_loss_of_traces(model_trace, guide_trace)


def mean_field_loss_of_traces(model_trace, guide_trace) -> Tensor:
    """:func:`mean_field_loss` of a model trace replayed from ``guide_trace``."""
    elbo: Tensor = torch.zeros(())
    flat_sites = _flat_kl_sites(model_trace, guide_trace)
    if flat_sites:
        moments, scale, priors = flat_sites
        elbo = elbo - moments.kl(priors) * scale
    for name, site in model_trace.nodes.items():
        if (flat_sites and name in priors) or site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            log_p = site["fn"].log_prob(site["value"])
            elbo = elbo + scale_and_mask(log_p, site["scale"], site["mask"]).sum()
            continue
        guide_site = guide_trace.nodes[name]
        try:
            kl = kl_divergence(guide_site["fn"], site["fn"])
            elbo = elbo - scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
        except NotImplementedError:
            value = site["value"]
            log_p = scale_and_mask(site["fn"].log_prob(value), site["scale"], site["mask"]).sum()
            log_q = guide_site["fn"].log_prob(value)
            log_q = scale_and_mask(log_q, guide_site["scale"], guide_site["mask"]).sum()
            elbo = elbo + log_p - log_q
    for name, guide_site in guide_trace.nodes.items():
        if flat_sites and name in priors:
            continue
        if guide_site["type"] == "sample" and name not in model_trace.nodes and not site_is_subsample(guide_site):
            log_q = guide_site["fn"].log_prob(guide_site["value"])
            elbo = elbo - scale_and_mask(log_q, guide_site["scale"], guide_site["mask"]).sum()
    return -elbo


def _flat_kl_sites(model_trace, guide_trace) -> Optional[Tuple[FlatMoments, float, Dict[str, Tuple[Tensor, Tensor]]]]:
    """``(moments, scale, priors)`` when the KL of every weight site of one guide can be computed
    at once (:meth:`~pyro_ssvi.guides.flat.FlatMoments.kl`), else None.

    That needs, for every site of the guide's flat layout: a closed-form KL between its masked
    Normal and a Normal prior over all its dimensions, with prior parameters that are not trained
    (a learned prior scale needs its gradient through the per-site KL), no mask, and one common
    scale (the KL weight and 1/N). Otherwise every site is scored on its own, as before.
    """
    # This runs at every site of every step, and a GPU step is host-bound: no helper calls here.
    # Distributions are unwrapped by type, not isinstance (Pyro's distribution classes have an ABC
    # metaclass, whose isinstance is a Python call).
    moments, scale, priors = None, None, {}
    for name, guide_site in guide_trace.nodes.items():
        if guide_site["type"] != "sample" or guide_site["is_observed"]:
            continue
        fn = guide_site["fn"]
        base_q, q_dims = (fn.base_dist, fn.reinterpreted_batch_ndims) if type(fn) in _INDEPENDENT else (fn, 0)
        flat = getattr(base_q, "flat", None)
        if flat is None:
            continue
        site = model_trace.nodes.get(name)
        if site is None or site["is_observed"] or site["mask"] is not None or guide_site["mask"] is not None:
            return None
        fn = site["fn"]
        base_p, p_dims = (fn.base_dist, fn.reinterpreted_batch_ndims) if type(fn) in _INDEPENDENT else (fn, 0)
        if (type(base_p).log_prob not in _NORMAL_LOG_PROBS or q_dims != p_dims or q_dims != base_q.loc.ndim
                or base_p.loc.requires_grad or base_p.scale.requires_grad):
            return None
        if moments is None:
            moments, scale = flat[0], guide_site["scale"]
        elif flat[0] is not moments or not (guide_site["scale"] is scale or _same_scale(guide_site["scale"], scale)):
            return None
        priors[name] = (base_p.loc, base_p.scale)
        base_q.kl_used = True
    if moments is None or len(priors) != len(moments.layout.names):
        return None
    return moments, scale, priors


def _same_scale(a, b) -> bool:
    # Floats compare by value; tensors (poutine.scale with a tensor) only by identity, since
    # comparing their values would wait for the device.
    return a is b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)

