"""A lean evaluation of TraceMeanField_ELBO's loss for SSVI's hot path.

Pyro's ``TraceMeanField_ELBO.loss_and_grads`` computes the log-density of *every* site in both
traces (``compute_log_prob`` / ``compute_score_parts``), although a closed-form KL uses none of
the weight sites' values, and it calls ``.item()`` per particle. Here the same quantity is
computed from the same two traces touching only what it needs: the observed sites' log-likelihood
and, per latent site, the registered KL (falling back to ``log p - log q`` where no KL is
registered, exactly as Pyro does). The result is a tensor: no host synchronization.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import kl_divergence

__all__ = ["mean_field_loss"]


def mean_field_loss(model, guide, *args, **kwargs) -> Tensor:
    """``-ELBO`` as TraceMeanField_ELBO (one particle) defines it, as a differentiable scalar tensor."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    elbo: Tensor = torch.zeros(())
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
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
        if guide_site["type"] == "sample" and name not in model_trace.nodes and not site_is_subsample(guide_site):
            log_q = guide_site["fn"].log_prob(guide_site["value"])
            elbo = elbo - scale_and_mask(log_q, guide_site["scale"], guide_site["mask"]).sum()
    return -elbo
