"""Posterior predictive: shapes, shared weight draws, uncertainty decomposition, pyro.infer.Predictive."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Predictive

from pyro_ssvi import MaskedAutoNormal, SSVIConfigError, models
from pyro_ssvi.predictive import predict


def _model_guide():
    model = models.mlp([5, 8, 4])
    guide = MaskedAutoNormal(model, sparsity=0.5, init_scale=0.3, seed=0)
    x = torch.randn(23, 5)
    guide(x, torch.randint(0, 4, (23,)))
    return model, guide, x


def test_shapes_and_decomposition():
    model, guide, x = _model_guide()
    pred = predict(model, guide, x, num_samples=6)
    assert pred.samples.shape == (6, 23, 4) and pred.probs.shape == (23, 4)
    assert torch.allclose(pred.probs, pred.samples.mean(0))
    assert torch.allclose(pred.probs.sum(-1), torch.ones(23))
    hand_entropy = -(pred.probs * pred.probs.log()).sum(-1)
    hand_expected = -(pred.samples * pred.samples.log()).sum(-1).mean(0)
    assert torch.allclose(pred.entropy, hand_entropy, atol=1e-6)
    assert torch.allclose(pred.expected_entropy, hand_expected, atol=1e-6)
    assert torch.allclose(pred.mutual_information, (hand_entropy - hand_expected).clamp_min(0), atol=1e-6)
    assert (pred.mutual_information > 0).any()  # the draws disagree: sigma is large here


def test_one_weight_draw_is_shared_by_all_chunks():
    model, guide, x = _model_guide()
    pyro.set_rng_seed(5)
    whole = predict(model, guide, x, num_samples=3, batch_size=None)
    pyro.set_rng_seed(5)
    chunked = predict(model, guide, x, num_samples=3, batch_size=4)
    assert torch.allclose(whole.samples, chunked.samples, atol=1e-6)


def test_mean_mode_uses_posterior_means():
    model, guide, x = _model_guide()
    pred = predict(model, guide, x, mode="mean")
    w1, w2 = guide.moments("1.weight")[0], guide.moments("3.weight")[0]
    logits = F.linear(F.linear(x, w1, model.net[1].bias).relu(), w2, model.net[3].bias)
    assert pred.samples.shape[0] == 1
    assert torch.allclose(pred.probs, logits.softmax(-1), atol=1e-6)


def test_bad_arguments():
    model, guide, x = _model_guide()
    with pytest.raises(SSVIConfigError, match="mode must be"):
        predict(model, guide, x, mode="median")
    with pytest.raises(SSVIConfigError, match="num_samples"):
        predict(model, guide, x, num_samples=0)


def test_works_with_pyro_predictive():
    model, guide, x = _model_guide()
    samples = Predictive(model, guide=guide, num_samples=7, return_sites=["obs", "1.weight"])(x)
    assert samples["obs"].shape == (7, 23)
    weights = samples["1.weight"]
    assert weights.shape == (7, 1, 8, 5)  # Predictive keeps a singleton dim for the data plate
    weights = weights.squeeze(1)
    assert (weights[:, ~guide.site_mask("1.weight")] == 0).all()
