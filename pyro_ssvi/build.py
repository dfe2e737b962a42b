"""Build a run's model, guide, optimizer, schedule and SSVI object from a validated config.

Used by :mod:`pyro_ssvi.train` and by :func:`pyro_ssvi.checkpoint.load`, so a saved posterior
is rebuilt exactly as it was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from . import models
from .guides import MaskedAutoNormal, init_to_normal
from .svi import SSVI
from .variant import Variant, get_variant

__all__ = [
    "DataInfo", "build_guide", "build_model", "build_optimizer", "build_scheduler", "build_svi", "method_variant",
    "setup_guide",
]


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data: input shape (C, H, W) or (D,), classes (1 for a
    regression), training size N, and the task."""

    input_shape: Tuple[int, ...]
    num_classes: int
    num_data: int
    task: str = "classification"


def build_model(cfg: DictConfig, info: DataInfo) -> models.BayesianNetwork:
    """``model.name`` (mlp | resnet18) sized for ``info``; the plate scales the likelihood to N.
    A regression gets a Normal likelihood with a learned noise scale."""
    m = cfg.model
    if m.name == "mlp":
        regression = info.task == "regression"
        sizes = [math.prod(info.input_shape), *m.hidden, 1 if regression else info.num_classes]
        return models.mlp(sizes, prior_scale=m.prior_scale, num_data=info.num_data,
                          likelihood="normal" if regression else "categorical")
    return models.resnet18(
        info.num_classes, prior_scale=m.prior_scale, width=m.width, num_data=info.num_data,
        in_channels=info.input_shape[0],
    )


def method_variant(cfg: DictConfig) -> Variant:
    """``method.variant`` (a preset name or a mapping of :class:`~pyro_ssvi.variant.Variant`
    fields; the paper's when absent, as in configs written before it existed)."""
    variant = cfg.method.get("variant", "paper")
    if OmegaConf.is_config(variant):
        variant = OmegaConf.to_container(variant, resolve=True)
    return get_variant(variant)


def build_guide(cfg: DictConfig, model) -> MaskedAutoNormal:
    """A :class:`MaskedAutoNormal` at ``method.sparsity`` and ``method.variant``; masks seeded from ``seed``."""
    m = cfg.model
    init_scale = m.init_scale
    if OmegaConf.is_list(init_scale):
        init_scale = tuple(float(v) for v in init_scale)
    dense = list(m.dense_sites) if m.dense_sites is not None else None
    return MaskedAutoNormal(
        model,
        sparsity=float(cfg.method.sparsity),
        dense_sites=dense,
        init_loc_fn=init_to_normal(m.init_loc_std),
        init_scale=init_scale,
        seed=int(cfg.seed),
        variant=method_variant(cfg),
    )


def setup_guide(guide: MaskedAutoNormal, model, input_shape: Sequence[int], device: torch.device) -> None:
    """Create the guide's sites with one call on a dummy batch [2, *input_shape] with targets of
    the model's likelihood (they make ``obs`` an observation, as in training, rather than a
    latent); a model without a ``likelihood`` gets none."""
    likelihood = getattr(model, "likelihood", None)
    targets = likelihood.example_targets(2, device) if likelihood is not None else None
    with torch.no_grad():
        guide(torch.zeros(2, *input_shape, device=device), targets)


def build_optimizer(cfg: DictConfig, model, guide: MaskedAutoNormal) -> torch.optim.Optimizer:
    """One ``train.optimizer`` (SGD with ``train.momentum``, or Adam) over two groups: means +
    point estimates (``train.lr``, ``weight_decay``) and rhos (``train.sigma_lr``,
    ``sigma_weight_decay``). Call after :func:`setup_guide`."""
    t = cfg.train
    means = guide.loc_parameters() + list(model.parameters())
    groups = [
        {"params": means, "lr": t.lr, "weight_decay": t.weight_decay, "name": "means"},
        {"params": guide.rho_parameters(), "lr": t.sigma_lr, "weight_decay": t.sigma_weight_decay, "name": "sigmas"},
    ]
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)


class _Cosine:
    """lr factor ``(1 + cos(pi * t / T)) / 2`` at step t (a class, so the scheduler pickles)."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


class _Constant:
    def __call__(self, step: int) -> float:
        return 1.0


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, num_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step lr multiplier: cosine annealing to 0 over ``num_steps``, or constant."""
    factor = _Cosine(num_steps) if cfg.train.lr_schedule == "cosine" else _Constant()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_svi(cfg: DictConfig, model, guide, optimizer, num_steps: int, num_data: int) -> SSVI:
    """SSVI with the ``method`` settings (``method.variant`` is the guide's, see :func:`build_guide`);
    the loss is per data point (``num_data`` = N)."""
    m = cfg.method
    loss = TraceMeanField_ELBO() if m.loss == "mean_field" else Trace_ELBO()
    sigma_init = m.sigma_init if m.sigma_init == "mean" else float(m.sigma_init)
    return SSVI(
        model, guide, optimizer, loss,
        num_steps=num_steps,
        update_interval=int(m.update_interval),
        drop_fraction=float(m.drop_fraction),
        update_end=float(m.update_end),
        removal=m.removal,
        removal_lambda=m.removal_lambda,
        addition=m.addition,
        addition_samples=int(m.get("addition_samples", 4)),
        addition_window=m.get("addition_window", "batch"),
        sigma_init=sigma_init,
        kl_max=float(m.kl_max),
        kl_warmup=float(m.kl_warmup),
        num_data=int(num_data),
        lrt=bool(m.lrt),
    )
