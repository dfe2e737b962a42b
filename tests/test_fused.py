"""SSVI's fused hot-path tracers (pyro_ssvi.handlers.fused) against the handler stacks they
replace: the same trace site for site, the same loss and the same gradients, on a classifier,
a regression with its own noise latent (guided by MaskedAutoNormal alone, and by an
AutoGuideList with Pyro's AutoNormal), a hierarchical model with a subsampled plate, and a
model that reads a weight draw outside the LRT ops."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal

from pyro_ssvi import SSVI, MaskedAutoNormal, models, ops
from pyro_ssvi.estimators import TracedMeanFieldLoss
from pyro_ssvi.handlers import DrawNeeded
from pyro_ssvi.objective import mean_field_loss_of_traces

FIELDS = ("type", "is_observed", "scale", "mask", "infer", "cond_indep_stack")


def noisy_regression(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([1, x.shape[1]]).to_event(2))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(ops.linear(x, w).squeeze(-1), sigma), obs=y)


def hierarchical(x, y=None, idx=None):
    """Group effects ~ N(mu, tau) in a subsampled plate of 6 groups, plus a weight site."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = pyro.sample("tau", dist.LogNormal(0.0, 0.5))
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([1, x.shape[1]]).to_event(2))
    with pyro.plate("groups", 6, subsample=idx) as g:
        effect = pyro.sample("effect", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(ops.linear(x[g], w).squeeze(-1) + effect, 0.5), obs=y[g])


def penalized(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([1, x.shape[1]]).to_event(2))
    pyro.factor("penalty", -0.5 * w.pow(2).sum())  # reads the draw: SSVI draws this site for real
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(ops.linear(x, w).squeeze(-1), 1.0), obs=y)


def _classifier():
    return models.mlp([5, 8, 3], num_data=64), (torch.randn(6, 5), torch.randint(0, 3, (6,)))


def _regression():
    return noisy_regression, (torch.randn(6, 5), torch.randn(6))


def _hierarchical():
    return hierarchical, (torch.randn(6, 5), torch.randn(6), torch.tensor([1, 4, 5]))


def _penalized():
    return penalized, (torch.randn(6, 5), torch.randn(6))


def _guide(model, name):
    if name == "hierarchical":
        return MaskedAutoNormal(model, sparsity=0.4, seed=0,
                                create_plates=lambda x, y, idx: pyro.plate("groups", 6, subsample=idx))
    if name == "guide_list":  # the weights sparse, the noise scale from Pyro's own AutoNormal
        guide = AutoGuideList(model)
        guide.append(MaskedAutoNormal(poutine.block(model, expose=["w"]), sparsity=0.4, seed=0))
        guide.append(AutoNormal(poutine.block(model, hide=["w"])))
        return guide
    return MaskedAutoNormal(model, sparsity=0.4, seed=0)


def _svi(build, name):
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, args = build()
    guide = _guide(model, name)
    guide(*args)
    svi = SSVI(model, guide, torch.optim.SGD(guide.parameters(), lr=0.01), TraceMeanField_ELBO(),
               num_steps=100, num_data=40, kl_max=0.3, kl_warmup=0.0)
    svi._beta.beta = svi.kl_weight()
    return svi, args


CASES = [("classifier", _classifier), ("regression", _regression), ("guide_list", _regression),
         ("hierarchical", _hierarchical), ("penalized", _penalized)]


@pytest.mark.parametrize("name,build", CASES, ids=[c[0] for c in CASES])
def test_fused_traces_loss_and_gradients_equal_the_handler_stacks(name, build):
    svi, args = _svi(build, name)
    model, guide, fused_loss = svi._lrt_step
    assert isinstance(fused_loss, TracedMeanFieldLoss)
    while True:  # sites whose draws the model reads (penalized's w, hierarchical's mu) are drawn,
        try:     # as SSVI's first step finds out
            fused_loss.traces(model, guide, *args)
            break
        except DrawNeeded as exc:
            svi._needs_draws.add(exc.site)
    assert bool(svi._needs_draws) == (name in ("penalized", "hierarchical"))

    torch.manual_seed(1)
    fused_model_trace, fused_guide_trace = fused_loss.traces(model, guide, *args)
    fused = mean_field_loss_of_traces(fused_model_trace, fused_guide_trace)
    torch.manual_seed(1)
    guide_trace = poutine.trace(svi._guide_lrt).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(svi._model_lrt, trace=guide_trace)).get_trace(*args)
    stacked = mean_field_loss_of_traces(model_trace, guide_trace)

    for ours, theirs in ((fused_guide_trace, guide_trace), (fused_model_trace, model_trace)):
        assert list(ours.nodes) == list(theirs.nodes)
        for site, node in theirs.nodes.items():
            if node["type"] not in ("sample", "param"):
                continue
            for field in FIELDS:
                assert _same(ours.nodes[site][field], node[field]), (site, field)
            assert type(ours.nodes[site]["fn"]) is type(node["fn"]), site
            assert _same(ours.nodes[site]["value"], node["value"]), site
    torch.testing.assert_close(fused, stacked, rtol=0, atol=0)

    grads = {}
    for label, loss in (("fused", fused), ("stacked", stacked)):
        params = list(guide.parameters())
        grads[label] = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    for a, b in zip(grads["fused"], grads["stacked"]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _same(a, b):
    if torch.is_tensor(a) and torch.is_tensor(b):
        if type(a).__name__ == "SkippedDraw" or type(b).__name__ == "SkippedDraw":
            return type(a) is type(b) and a.shape == b.shape and a.site == b.site
        return a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_a_drawn_site_is_rerun_through_the_fused_tracers():
    """A weight read outside the LRT ops raises DrawNeeded on the fused path as on the stacked
    one: SSVI re-runs the step with that site drawn, and no trace or graph is left behind."""
    svi, args = _svi(_penalized, "penalized")
    svi.step(*args)
    assert svi._needs_draws == {"w"}
    model, guide, fused_loss = svi._lrt_step
    assert fused_loss.traces.model_tracer.guide_trace.nodes == {}
    assert fused_loss.traces.guide_tracer.trace.nodes == {}
