"""Sparse Subspace Variational Inference (SSVI, Li et al., ICLR 2024) for Bayesian neural networks in Pyro.

>>> import pyro
>>> from pyro.infer import TraceMeanField_ELBO
>>> from pyro_ssvi import SSVI, MaskedAutoNormal, models
>>> model = models.mlp([64, 256, 10], num_data=1000)
>>> guide = MaskedAutoNormal(model, sparsity=0.9)
>>> svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.05}), TraceMeanField_ELBO(), num_steps=1000, num_data=1000)
"""

from . import criteria, handlers, models, nn, ops
from .distributions import MaskedNormal, SubspacePrior
from .errors import NonFiniteLossError, NonFiniteOutputError, SSVIConfigError, SSVIError
from .checkpoint import load
from .export import export, load_posterior
from .guides import MaskedAutoNormal
from .svi import PAPER_RECIPE, SSVI

__version__ = "0.1.0"

__all__ = [
    "MaskedAutoNormal",
    "MaskedNormal",
    "NonFiniteLossError",
    "NonFiniteOutputError",
    "PAPER_RECIPE",
    "SSVI",
    "SSVIConfigError",
    "SSVIError",
    "SubspacePrior",
    "criteria",
    "export",
    "handlers",
    "load",
    "load_posterior",
    "models",
    "nn",
    "ops",
]
