"""Initial values for MaskedAutoNormal: Pyro init strategies (``site -> value``), picklable.

A site whose model statement carries ``infer={"ssvi_init_loc": tensor}`` (what
``bayesianize(net, keep_weights=True)`` writes) starts from that tensor whatever the strategy, and
its initial active entries are the largest in magnitude (:func:`initial_mask`).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from pyro.infer.autoguide.initialization import init_to_median
from torch import Tensor

from ..errors import SSVIConfigError
from .sites import normal_base

__all__ = ["INIT_LOC_KEY", "InitScale", "check_init_scale", "init_to_normal", "initial_mask", "initial_scale"]

#: ``infer`` key of a model sample statement that fixes the site's initial posterior mean.
INIT_LOC_KEY = "ssvi_init_loc"

#: Initial sigma: a float, or ``(mean, std)`` for ``|N(mean, std^2)|`` per entry.
InitScale = Union[float, Tuple[float, float]]


class init_to_normal:
    """Initial means ``N(0, std^2)`` for Normal-prior sites of 2 or more dimensions (weight matrices
    and kernels); ``std=None`` uses He scaling ``sqrt(2 / fan_in)``, ``fan_in`` being the product
    of all but the first dimension. Other Normal-prior sites (biases, scalars) start at the prior
    mean; all other sites use ``fallback``, by default Pyro's ``init_to_median`` (heavy-tailed
    priors such as HalfCauchy have no mean).

    The SSVI paper initializes ResNet means with ``std=0.01``. A class rather than a closure,
    so that a guide holding it can be pickled.
    """

    def __init__(self, std: Optional[float] = None, fallback=None) -> None:
        self.std = std
        self.fallback = fallback

    def __call__(self, site: dict) -> Tensor:
        given = site["infer"].get(INIT_LOC_KEY)
        if given is not None:
            return given.detach().clone()
        shape = site["fn"].shape()
        normal = normal_base(site["fn"])
        if normal is None:
            return (self.fallback or init_to_median)(site)
        if len(shape) < 2:
            return site["fn"].mean.detach().clone()
        std = self.std if self.std is not None else math.sqrt(2.0 / math.prod(shape[1:]))
        return torch.randn(shape, dtype=normal.loc.dtype, device=normal.loc.device) * std

    def __repr__(self) -> str:
        return f"init_to_normal(std={self.std})"


def initial_mask(shape: torch.Size, num_active: int, generator, device, magnitude: Optional[Tensor] = None) -> Tensor:
    """Bool mask of ``shape`` with exactly ``num_active`` True entries: uniformly random, or the
    largest ``|magnitude|`` entries when given (a trained network's weights)."""
    numel = shape.numel()
    if magnitude is not None:
        chosen = magnitude.detach().abs().reshape(-1).cpu().topk(num_active).indices
    else:
        chosen = torch.randperm(numel, generator=generator)[:num_active]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[chosen] = True
    return mask.view(shape).to(device)


def check_init_scale(init_scale: InitScale) -> None:
    if isinstance(init_scale, (int, float)) and not isinstance(init_scale, bool):
        ok = init_scale > 0
    else:
        try:
            ok = len(tuple(init_scale)) == 2 and all(isinstance(v, (int, float)) for v in init_scale)
        except TypeError:
            ok = False
    if not ok:
        raise SSVIConfigError(
            f"init_scale must be a positive float or a (mean, std) pair for |N(mean, std^2)|, got {init_scale!r}"
        )


def initial_scale(init_scale: InitScale, shape: torch.Size, like: Tensor) -> Tensor:
    """Initial sigma of ``shape`` on ``like``'s device (float dtype of ``like``, or the default)."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    if isinstance(init_scale, (int, float)):
        return torch.full(shape, float(init_scale), dtype=dtype, device=like.device)
    mean, std = init_scale
    scale = (torch.randn(shape, dtype=dtype, device=like.device) * std + mean).abs()
    # |N(.)| can be ~0; softplus_inverse of 0 is -inf. Floor at a tiny positive sigma.
    return scale.clamp_min(1e-8)
