"""predict() for any likelihood (issue 12): summaries chosen from the observation's family,
checked against pyro.infer.Predictive and hand formulas; and the regression metrics."""

import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

from pyro_ssvi import MaskedAutoNormal, models, ops
from pyro_ssvi.mixture import PredictiveMixture
from pyro_ssvi.predictive import ClassPrediction, Prediction, RegressionPrediction, predict
from pyro_ssvi.regression_metrics import crps_from_samples, quantile_calibration, regression_metrics


def _fitted(likelihood, out, n=40, d=3, init_scale=0.3):
    model = models.mlp([d, 8, out], likelihood=likelihood)
    guide = MaskedAutoNormal(model, sparsity=0.5, init_scale=init_scale, seed=0)
    x = torch.randn(n, d)
    y = torch.randn(n) if likelihood in ("normal", "heteroscedastic_normal") else torch.randint(0, 2, (n,)).float()
    guide(x, y)
    return model, guide, x


def test_normal_likelihood_summary_matches_pyro_predictive_within_monte_carlo_error():
    model, guide, x = _fitted("normal", 1)
    pyro.set_rng_seed(0)
    pred = predict(model, guide, x, num_samples=400)
    assert isinstance(pred, RegressionPrediction) and pred.note is None
    assert pred.returns.shape == (400, 40) and pred.observations["obs"].shape == (400, 40)
    # Hand decomposition: the draws' means and variances.
    means, variances = pred.mixture.component_means, pred.mixture.component_variances
    assert torch.allclose(pred.epistemic_variance, means.var(0, unbiased=False))
    assert torch.allclose(pred.aleatoric_variance, variances.mean(0))
    assert torch.allclose(pred.total_variance, pred.epistemic_variance + pred.aleatoric_variance)
    assert torch.allclose(pred.mean, pred.returns.mean(0), atol=1e-5)  # the model returns the mean
    # Pyro's own Predictive: the same predictive distribution, sampled.
    obs = Predictive(model, guide=guide, num_samples=4000, return_sites=["obs"])(x)["obs"].reshape(4000, 40)
    se = obs.std(0) / 4000**0.5
    assert ((obs.mean(0) - pred.mean).abs() < 5 * se + 5 * pred.total_variance.sqrt() / 400**0.5).all()
    assert torch.allclose(obs.var(0), pred.total_variance, rtol=0.15)


def test_intervals_are_the_mixture_quantiles():
    model, guide, x = _fitted("normal", 1)
    pred = predict(model, guide, x, num_samples=30, levels=(0.5, 0.9))
    for level, (lower, upper) in pred.intervals.items():
        inside = pred.mixture.cdf(upper) - pred.mixture.cdf(lower)
        assert torch.allclose(inside, torch.full_like(inside, level), atol=1e-4)
        samples = pred.mixture.sample(2000)
        assert torch.allclose(samples.quantile((1 + level) / 2, dim=0), upper, atol=0.06 * pred.total_variance.sqrt().max())


def test_heteroscedastic_normal_and_bernoulli():
    model, guide, x = _fitted("heteroscedastic_normal", 2)
    pred = predict(model, guide, x, num_samples=4)
    assert isinstance(pred, RegressionPrediction)
    raw = pred.mixture.params["scale"]
    assert raw.shape == (4, 40) and not torch.allclose(raw[:, 0], raw[:, 1])  # one scale per input
    model, guide, x = _fitted("bernoulli", 1)
    pred = predict(model, guide, x, num_samples=4)
    assert isinstance(pred, ClassPrediction) and pred.probs.shape == (40, 2)
    assert torch.allclose(pred.samples[..., 1], pred.returns.sigmoid(), atol=1e-6)
    assert torch.allclose(pred.probs.sum(-1), torch.ones(40))


def test_regression_paths_lrt_and_chunks():
    model, guide, x = _fitted("normal", 1)
    whole = predict(model, guide, x, mode="mean", batch_size=None)
    chunked = predict(model, guide, x, mode="mean", batch_size=7)
    assert torch.equal(whole.mean, chunked.mean) and torch.equal(whole.mixture.params["scale"],
                                                                 chunked.mixture.params["scale"])
    # Sampling: chunks (and local reparameterization) change the random stream, not the predictive.
    pyro.set_rng_seed(1)
    reference = predict(model, guide, x, num_samples=400)
    for kwargs in ({"batch_size": 7}, {"local_reparameterization": True}):
        other = predict(model, guide, x, num_samples=400, **kwargs)
        se = (reference.epistemic_variance / 400).sqrt()
        assert ((other.mean - reference.mean).abs() < 6 * se + 1e-6).all(), kwargs


def poisson_counts(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([1, x.shape[1]]).to_event(2))
    rate = ops.linear(x, w, None).squeeze(-1).exp()
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Poisson(rate), obs=y)
    return rate


