"""Training FLOPs of an SSVI run relative to dense mean-field VI (theoretical and executed).

Counting (per Bayesian layer ``l``, per training example):

- ``M_l``: multiply-accumulates of the layer's dense forward op on one example, from a forward
  hook: conv ``out_h * out_w * out_c * (in_c / groups) * kh * kw``, linear ``in * out`` (times
  any non-batch leading dimensions). FLOPs = 2 * MACs. Bias additions, BatchNorm, activations,
  pooling, the loss, the KL and the optimizer are not counted (they are elementwise and small
  next to the convolutions; the paper's accounting ignores them too).
- Local reparameterization runs two ops per layer, ``op(x, mu)`` and ``op(x^2, sigma^2)``, so one
  forward pass is ``2 * 2 M_l`` FLOPs; the backward pass is counted as twice the forward (gradient
  w.r.t. the input and w.r.t. the weight): one training step is ``3 * 4 M_l = 12 M_l``.

Per run of ``S`` steps at batch ``B``, with density ``d_l`` (active / total entries of the
layer's weight; 1 for dense sites) and ``U`` mask-update steps (SSVI's schedule: every ΔT steps
before ``update_end``)::

    dense VI                 F_dense = S * B * sum_l 12 M_l
    SSVI, theoretical        F_theo  = S * B * sum_l 12 d_l M_l  +  U * B * sum_{l sparse} 2 M_l
    SSVI, executed           F_exec  = (S - U) * B * sum_l 12 M_l  +  U * B * K * sum_l 6 M_l

*Theoretical* counts sparse layers at their density (an ideal sparse kernel) and, RigL-style,
one extra dense backward pass w.r.t. the weights on each update step (the dense gradient the
addition criterion ranks: ``2 M_l`` per sparse layer). *Executed* is what this implementation
runs: masked dense kernels do dense work whatever the density, so an ordinary step costs as much
as a dense VI step; an update step runs the model at ``K = addition_samples`` sampled weights
without LRT (one op per layer: ``3 * 2 M_l = 6 M_l``) and takes no optimizer step.

>>> from pyro_ssvi import models, MaskedAutoNormal
>>> model = models.mlp([4, 3])
>>> layer_macs(model, torch.zeros(1, 4))
{'1.weight': 12}
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Union

import torch
from torch import Tensor, nn

from .errors import SSVIConfigError
from .guides import plan_site
from .models.layers import BayesConv2d, BayesianLayer, BayesLinear
from .schedule import SurgerySchedule

__all__ = ["layer_macs", "site_densities", "training_flops"]

Densities = Union[float, Mapping[str, float], object]


def _macs(module: nn.Module, output: Tensor) -> int:
    """Dense forward MACs of ``module`` for its whole ``output`` (all examples of the batch)."""
    if isinstance(module, BayesConv2d):
        batch, out_c, out_h, out_w = output.shape
        kh, kw = module.kernel_size
        return batch * out_h * out_w * out_c * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, BayesLinear):
        # output [..., out]: every leading position (batch included) is one x @ W^T row.
        return output.numel() * module.in_features
    raise SSVIConfigError(f"no MAC formula for {type(module).__name__}; only BayesConv2d and BayesLinear")


@torch.no_grad()
def layer_macs(model: nn.Module, example_input: Tensor) -> Dict[str, int]:
    """Site name -> dense forward MACs per example of each Bayesian layer of ``model``.

    Runs ``model(example_input)`` once (outside any inference handler the weights are prior
    draws; only shapes matter) with forward hooks on every :class:`BayesConv2d` and
    :class:`BayesLinear`, and divides each count by the batch size ``example_input.shape[0]``.
    Non-Bayesian layers are ignored. A layer called twice is counted twice.
    """
    layers = [m for m in model.modules() if isinstance(m, BayesianLayer)]
    if not layers:
        raise SSVIConfigError("layer_macs found no Bayesian layer (BayesConv2d / BayesLinear) in the model")
    counts: Dict[str, int] = {}

    def hook(module, _inputs, output):
        counts[module.site_name] = counts.get(module.site_name, 0) + _macs(module, output)

    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.eval()  # BatchNorm running statistics must not move for a counting pass
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    batch = example_input.shape[0]
    return {name: c // batch for name, c in counts.items()}


def site_densities(model: nn.Module, densities: Densities) -> Dict[str, float]:
    """Site name -> density (active fraction) of every Bayesian layer, from one of:

    - a :class:`~pyro_ssvi.guides.MaskedAutoNormal` (set up): ``num_active / numel`` per site;
    - a mapping ``site -> density`` (missing sites are dense);
    - a float: that density for every site except the layers marked ``dense`` (the ResNet stem)
      and sites of fewer than 2 dimensions, which stay dense (as the guide does).
    """
    names = [m.site_name for m in model.modules() if isinstance(m, BayesianLayer)]
    if hasattr(densities, "sites"):
        sites = densities.sites
        if not sites:
            raise SSVIConfigError("the guide is not set up yet; call guide(*model_args) once first")
        return {n: (sites[n].num_active / sites[n].numel if n in sites else 1.0) for n in names}
    if isinstance(densities, Mapping):
        unknown = set(densities) - set(names)
        if unknown:
            raise SSVIConfigError(f"densities for unknown sites {sorted(unknown)}; sites are {names}")
        return {n: float(densities.get(n, 1.0)) for n in names}
    if isinstance(densities, (int, float)) and 0 < densities <= 1:
        # The guide's own rule (dense stem, dense 1-D sites, rounded active counts).
        dense = tuple(m.site_name for m in model.modules() if isinstance(m, BayesianLayer) and m.dense)
        out = {}
        for m in model.modules():
            if isinstance(m, BayesianLayer):
                _, active = plan_site(m.site_name, m.weight_shape, 1.0 - float(densities), dense)
                out[m.site_name] = active / m.weight_shape.numel()
        return out
    raise SSVIConfigError(
        f"densities must be a MaskedAutoNormal, a mapping site -> density or a float in (0, 1], got {densities!r}"
    )


def training_flops(
    model: nn.Module,
    densities: Densities,
    example_input: Tensor,
    num_steps: int,
    batch_size: int,
    update_interval: int = 100,
    update_end: Union[float, int] = 0.75,
    addition_samples: int = 1,
) -> Dict[str, object]:
    """Training FLOPs of SSVI and of dense VI over ``num_steps`` steps of ``batch_size`` examples.

    See the module docstring for the formula. ``update_interval`` / ``update_end`` define the
    update steps exactly as :class:`~pyro_ssvi.SSVI` does (:class:`~pyro_ssvi.schedule.SurgerySchedule`).

    :returns: dict with ``dense_vi_flops``, ``ssvi_theoretical_flops``, ``ssvi_executed_flops``
        (FLOPs, floats), ``relative_theoretical`` and ``relative_executed`` (SSVI / dense VI),
        ``num_updates``, ``forward_macs_per_example`` (dense, all Bayesian layers),
        ``density`` (MAC-weighted mean density) and ``per_site`` (site -> ``{"macs", "density"}``).
    """
    if num_steps < 1 or batch_size < 1 or addition_samples < 1:
        raise SSVIConfigError(
            f"need num_steps, batch_size, addition_samples >= 1, got {num_steps}, {batch_size}, {addition_samples}"
        )
    macs = layer_macs(model, example_input)
    dens = site_densities(model, densities)
    num_updates = SurgerySchedule(update_interval, update_end=update_end, num_steps=num_steps).num_updates()
    any_sparse = any(d < 1.0 for d in dens.values())
    if not any_sparse:
        num_updates = 0  # SSVI skips surgery when no site is sparse

    m_total = sum(macs.values())
    m_active = sum(macs[n] * dens[n] for n in macs)
    m_sparse_layers = sum(macs[n] for n in macs if dens[n] < 1.0)
    examples = num_steps * batch_size

    dense_vi = 12.0 * m_total * examples
    theoretical = 12.0 * m_active * examples + 2.0 * m_sparse_layers * num_updates * batch_size
    executed = (
        12.0 * m_total * (num_steps - num_updates) * batch_size
        + 6.0 * m_total * addition_samples * num_updates * batch_size
    )
    return {
        "dense_vi_flops": dense_vi,
        "ssvi_theoretical_flops": theoretical,
        "ssvi_executed_flops": executed,
        "relative_theoretical": theoretical / dense_vi,
        "relative_executed": executed / dense_vi,
        "num_steps": num_steps,
        "batch_size": batch_size,
        "num_updates": num_updates,
        "forward_macs_per_example": m_total,
        "density": m_active / m_total if m_total else math.nan,
        "per_site": {n: {"macs": macs[n], "density": dens[n]} for n in macs},
    }
