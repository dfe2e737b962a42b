"""Effectful ``linear`` and ``conv2d``: plain :mod:`torch.nn.functional` calls that Pyro handlers can see.

Our Bayesian layers call these instead of ``F.linear`` / ``F.conv2d``. Outside any Pyro handler
they are exactly the torch functions (one Python check of overhead). Inside a handler stack they
become messages of type ``"ssvi_linear"`` / ``"ssvi_conv2d"``, which a handler such as
:class:`~pyro_ssvi.handlers.LRTMessenger` may compute differently (local reparameterization).
Handlers that do not know these types ignore them, so the default result is the plain op.
Nothing in ``torch.nn.functional`` is patched.
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


#: ``linear(input [.., in], weight [out, in], bias [out] | None) -> [.., out]``, effectful.
linear = effectful(_linear, type=LINEAR)
#: ``conv2d(input [B, C, H, W], weight [O, C/groups, kh, kw], bias, stride, padding, dilation, groups)``, effectful.
conv2d = effectful(_conv2d, type=CONV2D)
