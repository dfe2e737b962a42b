"""Which latent sites a MaskedAutoNormal covers, and how: pure functions of a model's prototype trace.

Two kinds of continuous latent site:

- *weight sites*: global (outside every plate) with a Normal prior. q is a
  :class:`~pyro_ssvi.distributions.MaskedNormal` sampled at the site itself, sparse unless
  :func:`plan_site` says otherwise;
- *dense latents*: everything else continuous (constrained supports, plate-local sites, non-Normal
  priors): a dense mean-field Normal in unconstrained space mapped by
  ``biject_to(prior.support)``, as Pyro's ``AutoNormal`` does.

Discrete latents are refused with a message that names the site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from pyro.distributions import Independent, Normal, TransformedDistribution
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform, Transform

from ..errors import SSVIConfigError

__all__ = [
    "LatentInfo",
    "SiteInfo",
    "is_weight_site",
    "latent_info",
    "normal_base",
    "num_active_entries",
    "plan_site",
    "softplus_inverse",
]


def softplus_inverse(scale: Tensor) -> Tensor:
    """``rho`` with ``softplus(rho) = scale`` (stable for small and large scale), same shape."""
    return scale + torch.log(-torch.expm1(-scale))


def num_active_entries(numel: int, sparsity: float, rule: str = "round") -> int:
    """``round((1 - sparsity) * numel)`` (``rule="round"``, the paper) or ``numel -
    int(sparsity * numel)`` (``"truncate"``, the authors' code; see :mod:`pyro_ssvi.variant`),
    at least 1 so no layer is cut off entirely."""
    if rule == "truncate":
        return max(1, numel - int(sparsity * numel))
    return max(1, round((1.0 - sparsity) * numel))


def plan_site(
    name: str, shape, sparsity: float, dense_sites=(), sparse_1d: bool = False, rule: str = "round"
) -> Tuple[bool, int]:
    """``(sparse, num_active)`` of a weight site: sparse unless ``sparsity == 0``, listed in
    ``dense_sites``, or of fewer than 2 dimensions (biases) without ``sparse_1d``; ``rule`` as
    in :func:`num_active_entries`."""
    numel = torch.Size(shape).numel()
    sparse = sparsity > 0 and name not in dense_sites and (len(shape) >= 2 or sparse_1d)
    return sparse, (num_active_entries(numel, sparsity, rule) if sparse else numel)


@dataclass(frozen=True)
class SiteInfo:
    """Static description of one weight site."""

    shape: torch.Size
    event_dim: int
    sparse: bool
    num_active: int  # constant for the life of the guide

    @property
    def numel(self) -> int:
        return self.shape.numel()


@dataclass(frozen=True)
class LatentInfo:
    """Static description of one dense latent site (q in unconstrained space).

    ``shape`` is the full unconstrained shape (plate dimensions at their full size, as the
    parameters are stored); ``event_dim`` counts the unconstrained event dimensions.
    """

    shape: torch.Size
    event_dim: int
    transform: Transform  # unconstrained -> the prior's support
    frames: Tuple  # the site's vectorized plates (CondIndepStackFrame), outermost first

    @property
    def is_identity(self) -> bool:
        return _is_identity(self.transform)

    def distribution(self, loc: Tensor, scale: Tensor):
        """q: ``Normal(loc, scale)`` over the unconstrained event dims, mapped by ``transform``
        (a plain Normal for real-valued sites, so that a Normal prior's KL is analytic)."""
        base = Normal(loc, scale, validate_args=False).to_event(self.event_dim)
        if self.is_identity:
            return base
        return TransformedDistribution(base, self.transform.with_cache(), validate_args=False)


def _is_identity(transform: Transform) -> bool:
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


def normal_base(fn) -> Optional[Normal]:
    """The Normal under ``fn`` (possibly ``.to_event()``-ed), or None."""
    base = fn.base_dist if isinstance(fn, Independent) else fn
    return base if isinstance(base, Normal) else None


def is_weight_site(site: dict) -> bool:
    """Global with a Normal prior: covered by a (possibly sparse) MaskedNormal."""
    return not site["cond_indep_stack"] and normal_base(site["fn"]) is not None


def check_continuous(name: str, site: dict) -> None:
    """Raise for a discrete latent, naming the site and what to do."""
    if not site["fn"].support.is_discrete:
        return
    raise SSVIConfigError(
        f"site {name!r} is a discrete latent ({type(site['fn']).__name__}); MaskedAutoNormal fits continuous "
        "latents only. If it is an observation, pass its data the first time the guide is called (e.g. "
        "guide(x, y), not guide(x)). If it is a real discrete latent, marginalize it: decorate the model with "
        "pyro.infer.config_enumerate, use TraceEnum_ELBO, and build the guide on "
        f"poutine.block(model, hide=[{name!r}])."
    )


def latent_info(site: dict, init_value: Tensor) -> Tuple[LatentInfo, Tensor]:
    """``(info, unconstrained initial loc at full plate size)`` of a dense latent site.

    Subsampled plates: the initial value is repeated along the plate dimension to the full size,
    as ``AutoNormal`` does.
    """
    from pyro.ops.tensor_utils import periodic_repeat

    transform = biject_to(site["fn"].support)
    loc = transform.inv(init_value.detach()).detach()
    event_dim = site["fn"].event_dim + loc.dim() - init_value.dim()
    frames = tuple(f for f in site["cond_indep_stack"] if f.vectorized)
    if len(frames) != len(site["cond_indep_stack"]):
        raise SSVIConfigError(
            f"site {site['name']!r} is inside a sequential pyro.plate (a Python loop); MaskedAutoNormal, like "
            "Pyro's AutoNormal, supports vectorized plates only"
        )
    for frame in frames:
        full_size = frame.full_size or frame.size
        if full_size != frame.size:
            loc = periodic_repeat(loc, full_size, frame.dim - event_dim).contiguous()
    frames = tuple(sorted(frames, key=lambda f: f.dim))  # outermost (most negative dim) first
    return LatentInfo(loc.shape, event_dim, transform, frames), loc
