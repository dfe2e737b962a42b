"""The authors' code's variants (pyro_ssvi.variant), each against hand-computed numbers, and
grad_mean with every latent at its mean against plain PyTorch."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceMeanField_ELBO

from pyro_ssvi import SSVI, MaskedAutoNormal, SSVIConfigError, ops
from pyro_ssvi.guides import num_active_entries, softplus_inverse
from pyro_ssvi.handlers import lrt
from pyro_ssvi.surgery import update_site
from pyro_ssvi.surgery_step import drop_count
from pyro_ssvi.variant import AUTHORS, PAPER, Variant, get_variant


def _site_4x5():
    """A 4x5 site: rows 0-1 active; the two lowest removal scores at flat 0 and 1; sigma 1 at
    flat 2-5, 3 at flat 6-9 (the kept entries); momentum 1 everywhere active."""
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:2] = True
    loc = torch.where(mask, torch.arange(1.0, 21.0).view(4, 5), 0.0)
    sigma = torch.full((20,), 0.5)
    sigma[2:6], sigma[6:10] = 1.0, 3.0
    rho = softplus_inverse(sigma.double()).float().view(4, 5)
    removal = torch.arange(20.0).view(4, 5)
    addition = torch.zeros(4, 5)
    addition.view(-1)[[0, 15, 17]] = torch.tensor([9.0, 8.0, 7.0])  # flat 0 was active
    momentum = mask.float().clone()
    return loc, rho, mask, removal, addition, momentum


def _update(sigma_init="mean", regrow_removed=False):
    loc, rho, mask, removal, addition, momentum = _site_4x5()
    old_loc, old_rho = loc.clone(), rho.clone()
    state = {"momentum_buffer": momentum}
    update_site(loc, rho, mask, removal, addition, 2, sigma_init, lambda p: state, regrow_removed=regrow_removed)
    return loc.view(-1), rho.view(-1), mask.view(-1), momentum.view(-1), old_loc.view(-1), old_rho.view(-1)


def test_regrown_sigma_mean_sigma_vs_softplus_of_mean_rho():
    # Kept entries (flat 2-9): four at sigma 1, four at sigma 3.
    _, rho, *_ = _update("mean")
    assert F.softplus(rho[15]).item() == pytest.approx(2.0, rel=1e-6)  # the paper: mean sigma
    _, rho, *_ = _update("mean_rho")
    mean_rho = (math.log(math.e - 1) + math.log(math.e ** 3 - 1)) / 2
    assert F.softplus(rho[15]).item() == pytest.approx(math.log1p(math.exp(mean_rho)), rel=1e-6)  # 1.906


def test_regrowing_a_just_removed_entry_keeps_its_values():
    loc, rho, mask, momentum, old_loc, old_rho = _update(regrow_removed=False)
    # The paper: flat 0 and 1 leave, the best two previously inactive (15, 17) arrive.
    assert mask.nonzero().view(-1).tolist() == [*range(2, 10), 15, 17]
    assert loc[0] == loc[1] == momentum[0] == momentum[1] == 0
    loc, rho, mask, momentum, old_loc, old_rho = _update(regrow_removed=True)
    # The authors: flat 0 (score 9) is removed and regrown at once, keeping mu, rho, momentum;
    # flat 1 leaves; flat 15 arrives fresh.
    assert mask.nonzero().view(-1).tolist() == [0, *range(2, 10), 15]
    assert loc[0] == old_loc[0] == 1.0 and rho[0] == old_rho[0] and momentum[0] == 1.0
    assert loc[1] == 0 and momentum[1] == 0
    assert loc[15] == 0 and momentum[15] == 0 and F.softplus(rho[15]).item() == pytest.approx(2.0, rel=1e-6)
    assert torch.equal(rho[1:15], old_rho[1:15])


def _lrt_output(epsilon, x, loc, sigma, monkeypatch):
    """One LRT linear layer's output with the noise fixed at +1: mean + std."""
    def model(x):
        zero = torch.zeros((), dtype=x.dtype)
        w = pyro.sample("w", dist.Normal(zero, 1.0).expand([1, 2]).to_event(2))
        return ops.linear(x, w)

    guide = MaskedAutoNormal(model, sparsity=0.0)
    guide(x)
    site_loc, site_rho = guide.site_params("w")
    with torch.no_grad():
        site_loc.copy_(loc)
        site_rho.copy_(softplus_inverse(sigma))
    monkeypatch.setattr(torch, "randn_like", torch.ones_like)
    with lrt(guide=guide, epsilon=epsilon):
        return pyro.poutine.replay(model, trace=pyro.poutine.trace(guide).get_trace(x))(x)


