"""Local reparameterization (Kingma et al., 2015) for layers that call :mod:`pyro_ssvi.ops`.

Under mean-field q(W) = N(mu, sigma^2), each output of ``x @ W.T`` is Gaussian given ``x``, so
instead of drawing W the handler draws the output directly (SSVI eq. 4)::

    y = x @ mu.T + sqrt((x ** 2) @ (sigma ** 2).T) * eps,   eps ~ N(0, 1)

and likewise for ``conv2d``. Inactive (masked) weights have mu = sigma^2 = 0 and so contribute
nothing. Noise is independent per example, which lowers gradient variance.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from torch import Tensor

__all__ = ["LRTMessenger", "lrt", "lrt_noise"]

# Floor on the output variance: d sqrt(v)/dv is infinite at v = 0, which a ReLU input of zeros
# over a whole receptive field (or a fully masked row) would hit. clamp_min passes no gradient
# below the floor, so such outputs simply carry no noise.
_VARIANCE_FLOOR = 1e-16


class LRTMessenger(Messenger):
    """Computes :func:`pyro_ssvi.ops.linear` / :func:`~pyro_ssvi.ops.conv2d` by local reparameterization.

    Apply it to the *model*. At each sample site that ``guide`` covers, it remembers which tensor
    the model received (the replayed guide draw); when that tensor later arrives as the weight
    (or bias) of an effectful op, the op's output is drawn from its exact Gaussian instead, with
    ``(mean, variance) = guide.moments(site)``. Ops on other tensors run unchanged.

    :param guide: an object with ``sites`` (names) and ``moments(name) -> (mean, variance)``,
        e.g. :class:`~pyro_ssvi.guides.MaskedAutoNormal`. A draw that carries its distribution
        as ``tensor.ssvi_q`` (MaskedAutoNormal's do) is computed from that distribution's
        ``mean`` and ``variance`` instead, which saves recomputing them.
    :param epsilon: added to the output variance inside the square root, ``sqrt(var + epsilon)``
        (squared output units; the SSVI authors' code: 1e-8). 0: ``sqrt(var)``, floored at 1e-16.

    ``consumed`` holds the names of the sites whose weight went through an op in the last run.

    ``noise`` (a testing switch, True by default; see :func:`lrt_noise`): False returns the
    output mean without the draw, which makes a step deterministic, e.g. to compare a
    data-parallel run with a single-process one. It is not a method: sigma then learns nothing
    from the likelihood.

    >>> from pyro_ssvi import models, MaskedAutoNormal
    >>> model = models.mlp([4, 8, 2])
    >>> guide = MaskedAutoNormal(model, sparsity=0.5)
    >>> x = torch.randn(3, 4)
    >>> tr = pyro.poutine.trace(guide).get_trace(x)
    >>> with lrt(guide=guide):
    ...     logits = pyro.poutine.replay(model, trace=tr)(x)
    >>> logits.shape
    torch.Size([3, 2])
    """

    noise = True

    def __init__(self, guide, epsilon: float = 0.0) -> None:
        super().__init__()
        self.guide = guide
        self.epsilon = float(epsilon)
        # id(tensor) -> (tensor, site name); the tensor is kept so its id cannot be reused.
        self._weights: Dict[int, Tuple[Tensor, str]] = {}
        self.consumed: Set[str] = set()

    def __enter__(self):
        self.begin_run()
        return super().__enter__()

    def __exit__(self, *args):
        self.end_run()
        return super().__exit__(*args)

    def begin_run(self) -> None:
        """Forget the weights of the last run (also called by a fused messenger that applies this one)."""
        self._weights.clear()
        self.consumed = set()

    def end_run(self) -> None:
        """Drop the references to this run's weight draws."""
        self._weights.clear()

    def _pyro_post_sample(self, msg) -> None:
        if not msg["is_observed"] and msg["name"] in self.guide.sites:
            value = msg["value"]
            self._weights[id(value)] = (value, msg["name"])
            # The tag lets pyro_ssvi.ops hand the op straight to this messenger instead of sending
            # a message through every handler on the stack (~30 Python calls per layer and step);
            # an enclosing LRT messenger does not take over an inner one's weight.
            owner = getattr(value, "ssvi_lrt", None)
            if owner is None or not owner.registered(value):
                value.ssvi_lrt = self

    def registered(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is a weight draw this messenger saw in its current run."""
        entry = self._weights.get(id(tensor))
        return entry is not None and entry[0] is tensor

    def _moments(self, tensor: Optional[Tensor]) -> Optional[Tuple[Tensor, Tensor]]:
        if tensor is None:
            return None
        entry = self._weights.get(id(tensor))
        if entry is None or entry[0] is not tensor:
            return None
        self.consumed.add(entry[1])
        q = getattr(tensor, "ssvi_q", None)
        if q is not None:
            return q.mean, q.variance
        return self.guide.moments(entry[1])

    def _local_reparameterize(self, msg, op: Callable[..., Tensor]) -> None:
        x, weight, *config = msg["args"]
        kwargs = msg["kwargs"]
        if config:
            bias, config = config[0], config[1:]
        else:  # ops.linear(x, w) or a keyword bias
            kwargs = dict(kwargs)
            bias = kwargs.pop("bias", None)
        value = self.compute(op, x, weight, bias, *config, **kwargs)
        if value is not None:
            msg["value"] = value
            msg["done"] = True

    def compute(self, op: Callable[..., Tensor], x: Tensor, weight: Tensor, bias: Optional[Tensor], *config, **kwargs):
        """``op(x, weight, bias, *config)`` (``F.linear`` or ``F.conv2d``) drawn by local
        reparameterization, or None if ``weight`` is not a weight draw this messenger saw."""
        weight_moments = self._moments(weight)
        if weight_moments is None:
            return None  # not a guide-covered weight: the plain op runs
        w_mean, w_var = weight_moments
        bias_moments = None if bias is None else self._moments(bias)
        if bias_moments is None:
            b_mean, b_var = bias, None
        else:
            b_mean, b_var = bias_moments
        mean = op(x, w_mean, b_mean, *config, **kwargs)
        if not self.noise:
            return mean
        var = op(x.square(), w_var, b_var, *config, **kwargs)
        # epsilon > 0 keeps var + epsilon away from 0 itself (and adds noise of variance
        # epsilon to every output); otherwise the floor only guards the gradient.
        var = var + self.epsilon if self.epsilon else var.clamp_min(_VARIANCE_FLOOR)
        return mean + var.sqrt() * torch.randn_like(mean)

    def _pyro_ssvi_linear(self, msg) -> None:
        self._local_reparameterize(msg, F.linear)

    def _pyro_ssvi_conv2d(self, msg) -> None:
        self._local_reparameterize(msg, F.conv2d)


def lrt(fn=None, guide=None, epsilon: float = 0.0):
    """Handler form of :class:`LRTMessenger`: ``lrt(model, guide=guide)`` or ``with lrt(guide=guide):``."""
    msngr = LRTMessenger(guide, epsilon)
    return msngr(fn) if fn is not None else msngr


@contextlib.contextmanager
def lrt_noise(enabled: bool):
    """Testing switch: inside ``with lrt_noise(False):`` every :class:`LRTMessenger` returns the
    output mean, no noise (see its ``noise``); the previous setting comes back on exit."""
    before = LRTMessenger.noise
    LRTMessenger.noise = bool(enabled)
    try:
        yield
    finally:
        LRTMessenger.noise = before
