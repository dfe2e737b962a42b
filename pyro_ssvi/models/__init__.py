"""Bayesian neural networks as Pyro models ``model(x, y=None)`` with a likelihood of choice."""

from .bayesianize import bayesianize
from .layers import BayesConv2d, BayesianLayer, BayesLinear
from .likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from .mlp import mlp
from .network import BayesianClassifier, BayesianNetwork, from_spec
from .resnet import resnet18

__all__ = [
    "BayesConv2d",
    "BayesLinear",
    "BayesianClassifier",
    "BayesianLayer",
    "BayesianNetwork",
    "LIKELIHOODS",
    "Likelihood",
    "bayesianize",
    "from_spec",
    "get_likelihood",
    "mlp",
    "resnet18",
]
