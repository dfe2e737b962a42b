"""SSVI's steady-state training step replayed from a CUDA graph; mask updates stay eager.

A GPU step of SSVI is host-bound: Python and kernel launches, not arithmetic, set its pace. A
CUDA graph records the step's kernels once and replays them with one launch. What that needs,
and how it is provided here:

- no host synchronization inside the step (SSVI's ``step_async`` path has none; the finiteness of
  the loss is folded into a device flag that :meth:`SSVI.check_finite` reads later);
- values that change between steps live in device tensors that the graph reads: the inputs (copied
  into static buffers), the KL weight beta and the learning rates (filled in place before each
  replay; an ``LRScheduler`` fills tensor learning rates in place by itself);
- an optimizer step without host reads: torch's SGD turns a tensor learning rate into a Python
  number (a sync), so the graph runs :func:`sgd_step`, the same update written with foreach ops
  on the optimizer's own momentum buffers;
- after every mask update (eager: it ranks whole tensors and changes the masks) the graph is
  recorded again, after ``warmup`` eager steps;
- Pyro's argument validation (host reads) is switched off inside the recorded step.

This has not run on a GPU yet (see docs/benchmarks.md). On CPU, ``graph_factory`` may be
:class:`EagerGraph`, which runs the recorded function at every replay and checks that recording
would not synchronize: the tests use it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import pyro
import torch
from torch import Tensor

from . import params
from .errors import SSVIConfigError
from .sync_check import fail_on_sync

__all__ = ["EagerGraph", "GraphedSteps", "sgd_step"]


@torch.no_grad()
def sgd_step(optimizer: torch.optim.SGD) -> None:
    """One ``torch.optim.SGD`` step (momentum, weight decay; no dampening, no Nesterov) that reads
    each group's learning rate as a device tensor, so it can be recorded in a CUDA graph.

    Same arithmetic as torch's foreach SGD: ``g += wd * p``; ``buf = momentum * buf + g``;
    ``p -= lr * buf``. Momentum buffers must exist (one eager ``optimizer.step()`` creates them).
    """
    for group in optimizer.param_groups:
        ps = [p for p in group["params"] if p.grad is not None]
        if not ps:
            continue
        grads = [p.grad for p in ps]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])
        if group["momentum"]:
            bufs = [optimizer.state[p]["momentum_buffer"] for p in ps]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            grads = bufs
        torch._foreach_add_(ps, torch._foreach_mul(grads, -group["lr"]))


class EagerGraph:
    """A stand-in for a CUDA graph on CPU: :meth:`record` keeps ``fn`` without running it (as a
    capture does not run the kernels), :meth:`replay` runs it under :func:`fail_on_sync`, which
    raises where a capture would fail."""

    def __init__(self) -> None:
        self._fn: Optional[Callable[[], None]] = None

    def record(self, fn: Callable[[], None]) -> None:
        self._fn = fn

    def replay(self) -> None:
        with fail_on_sync():
            self._fn()


class _CudaGraph:
    """``torch.cuda.CUDAGraph`` behind :class:`EagerGraph`'s interface (record = capture, after
    which the recorded kernels have not run yet: the caller replays)."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def record(self, fn: Callable[[], None]) -> None:
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


class GraphedSteps:
    """``step(x, y)``: SSVI's step, from a CUDA graph where it can be.

    :param svi: an :class:`~pyro_ssvi.SSVI` with a ``torch.optim.SGD`` optimizer (no Nesterov, no
        dampening), ``TraceMeanField_ELBO`` and local reparameterization.
    :param warmup: eager steps before each recording (after the start and after every mask update).
    :param graph_factory: ``() -> graph`` with ``record(fn)`` and ``replay()``; default a CUDA graph.

    Returns the step's loss as a 0-dim device tensor, as :meth:`SSVI.step_async` does.
    """

    def __init__(self, svi, warmup: int = 2, graph_factory: Optional[Callable[[], object]] = None) -> None:
        optim = svi.optim
        if not isinstance(optim, torch.optim.SGD) or any(g["nesterov"] or g["dampening"] for g in optim.param_groups):
            raise SSVIConfigError(
                "train.cuda_graph supports torch.optim.SGD without Nesterov or dampening (its update is "
                f"replayed from the graph); got {type(optim).__name__}: use train.optimizer=sgd or cuda_graph=false"
            )
        if not (svi._skip is not None and svi.use_lrt):
            raise SSVIConfigError(
                "train.cuda_graph needs TraceMeanField_ELBO with local reparameterization (method.lrt=true): "
                "that step has no weight draw and no host read to leave out of the graph"
            )
        if getattr(svi, "distributed", None) is not None:
            raise SSVIConfigError(
                "train.cuda_graph does not work with data-parallel training yet: the replayed step would not "
                "average the gradients across processes (pyro_ssvi.distributed); set train.cuda_graph=false"
            )
        self.svi, self.warmup = svi, int(warmup)
        self._graph_factory = graph_factory or _CudaGraph
        like = next(iter(svi.guide.parameters()))
        # In the parameters' dtype: a float32 beta or lr would round a float64 model's step.
        self._beta = torch.zeros((), dtype=like.dtype, device=like.device)
        self._finite = torch.ones((), dtype=torch.bool, device=like.device)
        for group in optim.param_groups:  # in place from now on: the scheduler fills them
            group["lr"] = torch.as_tensor(float(group["lr"]), dtype=group["params"][0].dtype, device=like.device)
        self._graph = None
        self._static = None  # (x, y, loss) buffers of the recorded step
        self._eager_left = self.warmup
        self.recordings = 0

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        svi = self.svi
        if svi.is_update_step():
            self._graph, self._eager_left = None, self.warmup  # masks change: record again later
            return svi.step_async(x, y)
        if self._graph is None or x.shape != self._static[0].shape or y.shape != self._static[1].shape:
            if self._eager_left > 0:
                self._eager_left -= 1
                return svi.step_async(x, y)
            self._record(x, y)
        static_x, static_y, loss = self._static
        static_x.copy_(x)
        static_y.copy_(y)
        self._beta.fill_(svi.kl_weight())
        # The recorded step ANDs its loss's finiteness into self._finite: SSVI's checks read it.
        svi.finite.adopt(self._finite, svi.step_count)
        self._graph.replay()
        svi.step_count += 1
        return loss.clone()

    def _record(self, x: Tensor, y: Tensor) -> None:
        svi = self.svi
        static_x, static_y = x.clone(), y.clone()
        loss_out = torch.zeros_like(self._beta)
        svi._beta.beta = self._beta  # a float would be baked into the recorded kernels

        def body() -> None:
            # Gradients are written, not accumulated: a recording allocates them afresh (and an
            # EagerGraph replay must do the same).
            svi.optim.zero_grad(set_to_none=True)
            # Pyro's argument validation reads values on the host: off inside a recorded step.
            with pyro.validation_enabled(False), params.quiet() if svi._quiet else contextlib.nullcontext():
                model, guide, loss_and_grads = svi._lrt_step
                loss = loss_and_grads(model, guide, static_x, static_y)
            sgd_step(svi.optim)
            self._finite.logical_and_(torch.isfinite(loss))
            loss_out.copy_(loss)

        graph = self._graph_factory()
        graph.record(body)
        self._graph, self._static = graph, (static_x, static_y, loss_out)
        self.recordings += 1
