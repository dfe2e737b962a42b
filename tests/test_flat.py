"""The guide's flat per-step math (pyro_ssvi.guides.flat) against per-site plain-PyTorch references."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceMeanField_ELBO

from pyro_ssvi import SSVI, MaskedAutoNormal, models
from pyro_ssvi.guides.flat import unravel
from pyro_ssvi.objective import mean_field_loss

PRIOR = 0.4


def _guide(sparsity=0.7, dtype=torch.float64):
    model = models.mlp([5, 6, 3], prior_scale=PRIOR).to(dtype)
    x, y = torch.randn(7, 5, dtype=dtype), torch.randint(0, 3, (7,))
    guide = MaskedAutoNormal(model, sparsity=sparsity, seed=1, init_scale=0.1)
    guide(x, y)
    with torch.no_grad():
        for name in guide.sites:
            loc, rho = guide.site_params(name)
            loc.copy_(torch.randn_like(loc) * guide.site_mask(name))
            rho.normal_(-2.0, 0.5)
    return model, guide, x, y


def _hand_kl(guide, prior):
    """Per site, per active entry: log(s_p/s) + (s^2 + m^2) / (2 s_p^2) - 1/2 (differentiable)."""
    total = 0.0
    for name in guide.sites:
        loc, rho = guide.site_params(name)
        mask = guide.site_mask(name)
        m, s = loc[mask], F.softplus(rho)[mask]
        total = total + (torch.log(prior / s) + (s**2 + m**2) / (2 * prior**2) - 0.5).sum()
    return total


def test_flat_kl_value_and_gradients_match_per_site_formula():
    model, guide, x, y = _guide()
    latent_only = pyro.poutine.block(model, hide=["obs"])
    loss = mean_field_loss(latent_only, guide, x)
    grads = torch.autograd.grad(loss, list(guide.parameters()))
    # The prior buffer was made in float32 and cast: 0.4 is 0.4000000059604645 here.
    expected = _hand_kl(guide, float(model.net[1].prior_scale))
    expected_grads = torch.autograd.grad(expected, list(guide.parameters()))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_lean_loss_takes_the_flat_kl_and_equals_pyro_trace_mean_field_elbo(monkeypatch):
    from pyro_ssvi.guides.flat import FlatMoments
    from pyro_ssvi.handlers import UseMeansMessenger

    model, guide, x, y = _guide(dtype=torch.float32)
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.0}), TraceMeanField_ELBO(), lrt=False, num_data=100, kl_max=0.3)
    calls = []
    flat_kl = FlatMoments.kl
    monkeypatch.setattr(FlatMoments, "kl", lambda self, priors: calls.append(1) or flat_kl(self, priors))
    # Weights at their means: the likelihood term is deterministic, so both estimators are exact.
    at_means = svi._beta(UseMeansMessenger(set(guide.sites))(guide))
    ours = float(mean_field_loss(svi._model_sampled, at_means, x, y).detach())
    assert calls == [1]  # one KL for all weight sites
    pyros = TraceMeanField_ELBO().loss(svi._model_sampled, at_means, x, y)  # per-site registered KLs
    assert ours == pytest.approx(pyros, rel=1e-5)


def test_mask_change_refreshes_flat_indicator_and_active_index():
    model, guide, x, y = _guide()
    layout = guide.flat_layout()
    before = layout.active.clone()
    mask = guide.site_mask("1.weight")
    with torch.no_grad():  # swap one active and one inactive entry, as surgery does, in place
        on, off = mask.reshape(-1).nonzero()[0, 0], (~mask).reshape(-1).nonzero()[0, 0]
        mask.view(-1)[on], mask.view(-1)[off] = False, True
    layout = guide.flat_layout()
    flat_mask = torch.cat([guide.site_mask(n).reshape(-1) for n in layout.names])
    assert torch.equal(layout.active, flat_mask.nonzero().squeeze(1)) and not torch.equal(layout.active, before)
    assert torch.equal(layout.indicator, flat_mask.double())
    assert torch.equal(guide.site_indicator("1.weight"), mask.double())


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5)])
def test_unravel_matches_torch(shape):
    flat = torch.randperm(torch.Size(shape).numel())[:6]
    for got, want in zip(unravel(flat, torch.Size(shape)), torch.unravel_index(flat, shape)):
        assert torch.equal(got, want)
