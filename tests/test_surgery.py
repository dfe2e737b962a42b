"""Mask surgery over 300 SSVI steps of a small CNN, and the addition scores against plain autograd."""

import math

import pyro
import pyro.optim
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceMeanField_ELBO

from pyro_ssvi import SSVI, MaskedAutoNormal, models
from pyro_ssvi.criteria import snr_abs

from helpers import digits_split, small_cnn

STEPS, INTERVAL, ALPHA, END = 300, 20, 0.3, 0.75


def _optimizer(kind, guide, model):
    if kind == "pyro":
        return pyro.optim.SGD({"lr": 0.05, "momentum": 0.9})
    if kind == "pyro_adam":  # two moment buffers per tensor, both must be zeroed
        return pyro.optim.Adam({"lr": 0.01})
    # As in the paper: weight decay on means and point estimates, none on sigma (weight decay
    # on rho would move inactive placeholders and fill their momentum).
    return torch.optim.SGD([{"params": guide.loc_parameters() + list(model.parameters()), "weight_decay": 5e-4},
                            {"params": guide.rho_parameters(), "weight_decay": 0.0}], lr=0.05, momentum=0.9)


def _momentum_buffers(svi, param):
    state = svi._state_lookup(param)
    return [v for v in (state or {}).values() if torch.is_tensor(v) and v.shape == param.shape]


# 300 steps with a torch optimizer; the pyro.optim path (one optimizer per tensor) for 100.
@pytest.mark.parametrize("optim_kind,steps", [("torch", STEPS), ("pyro", 100), ("pyro_adam", 61)])
def test_300_steps_keep_every_invariant(optim_kind, steps):
    xtr, ytr, _, _ = digits_split()
    x, y = xtr.view(-1, 1, 8, 8)[:512], ytr[:512]
    model = small_cnn(num_data=len(x))
    guide = MaskedAutoNormal(model, sparsity=0.8, seed=0)
    guide(x[:2], y[:2])
    svi = SSVI(model, guide, _optimizer(optim_kind, guide, model), TraceMeanField_ELBO(), num_steps=steps,
               update_interval=INTERVAL, drop_fraction=ALPHA, update_end=END, num_data=len(x))
    sparse = [n for n, info in guide.sites.items() if info.sparse]
    assert sparse == ["0.weight", "2.weight", "5.weight"]
    t_end = int(END * steps)
    updates = 0
    for t in range(steps):
        idx = torch.randint(0, len(x), (64,))
        before = {n: (guide.site_mask(n).clone(), guide.site_params(n)[1].detach().clone(),
                      guide.site_params(n)[0].detach().clone()) for n in sparse}
        svi.step(x[idx], y[idx])
        is_update = t > 0 and t % INTERVAL == 0 and t < t_end
        for name in sparse:
            info = guide.sites[name]
            mask = guide.site_mask(name)
            loc, rho = guide.site_params(name)
            assert int(mask.sum()) == info.num_active == round(0.2 * info.numel)
            assert (loc[~mask] == 0).all()
            for param in (loc, rho):
                for buf in _momentum_buffers(svi, param):
                    assert (buf[~mask] == 0).all()
            if not is_update:
                assert torch.equal(mask, before[name][0])
                continue
            old_mask, old_rho, old_loc = before[name]
            removed, added = old_mask & ~mask, mask & ~old_mask
            k = round(ALPHA / 2 * (1 + math.cos(math.pi * t / t_end)) * info.num_active)
            assert int(removed.sum()) == int(added.sum()) == k
            # The removed entries are those of lowest snr_abs among the active ones.
            score = snr_abs(old_loc, F.softplus(old_rho))
            kept = old_mask & mask
            if k:
                assert score[removed].max() <= score[kept].min()
                # Regrown: loc 0, sigma = mean sigma of the entries that stayed active.
                expected_sigma = F.softplus(old_rho)[kept].mean()
                assert torch.allclose(guide.scale(name)[added], expected_sigma.expand(k), rtol=1e-4)
                assert (loc[added] == 0).all()
                for buf in _momentum_buffers(svi, loc) + _momentum_buffers(svi, rho):
                    assert (buf[added] == 0).all()
        updates += is_update
        record_steps = [r["step"] for r in svi.surgery_log]
        assert record_steps == [s for s in range(1, t + 1) if s % INTERVAL == 0 and s < t_end]
    assert updates == len(svi.surgery_log) == (t_end - 1) // INTERVAL
    # Sampled weights are exactly zero at inactive entries.
    draw = guide(x[:2])
    for name in sparse:
        assert (draw[name][~guide.site_mask(name)] == 0).all()
        assert (draw[name][guide.site_mask(name)] != 0).all()


