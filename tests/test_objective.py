"""The SSVI objective: KL over active entries (closed form and Monte Carlo), β, normalization,
and equivalence with pyro.infer.SVI."""

import pyro
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_ssvi import SSVI, MaskedAutoNormal, models
from pyro_ssvi.guides import softplus_inverse
from pyro_ssvi.handlers import MaskPriorMessenger

PRIOR = 0.3


def _setup(sparsity=0.6):
    model = models.mlp([6, 5, 4], prior_scale=PRIOR)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    guide = MaskedAutoNormal(model, sparsity=sparsity, seed=0)
    guide(x, y)
    with torch.no_grad():
        for name in guide.sites:
            loc, rho = guide.site_params(name)
            loc.copy_(torch.randn_like(loc) * 0.2 * guide.site_mask(name))
            rho.copy_(softplus_inverse(torch.rand_like(rho) * 0.2 + 0.05))
    return model, guide, x, y


def _hand_kl(guide):
    """sum over active entries of log(s_p/s_q) + (s_q^2 + m_q^2)/(2 s_p^2) - 1/2, in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for name in guide.sites:  # (no gradients needed)
        mask = guide.site_mask(name)
        m = guide.site_params(name)[0].double()[mask]
        s = guide.scale(name).double()[mask]
        total += (torch.log(PRIOR / s) + (s**2 + m**2) / (2 * PRIOR**2) - 0.5).sum()
    return float(total.detach())


def _kl_only_svi(model, guide, loss):
    # Hiding the observation leaves only the weight sites: the loss is beta * KL (or its MC estimate).
    latent_model = poutine.block(model, hide=["obs"])
    return SSVI(latent_model, guide, pyro.optim.SGD({"lr": 0.0}), loss, kl_max=1.0, kl_warmup=0.0)


def test_kl_is_closed_form_and_exact_for_trace_mean_field():
    model, guide, x, y = _setup()
    svi = _kl_only_svi(model, guide, TraceMeanField_ELBO())
    first, second = svi.evaluate_loss(x), svi.evaluate_loss(x)
    assert first == second  # no sampling involved: the KL is analytic
    assert first == pytest.approx(_hand_kl(guide), rel=1e-5)
    # Sparse sites go through the active-entries-only KL; it agrees with the dense masked one.
    from pyro_ssvi.distributions import ActiveSubspace, masked_normal_kl

    for name in guide.sites:
        q = guide.get_distribution(name)
        assert isinstance(q, ActiveSubspace)
        prior = model.net[int(name.split(".")[0])].weight_prior()
        dense = masked_normal_kl(q.base_dist.loc, q.base_dist.scale, q.base_dist.indicator, 0.0, PRIOR).sum()
        assert kl_divergence(q, prior).shape == () and torch.allclose(kl_divergence(q, prior), dense)
    # And the analytic pair is registered for the masked prior SSVI builds, and for the raw prior.
    for name in guide.sites:
        prior = model.net[int(name.split(".")[0])].weight_prior()
        masked_prior_msg = {"name": name, "fn": prior, "is_observed": False}
        MaskPriorMessenger(guide)._pyro_sample(masked_prior_msg)
        for p in (prior, masked_prior_msg["fn"]):
            kl_divergence(guide.get_distribution(name), p)  # raises NotImplementedError if missing


def test_kl_matches_in_expectation_for_trace_elbo():
    model, guide, x, y = _setup()
    svi = _kl_only_svi(model, guide, Trace_ELBO())
    draws = torch.tensor([svi.evaluate_loss(x) for _ in range(500)], dtype=torch.float64)
    se = draws.std() / len(draws) ** 0.5
    assert abs(draws.mean() - _hand_kl(guide)) < 5 * se


def test_inactive_entries_add_no_prior_term_under_trace_elbo():
    # Unmasked priors would add -log N(0 | 0, s_p^2) = 0.285 nats per inactive entry: 12.8 nats
    # over the 45 inactive entries here, against a standard error of ~0.1 for 200 draws.
    model, guide, x, y = _setup(sparsity=0.9)
    svi = _kl_only_svi(model, guide, Trace_ELBO())
    mean = sum(svi.evaluate_loss(x) for _ in range(200)) / 200
    assert mean == pytest.approx(_hand_kl(guide), abs=0.6)


def test_beta_and_per_datapoint_normalization():
    model, guide, x, y = _setup()
    n = 1000
    model.num_data = n
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.0}), TraceMeanField_ELBO(), kl_max=0.25,
               kl_warmup=0.0, num_data=n, lrt=False)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        loss = svi.evaluate_loss(x, y)
        # Same weight draw by hand: guide draws, model at those weights, mean NLL.
        pyro.set_rng_seed(3)
        trace = poutine.trace(guide).get_trace(x, y)
        logits = poutine.replay(model, trace=trace)(x)
    nll = torch.nn.functional.cross_entropy(logits, y, reduction="mean")
    assert loss == pytest.approx(float(nll) + 0.25 * _hand_kl(guide) / n, rel=1e-5)


def test_kl_warmup_schedule():
    model, guide, x, y = _setup()
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.0}), TraceMeanField_ELBO(), num_steps=100,
               kl_max=0.01, kl_warmup=0.5)
    assert svi.kl_weight(0) == 0.0
    assert svi.kl_weight(25) == pytest.approx(0.005)
    assert svi.kl_weight(50) == svi.kl_weight(99) == pytest.approx(0.01)


@pytest.mark.parametrize("elbo", [TraceMeanField_ELBO, Trace_ELBO])
def test_step_matches_pyro_svi(elbo):
    """Same loss and same updated parameters (guide and point estimates) as SVI.step with SSVI's
    defaults (β = 1, no normalization; no LRT, whose noise SVI would not draw alike)."""
    results = []
    for cls in ("svi", "ssvi"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide, x, y = _setup()
        optim = pyro.optim.SGD({"lr": 0.01, "momentum": 0.9})
        if cls == "svi":
            # The model's priors are SubspacePriors: plain SVI computes SSVI's objective as it is.
            runner = SVI(model, guide, optim, elbo())
        else:
            runner = SSVI(model, guide, optim, elbo(), lrt=False)
        pyro.set_rng_seed(1)
        losses = [runner.step(x, y) for _ in range(3)]
        state = {**guide.state_dict(), **model.state_dict()}
        results.append((losses, {k: v.detach().clone() for k, v in state.items()}))
    (loss_a, state_a), (loss_b, state_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for key in state_a:
        assert torch.allclose(state_a[key], state_b[key], atol=1e-7), key


def test_weight_draws_skipped_only_for_sites_routed_through_lrt_ops():
    """Under LRT + closed-form KL the guide's draws are unused; SSVI skips exactly those sites."""
    import pyro.distributions as dist
    import torch.nn.functional as F
    from pyro.nn import PyroModule, PyroSample

    from pyro_ssvi.handlers import SkippedDraw

    model, guide, x, y = _setup()
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.01}), TraceMeanField_ELBO(), kl_max=1.0, kl_warmup=0.0)
    svi.step(x, y)
    assert svi._needs_draws == set()
    trace = poutine.trace(svi._guide_lrt).get_trace(x, y)
    assert all(isinstance(trace.nodes[name]["value"], SkippedDraw) for name in guide.sites)

    class Plain(PyroModule):  # calls F.linear itself: LRT never sees its weight
        def __init__(self):
            super().__init__()
            self.w = PyroSample(dist.Normal(0.0, 1.0).expand([4, 6]).to_event(2))

        def forward(self, x, y=None):
            logits = F.linear(x, self.w)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
            return logits

    plain = Plain()
    plain_guide = MaskedAutoNormal(plain, sparsity=0.5, seed=0)
    svi = SSVI(plain, plain_guide, pyro.optim.SGD({"lr": 0.01}), TraceMeanField_ELBO())
    for _ in range(3):
        svi.step(x, y)
    assert svi._needs_draws == {"w"}  # F.linear used its stand-in once: drawn from then on
    trace = poutine.trace(svi._guide_lrt).get_trace(x, y)
    assert not isinstance(trace.nodes["w"]["value"], SkippedDraw)