def test_lrt_epsilon_inside_the_square_root(monkeypatch):
    loc = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    sigma = torch.tensor([[0.2, 0.1]], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    # Hand: mean = 0.5 - 2 = -1.5, var = 0.04 + 4 * 0.01 = 0.08; a zero input has var 0.
    paper = _lrt_output(0.0, x, loc, sigma, monkeypatch).view(-1)
    authors = _lrt_output(1e-8, x, loc, sigma, monkeypatch).view(-1)
    assert paper[0].item() == pytest.approx(-1.5 + math.sqrt(0.08), rel=1e-14)
    assert authors[0].item() == pytest.approx(-1.5 + math.sqrt(0.08 + 1e-8), rel=1e-14)
    assert paper[1].item() == pytest.approx(1e-8)  # the 1e-16 variance floor
    assert authors[1].item() == pytest.approx(1e-4)


def test_drop_count_round_vs_truncate():
    assert drop_count(0.29, 10, 20, PAPER) == 3  # round(2.9)
    assert drop_count(0.29, 10, 20, Variant(drop_count="truncate")) == 2  # int(2.9)
    # Never more than the candidates for regrowth: inactive ones (paper) or all removable.
    assert drop_count(0.9, 10, 14, PAPER) == 4
    assert drop_count(0.9, 10, 14, Variant(regrow_removed=True)) == 9


def test_initial_active_count_round_vs_truncate():
    assert num_active_entries(25, 0.9) == 2  # round(2.5), banker's rounding
    assert num_active_entries(25, 0.9, "truncate") == 3  # 25 - int(22.5)
    assert num_active_entries(20, 0.9, "truncate") == num_active_entries(20, 0.9) == 2

    def model():
        pyro.sample("w", dist.Normal(0.0, 1.0).expand([5, 5]).to_event(2))

    for variant, active in ((None, 2), ("authors", 3)):
        guide = MaskedAutoNormal(model, sparsity=0.9, seed=0, variant=variant)
        guide()
        assert guide.sites["w"].num_active == int(guide.site_mask("w").sum()) == active


def _tiny_svi(guide_variant=None, svi_variant=None):
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([4, 5]).to_event(2))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Categorical(logits=ops.linear(x, w)), obs=y)

    x, y = torch.randn(6, 5), torch.randint(0, 4, (6,))
    guide = MaskedAutoNormal(model, sparsity=0.5, seed=0, variant=guide_variant)
    guide(x, y)
    optim = torch.optim.SGD(guide.parameters(), lr=0.01, momentum=0.9)
    return SSVI(model, guide, optim, TraceMeanField_ELBO(), update_interval=2, variant=svi_variant), (x, y)


def test_authors_preset_turns_every_switch_on_and_defaults_are_the_paper():
    assert all(getattr(AUTHORS, f) != getattr(PAPER, f) for f in PAPER.__dataclass_fields__)
    assert PAPER == Variant() == get_variant(None) == get_variant("paper")
    svi, _ = _tiny_svi()
    assert svi.variant == PAPER and svi._lrt.epsilon == 0.0
    svi, (x, y) = _tiny_svi(guide_variant="authors")  # SSVI takes the guide's
    assert svi.variant == AUTHORS and svi._lrt.epsilon == 1e-8
    for _ in range(3):  # step 2 is an update, under every switch
        svi.step(x, y)
    assert len(svi.surgery_log) == 1 and int(svi.sparse_guide.site_mask("w").sum()) == 10
    # A single switch on SSVI alone, as long as initial_active agrees with the guide.
    svi, _ = _tiny_svi(svi_variant={"regrow_removed": True})
    assert svi.variant == Variant(regrow_removed=True)


@pytest.mark.parametrize("bad,match", [
    ("author", "unknown variant 'author'"),
    (3, "variant must be a preset name"),
    ({"regrow": True}, "unknown Variant field"),
    ({"regrow_removed": "yes"}, "regrow_removed must be True or False"),
    ({"drop_count": "floor"}, "drop_count must be one of round, truncate"),
    ({"lrt_epsilon": -1.0}, "lrt_epsilon must be a finite float >= 0"),
])
def test_bad_variants_raise_config_errors(bad, match):
    with pytest.raises(SSVIConfigError, match=match):
        get_variant(bad)
    with pytest.raises(SSVIConfigError, match=match):
        _tiny_svi(svi_variant=bad)


def test_ssvi_variant_must_agree_with_the_guide_on_initial_active():
    with pytest.raises(SSVIConfigError, match="Pass the variant to the guide"):
        _tiny_svi(svi_variant="authors")


def test_grad_mean_puts_every_latent_at_its_mean(monkeypatch):
    # A regression: dense first layer (ssvi_dense), sparse second, a learned noise scale.
    def model(x, y=None):
        w1 = pyro.sample("w1", dist.Normal(0.0, 1.0).expand([6, 3]).to_event(2), infer={"ssvi_dense": True})
        w2 = pyro.sample("w2", dist.Normal(0.0, 1.0).expand([2, 6]).to_event(2))
        noise = pyro.sample("noise", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(ops.linear(torch.tanh(ops.linear(x, w1)), w2), noise).to_event(1),
                               obs=y)

    x, y = torch.randn(8, 3), torch.randn(8, 2)
    guide = MaskedAutoNormal(model, sparsity=0.5, seed=0, init_scale=0.5)
    guide(x, y)
    assert not guide.sites["w1"].sparse and guide.sites["w2"].sparse and "noise" in guide.latent_sites
    svi = SSVI(model, guide, torch.optim.SGD(guide.parameters(), lr=0.0), TraceMeanField_ELBO(),
               update_interval=1, addition="grad_mean")
    svi.step(x, y)
    captured = {}
    monkeypatch.setattr(svi, "apply_surgery", lambda t, scores: captured.update(scores=scores))
    svi.step(x, y)

    # Plain PyTorch at the means: w1 = mu1 (all active), w2 = mu2 * mask, noise = exp(mu_u).
    w1 = guide.site_params("w1")[0].detach()
    w2 = (guide.site_params("w2")[0] * guide.site_mask("w2")).detach().requires_grad_()
    noise = guide.latent_params("noise")[0].detach().exp()
    nll = -dist.Normal(torch.tanh(x @ w1.T) @ w2.T, noise).log_prob(y).sum()
    (grad,) = torch.autograd.grad(nll, w2)  # the KL (closed form, or at the fixed noise) has no w2
    assert torch.allclose(captured["scores"]["w2"], grad.abs(), rtol=1e-5, atol=1e-8)
