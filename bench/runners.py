"""The four training steps the throughput benchmark times, each behind one small interface.

A :class:`Runner` owns its model, optimizer and data, and exposes ``step()`` (one training step
on the next batch) plus ``is_update_step()`` (whether the *next* step is an SSVI mask update).
Builders:

- :func:`ssvi_runner` ``(a)`` / ``(b)``: pyro_ssvi's :class:`~pyro_ssvi.SSVI` with
  :class:`~pyro_ssvi.MaskedAutoNormal` at ``sparsity`` (0 = dense VI through the same code path),
  ``TraceMeanField_ELBO``, one foreach torch SGD over guide and model parameters, validation off.
- :func:`deterministic_runner` ``(c)``: point-estimate ResNet-18, cross-entropy.
- :func:`plain_lrt_runner` ``(d)``: the no-Pyro LRT ResNet-18 of :mod:`plain_lrt`.

Hyperparameters follow the paper's recipe (SGD momentum 0.9, lr 0.01, weight decay 5e-4 on
means and BatchNorm, none on sigma; KL weight 0.01 per data point) so that every runner does the
same optimizer work. Options ``channels_last`` (GPU only: on CPU every runner reports it as
unsupported, see :data:`pyro_ssvi.config.CPU_CHANNELS_LAST`) and ``bf16`` (autocast) apply to (c)/(d) always and
to (a)/(b) only when ``library_options=True``: the library has no flag for them, so there they
are applied from outside (input layout, an autocast context around ``SSVI.step``) and their
accuracy is unchecked.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

import pyro
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plain_lrt import deterministic_resnet18, lrt_loss, lrt_resnet18
from pyro_ssvi.config import channels_last_problem

__all__ = ["Runner", "RunOptions", "ssvi_runner", "deterministic_runner", "plain_lrt_runner", "UnsupportedOption"]

LR = 0.01  # SGD learning rate (paper)
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4  # on means, BatchNorm and biases; none on rho (paper)
KL_WEIGHT = 0.01  # beta after warm-up (paper); the benchmark runs past the warm-up's start


class UnsupportedOption(Exception):
    """An option (bf16, channels_last) that this runner does not support."""


@dataclass
class RunOptions:
    """What every runner shares."""

    device: torch.device
    width: float = 1.0
    num_classes: int = 10
    sparsity: float = 0.9
    num_data: int = 50_000  # N of the per-datapoint loss (CIFAR-10 train set)
    channels_last: bool = False
    bf16: bool = False
    library_options: bool = False  # apply channels_last / bf16 to (a)/(b) from outside
    surgery_interval: int = 10  # ΔT used *in the benchmark*, so that a short run hits update steps
    seed: int = 0


@dataclass
class Runner:
    """One configuration's training step; ``step()`` runs a step on the next cached batch."""

    name: str
    step_fn: Callable[[Tensor, Tensor], None]
    batches: List[Tuple[Tensor, Tensor]]
    is_update_step: Callable[[], bool] = lambda: False
    notes: List[str] = field(default_factory=list)
    _cycle: Optional[Iterator[Tuple[Tensor, Tensor]]] = None

    def step(self) -> None:
        if self._cycle is None:
            self._cycle = itertools.cycle(self.batches)
        x, y = next(self._cycle)
        self.step_fn(x, y)


def _autocast(opts: RunOptions, cache: bool = True):
    if not opts.bf16:
        return contextlib.nullcontext()
    # A CUDA graph must not keep autocast's cached weight casts across replays.
    return torch.autocast(device_type=opts.device.type, dtype=torch.bfloat16, cache_enabled=cache)


def _check_layout(opts: RunOptions) -> None:
    problem = channels_last_problem(opts.device) if opts.channels_last else None
    if problem:
        raise UnsupportedOption(problem)


