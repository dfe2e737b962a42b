"""A Bayesian MLP regression with SSVI, written as an ordinary Pyro model (CPU, ~10 s).

scikit-learn's diabetes data (442 patients, 10 features; standardised, 342 train / 100 test).
The model is plain Pyro: ``PyroModule`` layers with ``PyroSample`` weights and a learned noise
scale ``sigma ~ HalfNormal(1)``. ``MaskedAutoNormal`` keeps 10% of each weight matrix Bayesian
(the rest exactly 0) and fits ``sigma`` with a dense Normal in log space; ``SSVI`` with its
defaults optimises the true ELBO. A dense ``AutoNormal`` + ``pyro.infer.SVI`` fit of the same
model is the baseline. Predictions come from ``pyro.infer.Predictive``.

    python examples/regression.py
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_ssvi
from pyro_ssvi import SSVI, MaskedAutoNormal

HIDDEN = 50
STEPS = 1500


class BayesianMLP(PyroModule):
    """``y ~ Normal(f(x), sigma)``, f a one-hidden-layer ReLU net with N(0, 1) weights and biases."""

    def __init__(self, in_features: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = PyroModule[nn.Linear](in_features, hidden)
        self.hidden.weight = PyroSample(dist.Normal(0.0, 1.0).expand([hidden, in_features]).to_event(2))
        self.hidden.bias = PyroSample(dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        self.out = PyroModule[nn.Linear](hidden, 1)
        self.out.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, hidden]).to_event(2))
        self.out.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro_ssvi.nn.enable_lrt(self)  # the layers' weights get local reparameterization under SSVI

    def forward(self, x, y=None):
        mean = self.out(self.hidden(x).relu()).squeeze(-1)
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def diabetes_split(seed: int = 0):
    """Standardised diabetes data (statistics of the training split): x_train [342, 10], y_train,
    x_test [100, 10], y_test."""
    from sklearn.datasets import load_diabetes

    x, y = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:342], order[342:]
    x_mean, x_std, y_mean, y_std = x[train].mean(0), x[train].std(0), y[train].mean(), y[train].std()
    x, y = (x - x_mean) / x_std, (y - y_mean) / y_std
    return x[train], y[train], x[test], y[test]


def evaluate(model, guide, x, y, num_samples: int = 1000) -> dict:
    """Test RMSE of the predictive mean and coverage of the central 90% predictive interval,
    from ``pyro.infer.Predictive`` samples of ``obs``."""
    samples = Predictive(model, guide=guide, num_samples=num_samples, return_sites=["obs"])(x)["obs"]
    lower, upper = samples.quantile(0.05, dim=0), samples.quantile(0.95, dim=0)
    return {
        "rmse": float((samples.mean(0) - y).pow(2).mean().sqrt()),
        "coverage_90": float(((y >= lower) & (y <= upper)).float().mean()),
    }


def fit_ssvi(x, y, seed: int = 0):
    """SSVI at 90% sparsity with SSVI's defaults (the true ELBO); returns (model, guide)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = BayesianMLP(x.shape[1])
    guide = MaskedAutoNormal(model, sparsity=0.9)
    svi = SSVI(model, guide, pyro.optim.Adam({"lr": 0.01}), TraceMeanField_ELBO(), num_steps=STEPS)
    for _ in range(STEPS):
        svi.step(x, y)
    return model, guide


def fit_dense_baseline(x, y, seed: int = 0):
    """Dense mean-field VI: Pyro's AutoNormal and SVI; returns (model, guide)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = BayesianMLP(x.shape[1])
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), TraceMeanField_ELBO())
    for _ in range(STEPS):
        svi.step(x, y)
    return model, guide


def main() -> None:
    torch.set_num_threads(1)  # a model this small is Python-bound
    pyro.enable_validation(False)
    x_train, y_train, x_test, y_test = diabetes_split()
    for label, fit in (("SSVI, 90% sparse", fit_ssvi), ("AutoNormal (dense)", fit_dense_baseline)):
        model, guide = fit(x_train, y_train)
        result = evaluate(model, guide, x_test, y_test)
        print(f"{label:20s} test RMSE {result['rmse']:.3f}  90% interval coverage {result['coverage_90']:.2f}")


if __name__ == "__main__":
    main()