def test_lrt_path_with_skipped_draws_matches_hand_computed_objective(monkeypatch):
    """The training path (LRT, skipped draws, lean loss) against eq. 3-4 written out by hand."""
    import torch.nn.functional as F

    model, guide, x, y = _setup()
    n, beta = 1000, 0.5
    model.num_data = n
    optim = torch.optim.SGD(list(guide.parameters()) + list(model.parameters()), lr=0.0)
    svi = SSVI(model, guide, optim, TraceMeanField_ELBO(), kl_max=beta, kl_warmup=0.0, num_data=n)
    svi.step(x, y)
    assert svi._needs_draws == set()  # no weight is drawn
    eps = 0.7  # fixed "noise", so the LRT output is deterministic
    monkeypatch.setattr(torch, "randn_like", lambda t: torch.full_like(t, eps))
    loss = svi.step(x, y)

    def layer(h, name, bias):
        mean, var = guide.moments(name)
        return F.linear(h, mean, bias) + F.linear(h * h, var).clamp_min(1e-16).sqrt() * eps

    with torch.no_grad():
        logits = layer(layer(x, "1.weight", model.net[1].bias).relu(), "3.weight", model.net[3].bias)
        expected = F.cross_entropy(logits, y) + beta * _hand_kl(guide) / n
    assert loss == pytest.approx(float(expected), rel=1e-5)
