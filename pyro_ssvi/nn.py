"""``Linear`` and ``Conv2d`` that local reparameterization can see, for your own Pyro modules.

``nn.Linear.forward`` calls ``F.linear`` directly, so SSVI's local reparameterization (which
handles :mod:`pyro_ssvi.ops` calls) never sees a ``PyroModule[nn.Linear]`` whose weight is a
``PyroSample``: its weights are then drawn instead. These subclasses compute the same thing
through :mod:`pyro_ssvi.ops` (outside any handler, exactly ``F.linear`` / ``F.conv2d``); nothing
in torch is patched. Either build with them::

    layer = PyroModule[pyro_ssvi.nn.Linear](784, 400)
    layer.weight = PyroSample(dist.Normal(0., 1.).expand([400, 784]).to_event(2))

or convert an existing module in place with :func:`enable_lrt`::

    net = PyroModule[nn.Sequential](PyroModule[nn.Linear](784, 400), nn.ReLU(), ...)
    pyro_ssvi.nn.enable_lrt(net)
"""

from __future__ import annotations

from torch import Tensor, nn
from pyro.nn import PyroModule

from . import ops

__all__ = ["Conv2d", "Linear", "enable_lrt"]


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`pyro_ssvi.ops.linear`."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.linear(input, self.weight, self.bias)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by :func:`pyro_ssvi.ops.conv2d` (zero padding; other padding modes
    run the plain convolution)."""

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            return super().forward(input)
        return ops.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


_EFFECTFUL = {nn.Linear: Linear, nn.Conv2d: Conv2d}


def enable_lrt(module: nn.Module) -> nn.Module:
    """Turn every ``nn.Linear`` / ``nn.Conv2d`` in ``module`` (plain or ``PyroModule[...]``) into
    :class:`Linear` / :class:`Conv2d` in place (their class only: parameters, ``PyroSample`` s
    and hooks stay), and return ``module``. Subclasses of those layers are left alone."""
    for layer in module.modules():
        cls = type(layer)
        if cls in _EFFECTFUL:
            layer.__class__ = _EFFECTFUL[cls]
            continue
        for plain, effectful in _EFFECTFUL.items():
            if cls is PyroModule[plain]:
                layer.__class__ = PyroModule[effectful]
    return module