def synthetic_batches(batch: int, count: int, num_classes: int = 10, seed: int = 0,
                      device: torch.device = torch.device("cpu")) -> List[Tuple[Tensor, Tensor]]:
    """``count`` batches ``(x [batch, 3, 32, 32] N(0, 1) images, y [batch] uniform labels)`` on
    ``device``: the benchmarks time the model, not a loader."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch * count, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch * count,), generator=g).to(device)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, batch * count, batch)]


def _layout(batches, opts: RunOptions):
    if not opts.channels_last:
        return batches
    return [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]


def _sgd(decay: List[Tensor], no_decay: List[Tensor]) -> torch.optim.SGD:
    # foreach: one multi-tensor kernel per op for all parameters, not one per tensor.
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=LR, momentum=MOMENTUM, foreach=True)


def ssvi_runner(name: str, sparsity: float, batches, opts: RunOptions, cuda_graph: bool = False) -> Runner:
    """pyro_ssvi SSVI at ``sparsity`` (a: 0.9, b: 0.0) on the library's ResNet-18; with
    ``cuda_graph`` (e) its steady-state steps replay from a CUDA graph."""
    from pyro.infer import TraceMeanField_ELBO

    from pyro_ssvi import SSVI, MaskedAutoNormal, models
    from pyro_ssvi.guides import init_to_normal

    _check_layout(opts)
    if cuda_graph and opts.device.type != "cuda":
        raise UnsupportedOption("CUDA graphs need a CUDA device")
    if (opts.bf16 or opts.channels_last) and not opts.library_options:
        raise UnsupportedOption("pyro_ssvi has no bf16 / channels_last option yet (pass --library-options to force)")
    pyro.enable_validation(False)  # validation is for tests; it costs time every step
    pyro.clear_param_store()
    torch.manual_seed(opts.seed)
    model = models.resnet18(num_classes=opts.num_classes, width=opts.width, num_data=opts.num_data).to(opts.device)
    guide = MaskedAutoNormal(model, sparsity=sparsity, init_loc_fn=init_to_normal(0.01),
                             init_scale=(6e-4, 5e-4), seed=opts.seed)
    x0, y0 = batches[0]
    guide(x0, y0)  # lazy set-up, before the optimizer sees guide.parameters()
    # channels_last reaches (a)/(b) through the input layout only (the guide's parameters stay
    # contiguous; surgery would handle either layout).
    optim = _sgd(guide.loc_parameters() + list(model.parameters()), guide.rho_parameters())
    # num_steps large: the benchmark runs far from update_end, so every ΔT-th step is an update
    # step. beta's value does not change the cost of a step.
    svi = SSVI(model, guide, optim, TraceMeanField_ELBO(), num_steps=10**7,
               update_interval=opts.surgery_interval, num_data=opts.num_data, lrt=True,
               kl_max=KL_WEIGHT, kl_warmup=0.0)
    cast = opts.bf16
    if cuda_graph:
        from pyro_ssvi.cuda_graph import GraphedSteps

        advance = GraphedSteps(svi).step
    else:
        advance = svi.step_async  # no host sync inside the step; the timer synchronizes where it needs to

    def step(x: Tensor, y: Tensor) -> None:
        with (_autocast(opts, cache=not cuda_graph) if cast else contextlib.nullcontext()):
            advance(x, y)

    runner = Runner(name, step, _layout(batches, opts), lambda: svi.is_update_step())
    if opts.bf16 or opts.channels_last:
        runner.notes.append("bf16/channels_last applied from outside the library (accuracy unchecked)")
    runner.svi = svi  # type: ignore[attr-defined]  (kept for profiling)
    return runner


def _plain_step(net: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], opts: RunOptions):
    decay = [p for n, p in net.named_parameters() if not n.endswith("rho")]
    no_decay = [p for n, p in net.named_parameters() if n.endswith("rho")]
    optim = _sgd(decay, no_decay)

    def step(x: Tensor, y: Tensor) -> None:
        optim.zero_grad(set_to_none=True)
        with _autocast(opts):
            loss = loss_fn(x, y)
        loss.backward()
        optim.step()  # no .item(): the plain loops never synchronize with the host

    return step


def deterministic_runner(name: str, batches, opts: RunOptions) -> Runner:
    """(c) deterministic ResNet-18 (same architecture and width), mean cross-entropy."""
    _check_layout(opts)
    torch.manual_seed(opts.seed)
    net = deterministic_resnet18(opts.num_classes, opts.width).to(opts.device)
    if opts.channels_last:
        net.to(memory_format=torch.channels_last)
    step = _plain_step(net, lambda x, y: F.cross_entropy(net(x), y), opts)
    return Runner(name, step, _layout(batches, opts))


def plain_lrt_runner(name: str, batches, opts: RunOptions) -> Runner:
    """(d) plain-PyTorch LRT ResNet-18 at ``opts.sparsity`` (fixed masks), CE + beta * KL / N."""
    _check_layout(opts)
    torch.manual_seed(opts.seed)
    net = lrt_resnet18(opts.num_classes, opts.width, opts.sparsity, seed=opts.seed).to(opts.device)
    if opts.channels_last:
        net.to(memory_format=torch.channels_last)
    step = _plain_step(net, lambda x, y: lrt_loss(net, x, y, KL_WEIGHT, opts.num_data), opts)
    return Runner(name, step, _layout(batches, opts))
