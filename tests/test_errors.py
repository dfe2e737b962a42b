"""Bad input gets a clear error that says what was expected."""

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_ssvi import SSVI, MaskedAutoNormal, NonFiniteLossError, SSVIConfigError, models


def _model_guide(sparsity=0.5):
    model = models.mlp([4, 6, 3])
    guide = MaskedAutoNormal(model, sparsity=sparsity, seed=0)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    guide(x, y)
    return model, guide, x, y


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, "0.5", None])
def test_sparsity_outside_unit_interval(sparsity):
    with pytest.raises(SSVIConfigError, match=r"sparsity must be in \[0, 1\)"):
        MaskedAutoNormal(models.mlp([4, 3]), sparsity=sparsity)


def test_model_without_normal_prior_site():
    def model(x, y=None):
        logits = torch.zeros(x.shape[0], 3)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    with pytest.raises(SSVIConfigError, match="no latent sample site"):
        MaskedAutoNormal(model, sparsity=0.5)(torch.randn(2, 4), torch.tensor([0, 1]))


def test_discrete_latent_is_named_with_what_to_do():
    def model(x, y=None):
        pyro.sample("w", dist.Normal(0.0, 1.0).expand([3, 4]).to_event(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(0.5))

    with pytest.raises(SSVIConfigError, match=r"site 'z' is a discrete latent \(Bernoulli\).*config_enumerate"):
        MaskedAutoNormal(model, sparsity=0.5)(torch.randn(2, 4))


def test_guide_set_up_without_observations_says_so():
    with pytest.raises(SSVIConfigError, match=r"site 'obs' is a discrete latent.*guide\(x, y\), not guide\(x\)"):
        MaskedAutoNormal(models.mlp([4, 3]), sparsity=0.5)(torch.randn(2, 4))


def test_unknown_criterion_lists_known_names():
    model, guide, _, _ = _model_guide()
    optim = pyro.optim.SGD({"lr": 0.1})
    with pytest.raises(SSVIConfigError, match=r"expected one of: abs_mean, .*snr_abs"):
        SSVI(model, guide, optim, Trace_ELBO(), removal="snrr")
    with pytest.raises(SSVIConfigError, match=r"grad, grad_mc, grad_mc_mean, grad_mean"):
        SSVI(model, guide, optim, Trace_ELBO(), addition="random")


@pytest.mark.parametrize("interval", [0, -5, 2.5])
def test_update_interval_below_one(interval):
    model, guide, _, _ = _model_guide()
    with pytest.raises(SSVIConfigError, match="update_interval must be an int >= 1"):
        SSVI(model, guide, pyro.optim.SGD({"lr": 0.1}), Trace_ELBO(), update_interval=interval)


def test_other_bad_arguments():
    model, guide, _, _ = _model_guide()
    optim = pyro.optim.SGD({"lr": 0.1})
    with pytest.raises(SSVIConfigError, match="optim must be"):
        SSVI(model, guide, torch.optim.SGD, Trace_ELBO())
    with pytest.raises(SSVIConfigError, match="loss must be a Pyro ELBO"):
        SSVI(model, guide, optim, lambda *a: 0.0)
    with pytest.raises(SSVIConfigError, match="update_end"):
        SSVI(model, guide, optim, Trace_ELBO(), update_end=1.5)
    with pytest.raises(SSVIConfigError, match="num_data"):
        SSVI(model, guide, optim, Trace_ELBO(), num_data=0)
    with pytest.raises(SSVIConfigError, match="sigma_init"):
        SSVI(model, guide, optim, Trace_ELBO(), sigma_init="median")
    with pytest.raises(SSVIConfigError, match="MaskedAutoNormal"):
        SSVI(model, pyro.infer.autoguide.AutoNormal(model), optim, Trace_ELBO())


@pytest.mark.parametrize("surgery_step", [False, True])
def test_non_finite_loss_raises_before_anything_changes(surgery_step):
    model, guide, x, y = _model_guide()
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.1, "momentum": 0.9}), TraceMeanField_ELBO(),
               update_interval=3)
    for _ in range(2):
        svi.step(x, y)
    if not surgery_step:
        svi.step(x, y)  # step 2 ordinary; step 3 is an update step
    pyro.enable_validation(False)  # as in training runs, where this check is the safety net
    x = x.clone()
    x[0, 0] = float("inf")
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    step = svi.step_count
    with pytest.raises(NonFiniteLossError, match=f"step {step}: the loss is nan"):
        svi.step(x, y)
    after = guide.state_dict()
    for key, value in before.items():
        assert torch.equal(value.nan_to_num(7.0), after[key].nan_to_num(7.0)), key
    assert svi.step_count == step and len(svi.surgery_log) == 0