def test_surgery_log_counts_match_drop_fraction():
    model = models.mlp([8, 16, 4])
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    guide = MaskedAutoNormal(model, sparsity=0.5, seed=0)
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.01}), TraceMeanField_ELBO(), update_interval=2)
    for _ in range(5):
        svi.step(x, y)
    # No num_steps: r_t stays at alpha and surgery never stops.
    assert [r["drop_fraction"] for r in svi.surgery_log] == [0.3, 0.3]
    assert svi.surgery_log[0]["sites"]["1.weight"] == {"removed": round(0.3 * 64), "added": round(0.3 * 64)}


@pytest.mark.parametrize("addition", ["grad", "grad_mean"])
def test_addition_scores_equal_plain_autograd_gradient(addition, monkeypatch):
    n = 200
    model = models.mlp([6, 7, 3], prior_scale=0.5, num_data=n)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    guide = MaskedAutoNormal(model, sparsity=0.7, seed=0)
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.01}), TraceMeanField_ELBO(), update_interval=1,
               num_data=n, kl_max=0.3, kl_warmup=0.0, addition=addition)
    svi.step(x, y)  # step 0: an ordinary step (sets the guide up)

    captured = {}
    monkeypatch.setattr(svi, "apply_surgery", lambda t, scores: captured.update(scores=scores))

    record = svi._scorer.record
    monkeypatch.setattr(svi._scorer, "record", lambda: (captured.update(weights=dict(svi._scorer.retain.values)),
                                                        record()))
    svi.step(x, y)

    # Plain PyTorch: the same weights as leaves, the same per-datapoint loss.
    weights = {k: v.detach().clone().requires_grad_() for k, v in captured["weights"].items()}
    if addition == "grad_mean":
        for name in weights:
            assert torch.equal(weights[name], guide.moments(name)[0].detach())
    hidden = F.linear(x, weights["1.weight"], model.net[1].bias).relu()
    logits = F.linear(hidden, weights["3.weight"], model.net[3].bias)
    loss = F.cross_entropy(logits, y, reduction="mean")  # (N/B * sum NLL) / N; the KL has no theta
    grads = torch.autograd.grad(loss, list(weights.values()))
    for (name, _), grad in zip(weights.items(), grads):
        assert torch.allclose(captured["scores"][name], grad.abs(), rtol=1e-5, atol=1e-9), name
        # Dense: inactive positions get scores too.
        assert (captured["scores"][name][~guide.site_mask(name)] > 0).any()


