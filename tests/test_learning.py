"""SSVI learns on real data (sklearn digits) and works on a model written in plain Pyro style."""

import time

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule, PyroSample

from pyro_ssvi import SSVI, MaskedAutoNormal, models
from pyro_ssvi.predictive import predict

from helpers import digits_split


def _train_digits(sparsity, epochs=30, batch=64, lr=0.05):
    xtr, ytr, xte, yte = digits_split()
    n = len(xtr)
    model = models.mlp([64, 256, 256, 10], prior_scale=1.0, num_data=n)
    guide = MaskedAutoNormal(model, sparsity=sparsity, seed=0)
    guide(xtr[:2], ytr[:2])
    optim = torch.optim.SGD(list(guide.parameters()) + list(model.parameters()), lr=lr, momentum=0.9)
    steps_per_epoch = (n + batch - 1) // batch
    svi = SSVI(model, guide, optim, TraceMeanField_ELBO(), num_steps=epochs * steps_per_epoch,
               update_interval=50, num_data=n)
    start = time.perf_counter()
    pyro.enable_validation(False)  # as in training runs
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch):
            svi.step(xtr[idx], ytr[idx])
    pred = predict(model, guide, xte, num_samples=5)
    return (pred.probs.argmax(1) == yte).float().mean().item(), time.perf_counter() - start, guide


@pytest.mark.parametrize("sparsity,target", [(0.9, 0.94), (0.0, 0.95)])
def test_digits_mlp_reaches_target_accuracy(sparsity, target):
    accuracy, seconds, guide = _train_digits(sparsity)
    print(f"digits sparsity={sparsity}: accuracy {accuracy:.4f} in {seconds:.1f} s")
    assert accuracy >= target
    assert seconds < 60
    assert guide.density() == pytest.approx(1 - sparsity, abs=1e-3)


class PyroStyleMLP(PyroModule):
    """A Bayesian MLP as Pyro's tutorials write it: PyroSample weights, F.linear, no pyro_ssvi ops."""

    def __init__(self, n_in=64, hidden=32, n_out=10):
        super().__init__()
        self.w1 = PyroSample(dist.Normal(0.0, 1.0).expand([hidden, n_in]).to_event(2))
        self.w2 = PyroSample(dist.Normal(0.0, 1.0).expand([n_out, hidden]).to_event(2))

    def forward(self, x, y=None):
        logits = F.linear(F.linear(x, self.w1).relu(), self.w2)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits


def test_pyro_style_model_trains_with_trace_elbo():
    xtr, ytr, xte, yte = digits_split()
    model = PyroStyleMLP()
    guide = MaskedAutoNormal(model, sparsity=0.9, init_scale=0.01, seed=0)
    svi = SSVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(), num_steps=300,
               update_interval=25, kl_max=1.0, kl_warmup=0.0, num_data=len(xtr))
    x, y = xtr[:256], ytr[:256]
    for _ in range(300):
        svi.step(x, y)
    assert set(guide.sites) == {"w1", "w2"}
    assert len(svi.surgery_log) == 8  # steps 25, 50, ..., 200 (< 0.75 * 300)
    for name, info in guide.sites.items():
        assert int(guide.site_mask(name).sum()) == info.num_active
    pred = predict(model, guide, xte, num_samples=5)
    assert (pred.probs.argmax(1) == yte).float().mean() > 0.7
