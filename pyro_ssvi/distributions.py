"""A Normal distribution restricted to a subset of its entries.

:class:`MaskedNormal` is the guide distribution of one weight tensor under SSVI: active entries
(``mask == True``) are ``Normal(loc, scale)``, inactive entries are exactly ``delta(0)``. Unlike
``Normal(...).mask(m)`` (which only zeroes log-densities), its *samples* are zero at inactive
entries too, and its KL divergence to a Normal prior is registered in closed form, so
:class:`~pyro.infer.TraceMeanField_ELBO` never falls back to Monte Carlo for it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from pyro.distributions import Independent, Normal
from torch import Tensor
from torch.distributions import register_kl
from torch.distributions.utils import lazy_property

__all__ = ["ActiveSubspace", "MaskedNormal", "SubspacePrior", "masked_normal_kl"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class MaskedNormal(Normal):
    """``Normal(loc, scale)`` on the entries where ``mask`` is True and ``delta(0)`` elsewhere.

    Inactive entries must hold finite ``loc``/``scale`` placeholders (``scale > 0``); they never
    reach the output: samples are exactly 0 there and :meth:`log_prob`, :meth:`entropy` and the
    KL divergence are exactly 0 there (a point mass has no density; these are the terms over
    the active subspace, as in SSVI's eq. 3).

    :param loc: means, any shape.
    :param scale: standard deviations, broadcastable to ``loc``.
    :param mask: bool tensor broadcastable to ``loc``; True marks active entries.
    :param indicator: optional ``mask`` as 0/1 in ``loc``'s dtype. Products with a bool tensor
        cost a conversion kernel forward and another backward; a guide that caches this tensor
        saves both on every step.
    :param active: optional per-dimension indices of the active entries (as
        ``mask.nonzero(as_tuple=True)``): then ``to_event`` over all dimensions gives an
        :class:`ActiveSubspace`, whose KL is computed on the active entries only (a tenth of the
        work at 90% sparsity) instead of everywhere and then masked.

    :meth:`from_moments` builds it from precomputed mean and variance (a guide computes them for
    all its sites at once), with ``flat = (FlatMoments, site name)``: this site's entries in the
    guide's flat vectors, whose KL the lean objective computes for all sites at once.

    ``scored``, ``kl_used`` and ``prior_masked`` record how an ELBO used this distribution (its
    log-density was taken; a registered KL was; a :class:`SubspacePrior` masked the prior's
    log-density at its draw): MaskedAutoNormal reads them to warn about an objective that
    counted inactive entries under an unmasked prior.
    """

    scored = kl_used = prior_masked = False

    flat = None

    def __init__(
        self, loc: Tensor, scale: Tensor, mask: Tensor, validate_args=None, *, indicator=None, active=None
    ):
        super().__init__(loc, scale, validate_args=validate_args)
        self.mask = mask.expand(self.batch_shape) if mask.shape != self.batch_shape else mask
        if indicator is None:
            indicator = self.mask.to(self.loc.dtype)
        self.indicator = indicator.expand(self.batch_shape) if indicator.shape != self.batch_shape else indicator
        self.active = active

    @classmethod
    def from_moments(cls, loc: Tensor, scale: Optional[Tensor], mask: Tensor, indicator: Tensor, mean: Tensor,
                     variance: Tensor, *, flat=None, active=None) -> "MaskedNormal":
        """The distribution a guide builds on every step, without validation or broadcasting: all
        tensors already have ``loc``'s shape (``active`` may be a function returning the indices,
        called only if a KL needs them; ``scale`` may be None when ``flat = (FlatMoments, site)``
        holds it, made on first use). Constructing through ``__init__`` costs ~20 Python calls
        per site and step, which on a GPU is time the device waits."""
        q = object.__new__(cls)
        q.loc, q.mask, q.indicator = loc, mask, indicator
        if scale is not None:
            q.scale = scale
        # Instance attributes take precedence over the lazy properties.
        q.mean, q.variance, q.flat, q.active = mean, variance, flat, active
        q._batch_shape, q._event_shape, q._validate_args = loc.shape, torch.Size(), False
        return q

    def to_event(self, reinterpreted_batch_ndims=None):
        dims = len(self._batch_shape)
        ndims = dims if reinterpreted_batch_ndims is None else reinterpreted_batch_ndims
        if self.active is not None and ndims == dims:
            return ActiveSubspace.of(self)
        return super().to_event(ndims)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return MaskedNormal(
            self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.mask.expand(batch_shape),
            indicator=self.indicator.expand(batch_shape),
        )

    @lazy_property
    def scale(self) -> Tensor:
        # Only a from_moments distribution without a scale gets here (Normal.__init__ sets it):
        # its site's view of the flat sigmas, which the hot path (LRT, flat KL) never asks for.
        moments, name = self.flat
        return moments.sigma_views[moments.layout.index[name]]

    # Cached: under local reparameterization both the skipped draw (the mean) and the LRT op
    # ask for them, and each is a full-size elementwise kernel.
    @lazy_property
    def mean(self) -> Tensor:
        return self.loc * self.indicator

    @lazy_property
    def variance(self) -> Tensor:
        return self.scale.pow(2) * self.indicator

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        # Multiplying by the mask (rather than masking only log_prob, as .mask() does) is what
        # makes inactive weights exactly zero.
        return super().rsample(sample_shape) * self.indicator

    def log_prob(self, value: Tensor) -> Tensor:
        self.scored = True
        return torch.where(self.mask, super().log_prob(value), 0.0)

    def entropy(self) -> Tensor:
        return torch.where(self.mask, super().entropy(), 0.0)


def masked_normal_kl(loc: Tensor, scale: Tensor, indicator: Optional[Tensor], prior_loc, prior_scale) -> Tensor:
    """Elementwise ``KL(N(loc, scale^2) || N(prior_loc, prior_scale^2))`` times ``indicator`` (0/1;
    None: every entry counts).

    ``log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2`` in nats, same shape as ``loc``.
    A product rather than ``torch.where``: the inactive entries' placeholders are finite by the
    MaskedNormal contract, so it is exactly 0 there, and it saves a kernel each way.
    """
    var_ratio = (scale / prior_scale).pow(2)
    mahalanobis = ((loc - prior_loc) / prior_scale).pow(2)
    kl = 0.5 * (var_ratio + mahalanobis - 1.0 - var_ratio.log())
    return kl if indicator is None else kl * indicator


class SubspacePrior(Normal):
    """A Normal prior that knows SSVI's active subspace: ``Normal(loc, scale)`` whose log-density at
    a draw of :class:`~pyro_ssvi.guides.MaskedAutoNormal` counts the draw's *active* entries only.

    A sparse guide fixes its inactive entries at exactly 0, and a continuous prior gives that
    point a density: ``log N(0 | m, s)`` per inactive entry would enter ``Trace_ELBO`` and any
    ``log_prob_sum`` of a replayed model trace, and pull a learned prior scale towards 0. Under
    this prior the objective is SSVI's: the prior of the active entries, whatever the inference
    (``pyro.infer.SVI``, ``Predictive``, ``poutine.trace(...).log_prob_sum()``). At any other
    value (a prior draw, another guide's) it is exactly ``Normal``.

    pyro_ssvi's layers use it; in a model of your own write
    ``pyro.sample("w", SubspacePrior(0., tau).expand([out, in]).to_event(2))`` where you would write
    ``Normal``. (:class:`~pyro_ssvi.SSVI` masks plain Normal priors itself.)
    """

    def log_prob(self, value: Tensor) -> Tensor:
        log_p = super().log_prob(value)
        q = getattr(value, "ssvi_q", None)
        if q is None:
            return log_p
        q.prior_masked = True
        return torch.where(q.mask, log_p, 0.0)


class ActiveSubspace(Independent):
    """``MaskedNormal(...).to_event()`` over all dimensions when the active entries are indexed.

    Same distribution as ``Independent``; it exists so that its KL divergence to a Normal prior
    (registered below) is computed on the gathered active entries.
    """

    @classmethod
    def of(cls, base: MaskedNormal) -> "ActiveSubspace":
        """``Independent(base, base.dim())`` without ``__init__``'s checks (see MaskedNormal.from_moments)."""
        d = object.__new__(cls)
        shape = base._batch_shape
        d.base_dist, d.reinterpreted_batch_ndims = base, len(shape)
        # Not d._validate_args = False: Independent's setter would set it on the base (a Python
        # call per site and step); its getter reads the base's, which from_moments made False.
        d._batch_shape, d._event_shape = torch.Size(), shape
        return d


@register_kl(ActiveSubspace, Independent)
def _kl_active_subspace(q: ActiveSubspace, p: Independent) -> Tensor:
    base_q, base_p = q.base_dist, p.base_dist
    if not isinstance(base_p, Normal) or p.reinterpreted_batch_ndims != q.reinterpreted_batch_ndims:
        raise NotImplementedError
    index = base_q.active() if callable(base_q.active) else base_q.active
    base_q.kl_used = True
    # Advanced indexing gathers from expanded (stride-0) prior tensors without materializing them.
    kl = masked_normal_kl(base_q.loc[index], base_q.scale[index], None, base_p.loc[index], base_p.scale[index])
    return kl.sum()


@register_kl(MaskedNormal, Normal)
def _kl_masked_normal_normal(q: MaskedNormal, p: Normal) -> Tensor:
    q.kl_used = True
    return masked_normal_kl(q.loc, q.scale, q.indicator, p.loc, p.scale)


@register_kl(MaskedNormal, MaskedNormal)
def _kl_masked_normal_masked_normal(q: MaskedNormal, p: MaskedNormal) -> Tensor:
    # The prior is masked to q's support by SSVI (see handlers.mask_prior); only q's mask matters.
    q.kl_used = True
    return masked_normal_kl(q.loc, q.scale, q.indicator, p.loc, p.scale)