def test_schedule_counts_and_cosine():
    from pyro_ssvi.schedule import SurgerySchedule

    s = SurgerySchedule(update_interval=100, drop_fraction=0.3, update_end=0.75, num_steps=78_200)
    assert s.end_step == 58_650
    assert s.num_updates() == sum(1 for t in range(78_200) if s.is_update_step(t)) == 586
    assert s.drop_fraction_at(0) == pytest.approx(0.3)
    assert s.drop_fraction_at(58_650 // 2) == pytest.approx(0.15)
    assert s.drop_fraction_at(58_650) == pytest.approx(0.0)


def test_replacing_every_active_entry_keeps_sigma_finite():
    from pyro_ssvi.guides import softplus_inverse
    from pyro_ssvi.surgery import update_site

    mask = torch.tensor([True, False, False, False])
    loc = torch.tensor([0.5, 0.0, 0.0, 0.0])
    rho = softplus_inverse(torch.tensor([0.2, 1.0, 1.0, 1.0]))
    update_site(loc, rho, mask, loc.abs(), torch.tensor([0.0, 3.0, 1.0, 2.0]), k=1)
    assert mask.tolist() == [False, True, False, False]
    assert F.softplus(rho[1]).item() == pytest.approx(0.2)  # the mean over the entries active before


def _capture_surgery(svi, monkeypatch):
    """Records every weight draw the scorer sees (one dict per pass) and the scores it hands over."""
    captured = {"draws": []}
    monkeypatch.setattr(svi, "apply_surgery", lambda t, scores: captured.update(scores=scores))
    record = svi._scorer.record

    def recording():
        captured["draws"].append({k: v.detach().clone() for k, v in svi._scorer.retain.values.items()})
        record()

    monkeypatch.setattr(svi._scorer, "record", recording)
    return captured


def _mlp_grads(model, weights, x, y):
    """Plain autograd: d mean cross-entropy / d weight (= the per-datapoint loss's, whose KL term
    has no theta) for the 2-layer MLP at ``weights``."""
    w = {k: v.clone().requires_grad_() for k, v in weights.items()}
    hidden = F.linear(x, w["1.weight"], model.net[1].bias).relu()
    loss = F.cross_entropy(F.linear(hidden, w["3.weight"], model.net[3].bias), y)
    return dict(zip(w, torch.autograd.grad(loss, list(w.values()))))


@pytest.mark.parametrize("addition", ["grad_mc", "grad_mc_mean"])
def test_grad_mc_scores_against_autograd_over_draws(addition, monkeypatch):
    # grad_mc (the paper): mean over K draws of |grad|; grad_mc_mean: |mean over K draws of grad|.
    n, draws = 100, 3
    model = models.mlp([5, 6, 3], prior_scale=0.5, num_data=n)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    guide = MaskedAutoNormal(model, sparsity=0.6, init_scale=0.3, seed=0)
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.0}), TraceMeanField_ELBO(), update_interval=1,
               num_data=n, addition=addition, addition_samples=draws)
    svi.step(x, y)
    captured = _capture_surgery(svi, monkeypatch)
    svi.step(x, y)
    assert len(captured["draws"]) == draws
    grads = [_mlp_grads(model, weights, x, y) for weights in captured["draws"]]
    assert not torch.equal(captured["draws"][0]["1.weight"], captured["draws"][1]["1.weight"])
    for name in ("1.weight", "3.weight"):
        stacked = torch.stack([g[name] for g in grads])
        expected = stacked.abs().mean(0) if addition == "grad_mc" else stacked.mean(0).abs()
        assert torch.allclose(captured["scores"][name], expected, rtol=1e-5, atol=1e-9), name
    # The two estimators differ wherever the draws' gradients disagree in sign.
    signs = torch.stack([g["1.weight"].sign() for g in grads])
    assert (signs.max(0).values != signs.min(0).values).any()


def test_grad_mc_over_recent_minibatches(monkeypatch):
    # addition_window="recent": the K-1 ordinary steps before an update record their draw and
    # minibatch; the update adds one draw on its own; the score is the mean |grad| of the K.
    n, draws, interval = 100, 3, 4
    model = models.mlp([5, 6, 3], prior_scale=0.5, num_data=n)
    batches = [(torch.randn(12, 5), torch.randint(0, 3, (12,))) for _ in range(interval + 1)]
    guide = MaskedAutoNormal(model, sparsity=0.6, init_scale=0.3, seed=0)
    svi = SSVI(model, guide, pyro.optim.SGD({"lr": 0.01}), TraceMeanField_ELBO(), update_interval=interval,
               num_data=n, addition="grad_mc", addition_samples=draws, addition_window="recent")
    captured = _capture_surgery(svi, monkeypatch)
    biases = []
    for x, y in batches:  # steps 0..4; the update is step 4, steps 2 and 3 record
        biases.append((model.net[1].bias.detach().clone(), model.net[3].bias.detach().clone()))
        svi.step(x, y)
    assert len(captured["draws"]) == draws and "scores" in captured
    expected = {}
    for step, weights in zip((2, 3, 4), captured["draws"]):
        x, y = batches[step]
        model.net[1].bias.data, model.net[3].bias.data = biases[step]  # the parameters at that step
        for name, g in _mlp_grads(model, weights, x, y).items():
            expected[name] = expected.get(name, 0) + g.abs() / draws
    for name, value in expected.items():
        assert torch.allclose(captured["scores"][name], value, rtol=1e-5, atol=1e-9), name
