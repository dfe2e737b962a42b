"""Tests of pyro_ssvi.criteria: closed forms vs Monte Carlo and mpmath, stability, registry."""
import math

import pytest
import torch

from pyro_ssvi import criteria as C
from pyro_ssvi.errors import SSVIConfigError

DTYPES = (torch.float32, torch.float64)
N_MC = 1_000_000
SNR_ABS_AT_ZERO = math.sqrt(2 / math.pi) / math.sqrt(1 - 2 / math.pi)


def _t(values, dtype=torch.float64):
    return torch.as_tensor(values, dtype=dtype)


def _draws(mu: float, sigma: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return mu + sigma * torch.randn(N_MC, generator=gen, dtype=torch.float64)


def _mc_mean(x: torch.Tensor):
    """Sample mean and its standard error."""
    return x.mean().item(), x.std().item() / math.sqrt(x.numel())


def _mc_snr(x: torch.Tensor):
    """Sample SNR mean/sd and its delta-method standard error.

    For g = m / s: Var(g_hat) ~ (1 + g^2 (k4 - s^4) / (4 s^4) - g k3 / s^3) / n, where k3, k4 are
    central moments (from Var(mean) = s^2/n, Var(sd) ~ (k4 - s^4)/(4 s^2 n), Cov ~ k3/(2 s n)).
    """
    m = x.mean()
    c = x - m
    s2 = (c * c).mean()
    s = s2.sqrt()
    k3, k4 = (c**3).mean(), (c**4).mean()
    g = m / s
    var = (1 + g * g * (k4 - s2 * s2) / (4 * s2 * s2) - g * k3 / s**3) / x.numel()
    return g.item(), var.clamp(min=0).sqrt().item()


# sigma / |mu| in {1e-4, 1, 1e4}, both signs, and mu = 0.
MC_POINTS = [(1.0, 1e-4), (-1.0, 1e-4), (0.3, 0.3), (-2.0, 2.0), (1e-4, 1.0), (-1e-3, 10.0), (0.0, 1.0), (0.0, 1e-3)]
# (mu, sigma, lam) with lam*sigma <= 1 so that E X^4 is moderate and the MC SNR is well conditioned;
# covers both branches of the exp-SNR (lam*sigma below and above 0.5).
MC_EXP_POINTS = [(1.0, 1e-4, 1.0), (-1.0, 1e-4, 1.0), (0.5, 0.5, 1.0), (-0.7, 0.7, 1.0), (1e-4, 1.0, 1.0),
                 (0.0, 1.0, 1.0), (0.0, 0.3, 1.0), (0.3, 0.1, 3.0), (2.0, 0.2, 0.5), (-0.4, 0.4, 2.0)]


@pytest.mark.parametrize("mu,sigma", MC_POINTS)
def test_mean_abs_and_snr_abs_match_monte_carlo(mu, sigma):
    a = _draws(mu, sigma).abs()
    mc, se = _mc_mean(a)
    got = C.mean_abs(_t(mu), _t(sigma)).item()
    assert abs(got - mc) <= 5 * se + 1e-12 * abs(mc)
    mc, se = _mc_snr(a)
    got = C.snr_abs(_t(mu), _t(sigma)).item()
    assert abs(got - mc) <= 5 * se


@pytest.mark.parametrize("mu,sigma,lam", MC_EXP_POINTS)
def test_exp_criteria_match_monte_carlo(mu, sigma, lam):
    x = torch.exp(lam * _draws(mu, sigma, seed=1).abs())
    mc, se = _mc_mean(x)
    got = C.mean_exp_abs(_t(mu), _t(sigma), lam=lam).item()
    assert abs(got - mc) <= 5 * se + 1e-12 * abs(mc)
    assert C.log_mean_exp_abs(_t(mu), _t(sigma), lam=lam).item() == pytest.approx(math.log(got), rel=1e-14)
    mc, se = _mc_snr(x)
    got = C.snr_exp_abs(_t(mu), _t(sigma), lam=lam).item()
    assert abs(got - mc) <= 5 * se


def _mp_reference(mu: float, sigma: float, lam: float) -> dict:
    """The textbook formulas of the brief, evaluated at 60 digits (cancellation is harmless there)."""
    mp = pytest.importorskip("mpmath").mp
    mp.dps = 60
    mu, s, lam = mp.mpf(mu), mp.mpf(sigma), mp.mpf(lam)
    ea = s * mp.sqrt(2 / mp.pi) * mp.exp(-(mu**2) / (2 * s**2)) + mu * (1 - 2 * mp.ncdf(-mu / s))
    var = mu**2 + s**2 - ea**2

    def mgf(l):
        return (mp.exp(l * mu + l**2 * s**2 / 2) * mp.ncdf(mu / s + l * s)
                + mp.exp(-l * mu + l**2 * s**2 / 2) * mp.ncdf(-mu / s + l * s))

    m1, m2 = mgf(lam), mgf(2 * lam)
    return {"mean_abs": ea, "snr_abs": ea / mp.sqrt(var), "mean_exp_abs": m1,
            "snr_exp_abs": m1 / mp.sqrt(m2 - m1**2)}


@pytest.mark.parametrize("sigma", [1e-12, 1e-3, 0.2, 0.4999, 0.5, 0.5001, 1.7])
@pytest.mark.parametrize("r", [0.0, 1e-5, 0.4, 1.0, 2.5, 6.0, 30.0, 1e6])
def test_closed_forms_match_high_precision_reference(r, sigma):
    lam = 1.0
    mu = -r * sigma
    ref = _mp_reference(mu, sigma, lam)
    for name, want in ref.items():
        fn = C.REMOVAL_CRITERIA[name]
        for dtype, rtol in ((torch.float64, 1e-13), (torch.float32, 2e-5)):
            args = (_t(mu, dtype), _t(sigma, dtype))
            if name == "mean_exp_abs":  # compare in log space: the value itself may saturate by design
                log_want = float(pytest.importorskip("mpmath").log(want))
                assert C.log_mean_exp_abs(*args).item() == pytest.approx(log_want, rel=rtol, abs=rtol)
                if log_want > math.log(torch.finfo(dtype).max) - 1:
                    continue
            got = fn(*args).item()
            assert got == pytest.approx(float(want), rel=rtol), (name, dtype)


def _extreme_grid(dtype):
    sigma = torch.logspace(-12, 3, 16, dtype=torch.float64)
    ratio = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-6, 6, 13, dtype=torch.float64)])
    s, r = torch.meshgrid(sigma, ratio, indexing="ij")
    mu = torch.cat([r * s, -r * s])
    return mu.to(dtype), torch.cat([s, s]).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_and_nonnegative_on_extreme_grid(dtype):
    mu, sigma = _extreme_grid(dtype)
    fns = dict(C.REMOVAL_CRITERIA, log_mean_exp_abs=C.log_mean_exp_abs, log_snr_exp_abs=C.log_snr_exp_abs)
    for name, fn in fns.items():
        for kwargs in ({}, {"lam": 0.1}, {"lam": 10.0}) if "exp" in name else ({},):
            out = fn(mu, sigma, **kwargs)
            assert out.shape == mu.shape and out.dtype == dtype
            assert torch.isfinite(out).all(), name
            if not name.startswith("log"):
                assert (out >= 0).all(), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_asymptotics(dtype):
    sigma = _t([1e-12, 1e-3, 1.0, 1e3], dtype)
    for ratio in (1e3, 1e4, 1e6):  # |mu| >> sigma: folding is invisible, |theta| ~ theta
        mu = ratio * sigma
        torch.testing.assert_close(C.snr_abs(mu, sigma), mu / sigma, rtol=1e-6, atol=0)
        torch.testing.assert_close(C.mean_abs(-mu, sigma), mu, rtol=1e-6, atol=0)
    zero = torch.zeros_like(sigma)
    torch.testing.assert_close(C.snr_abs(zero, sigma), torch.full_like(sigma, SNR_ABS_AT_ZERO), rtol=1e-6, atol=0)
    torch.testing.assert_close(C.mean_abs(zero, sigma), sigma * math.sqrt(2 / math.pi), rtol=1e-6, atol=0)


