"""Skip weight draws that only local reparameterization consumes, provably.

Under local reparameterization with a closed-form KL, the loss never reads a weight draw: LRT
ops compute their outputs from q's mean and variance, and the KL from q's parameters. The draw
(randn, scale, shift, mask per site) can then be skipped. But a model may use a weight elsewhere
too (a ``pyro.factor`` penalty, a norm, a custom op), where a stand-in mean would silently drop
sigma. So a skipped site's value is a :class:`SkippedDraw`: a tensor with the draw's shape,
dtype and device but *no data*. Metadata queries work; any computation with it raises
:class:`DrawNeeded`, and the caller (SSVI) re-runs the step with that site drawn, for good.
"""

from __future__ import annotations

from typing import Set

import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.utils._pytree import tree_flatten

__all__ = ["DrawNeeded", "SkipDrawsMessenger", "SkippedDraw"]


class DrawNeeded(Exception):
    """A skipped weight draw was used in a computation; ``site`` names it."""

    def __init__(self, site: str, op) -> None:
        super().__init__(
            f"the draw of site {site!r} was skipped (only local reparameterization was expected to read it), "
            f"but {op} used it"
        )
        self.site = site


class SkippedDraw(Tensor):
    """Stand-in for a weight draw that nothing should compute with (see the module docstring)."""

    site: str

    @staticmethod
    def __new__(cls, shape: torch.Size, dtype: torch.dtype, device: torch.device, site: str) -> "SkippedDraw":
        stand_in = Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=False)
        stand_in.site = site
        return stand_in

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        flat, _ = tree_flatten((args, kwargs))
        raise DrawNeeded(next(a.site for a in flat if isinstance(a, SkippedDraw)), func)

    def __repr__(self) -> str:
        return f"SkippedDraw(site={self.site!r}, shape={tuple(self.shape)})"


class SkipDrawsMessenger(Messenger):
    """Apply to the guide: its weight sites (``guide.sites``) get a :class:`SkippedDraw` instead of
    a draw, except those in ``needs_draws`` (a set the caller grows when :class:`DrawNeeded` names
    a site). The distribution must have a ``loc``, as Normal and MaskedNormal do."""

    def __init__(self, guide, needs_draws: Set[str]) -> None:
        super().__init__()
        self.guide = guide
        self.needs_draws = needs_draws

    def _pyro_sample(self, msg) -> None:
        name = msg["name"]
        if msg["is_observed"] or msg["value"] is not None or name not in self.guide.sites or name in self.needs_draws:
            return
        fn = msg["fn"]
        like = getattr(fn, "base_dist", fn).loc  # not .mean: that would compute a kernel for nothing
        # fn.shape(), read without its three Python calls (a cost at every site of every step).
        msg["value"] = SkippedDraw(fn._batch_shape + fn._event_shape, like.dtype, like.device, name)