def two_outputs(x, a=None, b=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2, x.shape[1]]).to_event(2))
    out = ops.linear(x, w, None)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("a", dist.Normal(out[:, 0], 1.0), obs=a)
        pyro.sample("b", dist.Normal(out[:, 1], 1.0), obs=b)


@pytest.mark.parametrize("model, note", [(poisson_counts, "no summary for a Poisson likelihood"),
                                         (two_outputs, r"2 observation sites \['a', 'b'\]")])
def test_other_likelihoods_get_the_draws_and_a_note_never_a_softmax(model, note):
    x = torch.randn(10, 3)
    guide = MaskedAutoNormal(model, sparsity=0.5, seed=0)
    guide(x, torch.ones(10)) if model is poisson_counts else guide(x, torch.zeros(10), torch.zeros(10))
    pred = predict(model, guide, x, num_samples=3)
    assert type(pred) is Prediction and re.search(note, pred.note)
    assert all(v.shape[:2] == (3, 10) for v in pred.observations.values())


# ------------------------------------------------------------------ regression metrics against hand formulas
def _mixture(locs, scales):
    return PredictiveMixture("Normal", {"loc": torch.tensor(locs, dtype=torch.float64),
                                        "scale": torch.tensor(scales, dtype=torch.float64)})


def test_regression_metrics_by_hand():
    # Two draws, three targets.
    mix = _mixture([[0.0, 1.0, 2.0], [0.2, 1.4, 1.8]], [[1.0, 0.5, 0.3], [1.2, 0.4, 0.3]])
    y = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    m = regression_metrics(mix, y)
    mean = torch.tensor([0.1, 1.2, 1.9], dtype=torch.float64)
    assert m["rmse"] == pytest.approx(float((mean - y).pow(2).mean().sqrt()))
    assert m["mae"] == pytest.approx(float((mean - y).abs().mean()))
    density = [0.5 * sum(math.exp(-0.5 * ((yv - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                         for mu, s in ((l0, s0), (l1, s1)))
               for yv, l0, s0, l1, s1 in zip(y.tolist(), *([0.0, 1.0, 2.0], [1.0, 0.5, 0.3], [0.2, 1.4, 1.8], [1.2, 0.4, 0.3]))]
    assert m["nll"] == pytest.approx(-sum(math.log(d) for d in density) / 3, rel=1e-9)
    lower, upper = mix.interval(0.9)
    assert m["coverage_90"] == pytest.approx(float(((y >= lower) & (y <= upper)).double().mean()))
    assert m["width_90"] == pytest.approx(float((upper - lower).mean()))


def test_crps_equals_the_closed_form_of_a_normal():
    # CRPS(N(mu, s), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (y - mu) / s.
    torch.manual_seed(0)
    y = torch.tensor([0.0, 0.7, -2.0], dtype=torch.float64)
    s = 1.5
    z = y / s
    normal = torch.distributions.Normal(0.0, 1.0)
    exact = s * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))
    samples = torch.randn(200_000, 3, dtype=torch.float64) * s
    assert torch.allclose(crps_from_samples(samples, y), exact, atol=5e-3)


def test_crps_agrees_with_scoringrules():
    sr = pytest.importorskip("scoringrules")
    torch.manual_seed(1)
    samples, y = torch.randn(50, 7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    expected = sr.crps_ensemble(y.numpy(), samples.T.numpy(), estimator="nrg")
    assert torch.allclose(crps_from_samples(samples, y), torch.as_tensor(expected), atol=1e-10)


def test_quantile_calibration_of_targets_drawn_from_the_predictive_is_flat():
    torch.manual_seed(2)
    mix = _mixture([[0.0] * 4000, [1.0] * 4000], [[1.0] * 4000, [0.5] * 4000])
    y = mix.sample(1)[torch.randint(0, 2, (4000,)), torch.arange(4000)]
    expected, observed = quantile_calibration(mix, y)
    assert (observed - expected).abs().max() < 0.03
    shifted = quantile_calibration(mix, y + 1.0)[1]
    assert (shifted - expected).abs().mean() > 0.1  # a biased predictive is caught


def test_bayesianize_takes_a_likelihood_and_its_noise_latent_is_fitted():
    from pyro.infer import TraceMeanField_ELBO

    from pyro_ssvi import SSVI

    net = models.bayesianize(nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1)), likelihood="normal")
    x = torch.randn(200, 3)
    y = x[:, 0] + 0.2 * torch.randn(200)
    guide = MaskedAutoNormal(net, sparsity=0.5, seed=0)
    svi = SSVI(net, guide, pyro.optim.Adam({"lr": 0.03}), TraceMeanField_ELBO())
    for _ in range(400):
        svi.step(x, y)
    assert set(guide.latent_sites) == {"sigma"}
    assert guide.median()["sigma"].item() == pytest.approx(0.2, rel=0.5)
    assert isinstance(predict(net, guide, x, num_samples=3), RegressionPrediction)
