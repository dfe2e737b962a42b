"""What the GPU path needs, checked on CPU: fp32 likelihoods under bf16 autocast, the guide in
channels_last, one batch shape per epoch."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_ssvi import MaskedAutoNormal, models
from pyro_ssvi.config import compose
from pyro_ssvi.objective import mean_field_loss
from pyro_ssvi.training.data import prepare_data


@pytest.mark.parametrize("likelihood, outputs", [("categorical", 3), ("bernoulli", 1), ("normal", 1),
                                                 ("heteroscedastic_normal", 2)])
def test_likelihood_is_scored_in_fp32_under_bf16_autocast(likelihood, outputs):
    model = models.mlp([4, 8, outputs], likelihood=likelihood)
    x = torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trace = poutine.trace(model).get_trace(x)
    fn = trace.nodes["obs"]["fn"]
    params = [getattr(fn, name) for name in ("logits", "loc", "scale") if name in fn.__dict__]
    assert params and all(p.dtype == torch.float32 for p in params)


def test_channels_last_guide_gives_nhwc_weights_and_the_same_objective():
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))

    def guide_and_kl(memory_format):
        torch.manual_seed(0)
        model = models.resnet18(num_classes=10, width=0.0625, num_data=100)
        guide = MaskedAutoNormal(model, sparsity=0.9, seed=0, init_scale=0.05)
        guide(x, y)
        guide.to(memory_format=memory_format)
        kl = mean_field_loss(poutine.block(model, hide=["obs"]), guide, x)
        return guide, kl, torch.autograd.grad(kl, guide.site_params("layers.0.conv1.weight"))

    plain, kl, grads = guide_and_kl(torch.contiguous_format)
    nhwc, kl_nhwc, grads_nhwc = guide_and_kl(torch.channels_last)
    assert nhwc.site_mask("layers.0.conv1.weight").is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(kl_nhwc, kl)
    for got, want in zip(grads_nhwc, grads):
        torch.testing.assert_close(got, want)
    q = poutine.trace(nhwc).get_trace(x, y).nodes["layers.0.conv1.weight"]["fn"].base_dist
    assert q.mean.is_contiguous(memory_format=torch.channels_last) and not q.mean.is_contiguous()
    torch.testing.assert_close(q.mean, nhwc.moments("layers.0.conv1.weight")[0])
    pyro.clear_param_store()


def test_drop_last_gives_every_step_one_batch_shape(tmp_path):
    cfg = compose([f"output_dir={tmp_path}", "progress=false", "train.batch_size=100", "train.drop_last=true"])
    data = prepare_data(cfg, torch.device("cpu"))
    shapes = {tuple(x.shape) for x, _ in data.loader}
    assert shapes == {(100, 1, 8, 8)} and len(data.loader) == len(data.train) // 100
    pyro.clear_param_store()


def test_surgery_writes_channels_last_sites_like_contiguous_ones():
    from pyro_ssvi.surgery import update_site

    g = torch.Generator().manual_seed(0)
    shape = (4, 3, 2, 2)
    loc, rho = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < 0.5
    removal, addition = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    momentum = torch.randn(shape, generator=g)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        tensors = [t.clone().contiguous(memory_format=fmt) for t in (loc, rho, mask, momentum)]
        state = {"momentum_buffer": tensors[3]}
        update_site(*tensors[:3], removal, addition, 3, "mean", lambda p: state if p is tensors[0] else None)
        results.append(tensors)
    assert results[1][0].is_contiguous(memory_format=torch.channels_last)
    for plain, nhwc in zip(*results):  # (the regrown sigma is a mean: summed in another order)
        torch.testing.assert_close(nhwc, plain, rtol=1e-6, atol=0)
    assert int(results[0][2].sum()) == int(mask.sum())  # as many active entries as before