def test_exp_asymptotics():
    t = _t([1e-9, 1e-3, 0.3, 0.5, 0.8, 2.0, 5.0])
    # mu = 0: E exp(t|Z|) = 2 exp(t^2/2) Phi(t).
    want = 2 * torch.exp(t * t / 2) * torch.special.ndtr(t)
    torch.testing.assert_close(C.mean_exp_abs(0 * t, t), want)
    # |mu| >> sigma: exp(lam|theta|) is lognormal, SNR = 1 / sqrt(expm1(t^2)), independent of mu.
    torch.testing.assert_close(C.snr_exp_abs(1e6 * t, t), torch.expm1(t * t).rsqrt(), rtol=1e-12, atol=0)
    # lam*sigma -> 0: SNR ~ 1 / (lam sqrt(Var|theta|)), with Var|theta| from mean_abs (no cancellation at r ~ 1).
    for mu in (0.0, 0.5, 1.0, 3.0):
        mu_t, sig = _t(mu), _t(1.0)
        var = mu**2 + 1.0 - C.mean_abs(mu_t, sig) ** 2
        for lam in (1e-6, 1e-9, 1e-12):
            got = C.snr_exp_abs(mu_t, sig, lam=lam)
            torch.testing.assert_close(got * lam * var.sqrt(), _t(1.0), rtol=10 * lam, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_symmetry_in_mu(dtype):
    mu, sigma = _extreme_grid(dtype)
    for fn in (*C.REMOVAL_CRITERIA.values(), C.log_mean_exp_abs, C.log_snr_exp_abs):
        torch.testing.assert_close(fn(-mu, sigma), fn(mu, sigma), rtol=0, atol=0)


def test_monotonicity():
    ratio = torch.logspace(-2, 6, 400, dtype=torch.float64)
    sigma = torch.full_like(ratio, 0.05)
    assert (C.snr_abs(ratio * sigma, sigma).diff() > 0).all()  # snr_abs grows with |mu|
    # Near mu = 0, snr_abs - snr_abs(0) ~ 0.23 snr_abs(0) r^4: below r ~ 0.05 the increments are
    # under one float32 ulp, so float32 may only be monotone up to rounding.
    out = C.snr_abs((ratio * sigma).float(), sigma.float())
    assert (out[1:] >= out[:-1] * (1 - 4e-7)).all()
    assert (out[ratio > 0.3].diff() > 0).all()
    assert (C.mean_abs(ratio * sigma, sigma).diff() > 0).all()
    assert (C.log_mean_exp_abs(ratio * sigma, sigma).diff() > 0).all()  # mean_exp_abs saturates at r > 1e4
    sig = torch.logspace(-6, 1, 300, dtype=torch.float64)
    for mu in (0.0, 0.1, -1.0):
        m = torch.full_like(sig, mu)
        # for |mu| >> sigma, E|theta| - |mu| ~ exp(-mu^2 / 2 sigma^2) vanishes: only non-decreasing
        assert (C.mean_abs(m, sig).diff() > 0).all() if mu == 0 else (C.mean_abs(m, sig).diff() >= 0).all()
        assert (C.mean_exp_abs(m, sig).diff() > 0).all()  # a mean-preserving spread of a convex function
        assert (C.snr_exp_abs(m, sig).diff() < 0).all()
        assert (C.log_snr_exp_abs(m, sig * 100).diff() < 0).all()  # still ordered where snr underflows
        if mu != 0.0:
            assert (C.snr_abs(m, sig).diff() < 0).all()
    # Continuity across the branch switch of the exp-SNR at lam*sigma = 0.5.
    s = _t([0.5 * (1 - 1e-13), 0.5, 0.5 * (1 + 1e-13)])
    for mu in (0.0, 0.3, 2.0):
        out = C.snr_exp_abs(torch.full_like(s, mu), s)
        torch.testing.assert_close(out, out[1].expand(3), rtol=1e-12, atol=0)


def test_float32_agrees_with_float64():
    sigma = torch.logspace(-12, 1, 14, dtype=torch.float32)
    ratio = torch.cat([torch.zeros(1), torch.logspace(-6, 6, 25)])
    s, r = torch.meshgrid(sigma, ratio, indexing="ij")
    mu = (r * s).to(torch.float32)  # compare on the same (float32-representable) inputs
    for name, fn in C.REMOVAL_CRITERIA.items():
        lo, hi = fn(mu, s), fn(mu.double(), s.double())
        keep = hi < 1e30  # mean_exp_abs saturates in float32 above ~3e38 by design
        torch.testing.assert_close(lo.double()[keep], hi[keep], rtol=2e-5, atol=0, msg=name)


def test_saturation_is_finite_and_documented_logs_do_not_saturate():
    mu, sigma = _t([1e3, 0.0], torch.float32), _t([1.0, 100.0], torch.float32)
    assert torch.isfinite(C.mean_exp_abs(mu, sigma)).all()
    assert (C.mean_exp_abs(mu, sigma) > 1e38).all()
    torch.testing.assert_close(C.log_mean_exp_abs(mu, sigma), _t([1e3 + 0.5, 5000 + math.log(2.0)], torch.float32))
    assert (C.snr_exp_abs(mu, sigma)[1] == 0) and torch.isfinite(C.log_snr_exp_abs(mu, sigma)).all()


def test_shapes_dtypes_and_no_host_sync():
    # "meta" tensors have no data: any .item() or Python branch on a value would raise.
    mu, sigma = torch.randn(2, 3, 4, device="meta"), torch.rand(2, 3, 4, device="meta")
    for fn in (*C.REMOVAL_CRITERIA.values(), C.log_mean_exp_abs, C.log_snr_exp_abs):
        out = fn(mu, sigma)
        assert out.shape == (2, 3, 4) and out.device.type == "meta"
        assert fn(torch.tensor(0.5), torch.tensor(0.1)).shape == ()


def test_gradients_are_finite():
    mu, sigma = _extreme_grid(torch.float64)
    mu.requires_grad_(True)
    sigma.requires_grad_(True)
    for name, fn in C.REMOVAL_CRITERIA.items():
        grads = torch.autograd.grad(fn(mu, sigma).sum(), (mu, sigma), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), name


def test_registry_and_lookup():
    assert set(C.REMOVAL_CRITERIA) == {"abs_mean", "snr", "mean_abs", "snr_abs", "mean_exp_abs", "snr_exp_abs"}
    assert C.DEFAULT_REMOVAL_CRITERION == "snr_abs"
    assert C.ADDITION_CRITERIA == ("grad", "grad_mean", "grad_mc", "grad_mc_mean")
    for name, fn in C.REMOVAL_CRITERIA.items():
        assert C.get_removal_criterion(name) is fn
    mu, sigma = _t([0.3, -1.0]), _t([0.2, 0.5])
    bound = C.get_removal_criterion("snr_exp_abs", lam=0.5)
    torch.testing.assert_close(bound(mu, sigma), C.snr_exp_abs(mu, sigma, lam=0.5))
    for name in C.ADDITION_CRITERIA:
        assert C.check_addition_criterion(name) == name


@pytest.mark.parametrize("bad", ["snrr", "SNR_ABS", "", None, 3])
def test_unknown_names_raise_config_error(bad):
    with pytest.raises(SSVIConfigError) as info:
        C.get_removal_criterion(bad)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert repr(bad) in msg and "removal=" in msg
    assert all(name in msg for name in C.REMOVAL_CRITERIA)
    with pytest.raises(SSVIConfigError, match="grad, grad_mc, grad_mc_mean, grad_mean") as info:
        C.check_addition_criterion(bad)
    assert repr(bad) in str(info.value) and "addition=" in str(info.value)


@pytest.mark.parametrize("lam", [0.0, -1.0, math.nan, math.inf, True, "1"])
def test_bad_lam_raises(lam):
    mu, sigma = _t([0.1]), _t([0.1])
    with pytest.raises(SSVIConfigError, match="lam"):
        C.mean_exp_abs(mu, sigma, lam=lam)
    with pytest.raises(SSVIConfigError, match="lam"):
        C.get_removal_criterion("snr_exp_abs", lam=lam)
    with pytest.raises(SSVIConfigError, match="lam"):
        C.get_removal_criterion("snr_abs", lam=0.5)