def test_torch_optimizer_built_before_guide_setup():
    model = models.mlp([4, 6, 3])
    guide = MaskedAutoNormal(model, sparsity=0.5)
    optim = torch.optim.SGD(list(guide.parameters()) + list(model.parameters()), lr=0.1)  # guide still empty
    svi = SSVI(model, guide, optim, TraceMeanField_ELBO())
    with pytest.raises(SSVIConfigError, match=r"Call guide\(\*args\) once"):
        svi.step(torch.randn(5, 4), torch.randint(0, 3, (5,)))


def test_predict_mean_mode_with_local_reparameterization():
    from pyro_ssvi.predictive import predict

    model, guide, x, _ = _model_guide()
    with pytest.raises(SSVIConfigError, match="Use one or the other"):
        predict(model, guide, x, mode="mean", local_reparameterization=True)


def _torch_svi(update_interval=100):
    model, guide, x, y = _model_guide()
    optim = torch.optim.SGD(list(guide.parameters()) + list(model.parameters()), lr=0.1, momentum=0.9)
    return SSVI(model, guide, optim, TraceMeanField_ELBO(), update_interval=update_interval), guide, x, y


def test_step_async_matches_step():
    states = []
    for method in ("step", "step_async"):
        pyro.set_rng_seed(0)
        svi, guide, x, y = _torch_svi(update_interval=4)
        pyro.set_rng_seed(1)
        losses = [float(getattr(svi, method)(x, y)) for _ in range(10)]
        states.append((losses, guide.state_dict()))
    assert states[0][0] == states[1][0]
    for key, value in states[0][1].items():
        assert torch.equal(value, states[1][1][key]), key


def test_step_async_reports_non_finite_loss_at_the_next_check():
    pyro.enable_validation(False)
    svi, guide, x, y = _torch_svi(update_interval=3)
    svi.step_async(x, y)
    bad = x.clone()
    bad[0, 0] = float("inf")
    svi.step_async(bad, y)  # step 1: not waited for
    masks = {k: v.clone() for k, v in guide.masks.items()}
    with pytest.raises(NonFiniteLossError, match="between steps 0 and 1"):
        svi.check_finite()
    svi.step_async(bad, y)  # step 2
    with pytest.raises(NonFiniteLossError, match="between steps 2 and 2"):
        svi.step_async(x, y)  # step 3 updates masks: it checks first
    assert all(torch.equal(masks[k], v) for k, v in guide.masks.items())
    assert len(svi.surgery_log) == 0


def test_removal_lambda_reaches_the_exp_criteria():
    from pyro_ssvi.criteria import snr_exp_abs

    model, guide, _, _ = _model_guide()
    optim = pyro.optim.SGD({"lr": 0.1})
    svi = SSVI(model, guide, optim, Trace_ELBO(), removal="snr_exp_abs", removal_lambda=3.0)
    mu, sigma = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 0.2])
    assert torch.equal(svi.removal(mu, sigma), snr_exp_abs(mu, sigma, lam=3.0))
    with pytest.raises(SSVIConfigError, match="takes no lam"):
        SSVI(model, guide, optim, Trace_ELBO(), removal="snr_abs", removal_lambda=3.0)
