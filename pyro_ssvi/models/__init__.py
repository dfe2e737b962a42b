"""Bayesian neural networks as Pyro models: ``model(x, y=None) -> logits``."""

from .bayesianize import bayesianize
from .classifier import BayesianClassifier
from .layers import BayesConv2d, BayesianLayer, BayesLinear
from .mlp import mlp
from .resnet import resnet18

__all__ = ["BayesConv2d", "BayesLinear", "BayesianClassifier", "BayesianLayer", "bayesianize", "mlp", "resnet18"]
