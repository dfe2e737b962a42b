"""Effectful ``linear`` and ``conv2d``: plain :mod:`torch.nn.functional` calls that Pyro handlers can see.

Our Bayesian layers call these instead of ``F.linear`` / ``F.conv2d``. Outside any Pyro handler
they are exactly the torch functions (one Python check of overhead). Inside a handler stack they
become messages of type ``"ssvi_linear"`` / ``"ssvi_conv2d"``, which a handler such as
:class:`~pyro_ssvi.handlers.LRTMessenger` may compute differently (local reparameterization).
Handlers that do not know these types ignore them, so the default result is the plain op.
Nothing in ``torch.nn.functional`` is patched.

One shortcut: a weight that an active :class:`~pyro_ssvi.handlers.LRTMessenger` registered at
its sample site carries that messenger (``weight.ssvi_lrt``), and the op goes to it directly
rather than as a message through every handler on the stack, which costs ~30 Python calls per
layer and step. The result is the one the message would get from that messenger.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from pyro.poutine.runtime import effectful
from torch import Tensor

__all__ = ["linear", "conv2d", "LINEAR", "CONV2D"]

LINEAR = "ssvi_linear"
CONV2D = "ssvi_conv2d"


def _linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    return F.linear(input, weight, bias)


def _conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


_linear_effect = effectful(_linear, type=LINEAR)
_conv2d_effect = effectful(_conv2d, type=CONV2D)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``input [.., in] @ weight [out, in].T + bias [out] -> [.., out]``, effectful."""
    handler = getattr(weight, "ssvi_lrt", None)
    if handler is not None:  # compute() is None for a weight its messenger did not see in this run
        out = handler.compute(F.linear, input, weight, bias)
        if out is not None:
            return out
    return _linear_effect(input, weight, bias)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """``conv2d(input [B, C, H, W], weight [O, C/groups, kh, kw], bias, stride, padding, dilation, groups)``, effectful."""
    handler = getattr(weight, "ssvi_lrt", None)
    if handler is not None:
        out = handler.compute(F.conv2d, input, weight, bias, stride, padding, dilation, groups)
        if out is not None:
            return out
    return _conv2d_effect(input, weight, bias, stride, padding, dilation, groups)
