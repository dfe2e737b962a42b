"""MaskedAutoNormal: which sites are sparse, exact active counts, median / quantiles / summary."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroSample

from pyro_ssvi import MaskedAutoNormal, MaskedNormal, SSVIConfigError, models
from pyro_ssvi.guides import init_to_normal


def test_resnet_stem_is_dense_and_other_sites_exactly_sparse():
    model = models.resnet18(width=0.125)
    guide = MaskedAutoNormal(model, sparsity=0.9, seed=0)
    guide(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert len(guide.sites) == 21
    for name, info in guide.sites.items():
        active = int(guide.site_mask(name).sum())
        if name == "conv1.weight":
            assert not info.sparse and active == info.numel
        else:
            assert info.sparse and active == round(0.1 * info.numel) == info.num_active
    sparse = [i for i in guide.sites.values() if i.sparse]
    assert guide.density() == sum(i.num_active for i in sparse) / sum(i.numel for i in sparse)


class WithBias(PyroModule):
    def __init__(self):
        super().__init__()
        self.w = PyroSample(dist.Normal(0.0, 1.0).expand([5, 4]).to_event(2))
        self.b = PyroSample(dist.Normal(0.0, 1.0).expand([5]).to_event(1))

    def forward(self, x, y=None):
        logits = F.linear(x, self.w, self.b)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits


@pytest.mark.parametrize("sparse_1d", [False, True])
def test_bias_sites_dense_unless_asked(sparse_1d):
    guide = MaskedAutoNormal(WithBias(), sparsity=0.6, sparse_1d=sparse_1d, seed=0)
    guide(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert guide.sites["w"].sparse and guide.sites["w"].num_active == 8
    assert guide.sites["b"].sparse == sparse_1d
    assert int(guide.site_mask("b").sum()) == (2 if sparse_1d else 5)


def test_dense_sites_argument_and_unknown_name():
    model = models.mlp([4, 6, 3])
    guide = MaskedAutoNormal(model, sparsity=0.5, dense_sites=["3.weight"])
    guide(torch.randn(2, 4), torch.tensor([0, 1]))
    assert guide.sites["1.weight"].sparse and not guide.sites["3.weight"].sparse
    with pytest.raises(SSVIConfigError, match="not weight sites"):
        MaskedAutoNormal(models.mlp([4, 3]), sparsity=0.5, dense_sites=["nope"])(torch.randn(2, 4), torch.tensor([0, 1]))


def test_median_quantiles_summary():
    model = models.mlp([4, 6, 3])
    guide = MaskedAutoNormal(model, sparsity=0.5, init_scale=(0.2, 0.05), init_loc_fn=init_to_normal(0.5), seed=0)
    guide(torch.randn(2, 4), torch.tensor([0, 1]))
    median = guide.median()
    quantiles = guide.quantiles([0.5, 0.8413447460685429])
    for name in guide.sites:
        loc, _ = guide.site_params(name)
        mask = guide.site_mask(name)
        sigma = guide.scale(name)
        assert torch.equal(median[name], (loc * mask).detach())
        assert quantiles[name].shape == (2, *loc.shape)
        assert torch.allclose(quantiles[name][0], median[name])
        assert torch.allclose(quantiles[name][1], ((loc + sigma) * mask).detach(), atol=1e-5)
        assert (median[name][~mask] == 0).all() and (quantiles[name][:, ~mask] == 0).all()
    summary = guide.summary()
    assert summary["1.weight"]["active"] == 12 and summary["1.weight"]["density"] == 0.5
    assert summary["1.weight"]["mean_sigma"] == pytest.approx(float(guide.scale("1.weight")[guide.site_mask("1.weight")].mean().detach()))


def test_masked_normal_samples_zero_and_log_prob_masked():
    loc, scale = torch.randn(1000), torch.rand(1000) + 0.1
    mask = torch.rand(1000) < 0.3
    d = MaskedNormal(loc, scale, mask)
    x = d.rsample()
    assert (x[~mask] == 0).all() and (x[mask] != 0).all()
    lp = d.log_prob(x)
    assert (lp[~mask] == 0).all()
    assert torch.allclose(lp[mask], dist.Normal(loc[mask], scale[mask]).log_prob(x[mask]))
    assert (d.entropy()[~mask] == 0).all()


def test_cached_prior_and_masked_prior_follow_changes():
    """Layer priors are built once; the masked log-density reads the mask from the draw, so it
    follows in-place mask changes (surgery) and a plain Normal prior is converted once."""
    from pyro_ssvi.distributions import SubspacePrior
    from pyro_ssvi.handlers import MaskPriorMessenger

    model = models.mlp([4, 6, 3], prior_scale=0.5)
    layer = model.net[1]
    assert layer.weight_prior() is layer.weight_prior()  # built once
    model.double()  # replaces the buffers: the prior is rebuilt in float64
    assert layer.weight_prior().base_dist.scale.dtype == torch.float64
    model.float()

    guide = MaskedAutoNormal(model, sparsity=0.5, seed=0)
    guide(torch.randn(2, 4), torch.tensor([0, 1]))
    prior = layer.weight_prior()

    def log_prior_of_a_draw():
        draw = guide(torch.randn(2, 4), torch.tensor([0, 1]))["1.weight"]
        return prior.base_dist.log_prob(draw)

    mask = guide.site_mask("1.weight")
    assert torch.equal(log_prior_of_a_draw() == 0, ~mask)
    i, j = mask.view(-1).nonzero()[0], (~mask).view(-1).nonzero()[0]
    mask.view(-1)[i], mask.view(-1)[j] = False, True  # what surgery does, in place
    assert torch.equal(log_prior_of_a_draw() == 0, ~mask)

    handler = MaskPriorMessenger(guide)
    plain = dist.Normal(0.0, 0.5).expand([6, 4]).to_event(2)
    msg = {"name": "1.weight", "fn": plain, "is_observed": False}
    handler._pyro_sample(msg)
    converted = msg["fn"]
    assert isinstance(converted.base_dist, SubspacePrior) and converted.reinterpreted_batch_ndims == 2
    msg = {"name": "1.weight", "fn": plain, "is_observed": False}
    handler._pyro_sample(msg)
    assert msg["fn"] is converted  # reused while the model hands over the same prior
    msg = {"name": "1.weight", "fn": prior, "is_observed": False}
    handler._pyro_sample(msg)
    assert msg["fn"] is prior  # already a SubspacePrior
