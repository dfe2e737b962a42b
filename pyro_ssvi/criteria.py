"""Removal criteria of Sparse Subspace Variational Inference (SSVI, Li et al., ICLR 2024, sec. 3.3.1).

During mask surgery SSVI scores every active weight from its mean-field Gaussian posterior
``q(theta) = N(mu, sigma^2)`` and removes the weights with the LOWEST score. Every criterion is a
pure function ``(mu, sigma) -> score`` of two tensors of one shape (any shape, any device,
float32 or float64, ``sigma > 0``) returning a tensor of that shape. None of them synchronises
with the host, so they can run inside compiled or CUDA-graphed code.

The closed forms cancel catastrophically when evaluated naively (``mu^2 + sigma^2 - (E|theta|)^2``
when ``|mu| >> sigma``; differences of log-moments when ``lam * sigma`` is small), so each score is
written in the dimensionless variables ``r = |mu| / sigma`` and ``t = lam * sigma`` in a form in
which no large terms cancel. All scores are finite and accurate to a few ulps (float64) or ~1e-6
(float32) for ``1e-12 <= sigma <= 1e3``, ``0 <= |mu| / sigma <= 1e6``, with two documented
saturations: ``mean_exp_abs`` clamps at ~``finfo.max`` and ``snr_exp_abs`` underflows to 0 for large
``lam * sigma``; their logs, ``log_mean_exp_abs`` and ``log_snr_exp_abs``, never saturate.

The addition criteria (gradient based) are computed in :mod:`pyro_ssvi.surgery_step`; only their
names live here.

Not offered: the SSVI authors' float32 SNR(exp(|theta|)) code, which returns NaN for some
entries (its naive moments cancel or overflow); :func:`snr_exp_abs` is the stable form of the
same criterion (see ``docs/fidelity.md``).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor
from torch.special import erf, log_ndtr, ndtr

from pyro_ssvi.errors import SSVIConfigError

__all__ = [
    "ADDITION_CRITERIA", "DEFAULT_REMOVAL_CRITERION", "REMOVAL_CRITERIA", "RemovalCriterion",
    "abs_mean", "check_addition_criterion", "get_removal_criterion", "log_mean_exp_abs",
    "log_snr_exp_abs", "mean_abs", "mean_exp_abs", "snr", "snr_abs", "snr_exp_abs",
]

RemovalCriterion = Callable[[Tensor, Tensor], Tensor]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
# Beyond r = |mu|/sigma = 1e3 every folding term carries a factor exp(-r^2/2) that is exactly 0 in
# float64, so r may be clamped there; this also keeps products such as r * Phi(-r) away from inf*0.
_R_MAX = 1e3
# Below t = lam*sigma = 0.5 the exp-SNR uses quadrature (see _log_cv2), above it a log-space form.
_T_SWITCH = 0.5
# 7-point Gauss-Legendre rule on [0, 1] (exact to degree 13; relative error < 1e-15 for t <= 0.5).
# Python floats, so they combine with tensors of any dtype and device without a transfer.
_gl_x, _gl_w = np.polynomial.legendre.leggauss(7)
_GL = tuple(zip((0.5 * (_gl_x + 1.0)).tolist(), (0.5 * _gl_w).tolist()))


def _phi(x: Tensor) -> Tensor:
    """Standard normal density."""
    return torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def _psi(r: Tensor) -> Tensor:
    r"""``psi(r) = phi(r) - r Phi(-r) = E[(Z - r)^+] >= 0`` for ``r >= 0``.

    ``E|theta| = sigma (r + 2 psi(r))``; only ``r <= ~40`` matters (it underflows beyond). The
    subtraction loses ``~r^2`` ulps *relative*, but its absolute error stays ``~eps * phi(r)``,
    which is all the callers need.
    """
    r = r.clamp(max=_R_MAX)
    return (_phi(r) - r * ndtr(-r)).clamp(min=0.0)


def _folded_var_ratio(r: Tensor) -> Tensor:
    r"""``Var|theta| / sigma^2 = 1 - 4 psi (r + psi)`` in ``[1 - 2/pi, 1]``.

    Obtained by inserting ``E|theta| = sigma (r + 2 psi)`` into ``mu^2 + sigma^2 - (E|theta|)^2``:
    the ``r^2`` terms cancel *analytically*, so nothing large is subtracted numerically.
    """
    psi = _psi(r)
    return 1.0 - 4.0 * psi * (r.clamp(max=_R_MAX) + psi)


def abs_mean(mu: Tensor, sigma: Tensor) -> Tensor:
    """Magnitude of the posterior mean, ``|mu|``; ``sigma`` is ignored. Shape of ``mu``."""
    return mu.abs()


def snr(mu: Tensor, sigma: Tensor) -> Tensor:
    """Signal-to-noise ratio of ``theta``, ``|mu| / sigma`` (dimensionless). Shape of ``mu``."""
    return mu.abs() / sigma


def mean_abs(mu: Tensor, sigma: Tensor) -> Tensor:
    r"""``E|theta|``, the folded-normal mean (eq. 6), in the units of ``mu``.

    :math:`\sigma\sqrt{2/\pi}\,e^{-\mu^2/2\sigma^2} + |\mu|\,\mathrm{erf}(|\mu|/\sqrt2\sigma)`, which
    equals eq. 6 since ``mu (1 - 2 Phi(-mu/sigma)) = |mu| erf(|mu| / (sqrt(2) sigma))``. Both terms
    are non-negative, so the sum never cancels. ``->|mu|`` for ``|mu| >> sigma``.

    :param mu: posterior means, any shape. :param sigma: posterior scales (> 0), same shape.
    """
    m = mu.abs()
    r = m / sigma
    return m * erf(r * _INV_SQRT2) + 2.0 * sigma * _phi(r)


def snr_abs(mu: Tensor, sigma: Tensor) -> Tensor:
    r"""``SNR(|theta|) = E|theta| / sqrt(Var|theta|)`` (eq. 7), the default criterion.

    Depends on ``r = |mu|/sigma`` only: ``(r erf(r/sqrt2) + 2 phi(r)) / sqrt(1 - 4 psi (r + psi))``
    with ``psi = phi(r) - r Phi(-r)`` (see :func:`_folded_var_ratio` for why the denominator is
    stable). Equals ``sqrt(2/pi) / sqrt(1 - 2/pi) ~ 1.3236`` at ``mu = 0``, ``~r`` for ``r >> 1``.

    :param mu: posterior means, any shape. :param sigma: posterior scales (> 0), same shape.
    """
    r = mu.abs() / sigma
    mean_ratio = r * erf(r * _INV_SQRT2) + 2.0 * _phi(r)
    return mean_ratio * torch.rsqrt(_folded_var_ratio(r))


def _check_lam(lam: float) -> None:
    # A Python-level check on a Python float: no tensor, no host synchronisation.
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (0.0 < lam < math.inf):
        raise SSVIConfigError(f"lam must be a finite positive float, got {lam!r}")


def _log_tilt(r: Tensor, tau: Tensor) -> Tensor:
    """``A(tau) = log(Phi(r + tau) + exp(-2 tau r) Phi(tau - r))`` in ``[log 1/2, log 2]``."""
    return torch.logaddexp(log_ndtr(r + tau), log_ndtr(tau - r) - 2.0 * tau * r)


def _tilted_var(r: Tensor, w: Tensor) -> Tensor:
    """``K''(w)``, second derivative of the cumulant generating function of ``W = |r + Z|``.

    It is the variance of ``W`` under exponential tilting by ``w >= 0`` (``>= 1 - 2/pi``), from
    ``K(w) = w r + w^2/2 + log S``, ``S = Phi(r+w) + q``, ``q = e^{-2wr} Phi(w-r)``, with
    ``S' = 2 (phi(r+w) - r q)`` and ``S'' = 2 (2 r^2 q - (w + 2r) phi(r+w))``.
    """
    u = w + r
    g = _phi(u)
    q = torch.exp(log_ndtr(w - r) - 2.0 * w * r)
    s = ndtr(u) + q
    a = (g - r * q) / s  # S' / 2S
    b = (2.0 * r * r * q - (u + r) * g) / s  # S'' / 2S
    return 1.0 + 2.0 * b - 4.0 * a * a


def _log_cv2(r: Tensor, t: Tensor) -> Tensor:
    r"""``log CV^2`` of ``X = exp(t W)``, ``W = |r + Z|``; ``CV^2 = expm1(D)``, ``D = K(2t) - 2K(t)``.

    ``D = t^2 + A(2t) - 2A(t)`` is O(t^2) but its terms are O(t): for small ``t`` it is computed
    from the exact identity ``D = int_0^{2t} min(w, 2t - w) K''(w) dw`` (the integrand is positive),
    with Gauss-Legendre on ``[0, t]`` and ``[t, 2t]`` (relative error < 1e-15 for ``t <= 0.5``). For
    ``t > 0.5``, ``D >= 0.09`` and the direct log-space form loses only a few ulps.
    """
    ts = t.clamp(max=_T_SWITCH)  # each branch sees only its own range: no inf/NaN anywhere
    c = torch.zeros_like(ts)
    for x, wt in _GL:
        c = c + wt * (x * _tilted_var(r, ts * x) + (1.0 - x) * _tilted_var(r, ts * (1.0 + x)))
    d_small = (ts * ts * c).clamp(min=torch.finfo(t.dtype).tiny)
    # log expm1(D) = log D + log(expm1(D)/D); D <= 0.25 here, so expm1(D)/D is well conditioned.
    small = 2.0 * torch.log(ts) + torch.log(c) + torch.log(torch.expm1(d_small) / d_small)
    tl = t.clamp(min=_T_SWITCH)
    d_large = (tl * tl + _log_tilt(r, 2.0 * tl) - 2.0 * _log_tilt(r, tl)).clamp(min=0.01)
    large = d_large + torch.log(-torch.expm1(-d_large))  # log expm1(D), no overflow for huge D
    return torch.where(t <= _T_SWITCH, small, large)


def log_mean_exp_abs(mu: Tensor, sigma: Tensor, lam: float = 1.0) -> Tensor:
    r"""``log E exp(lam |theta|)``, never saturating; same ranking as :func:`mean_exp_abs`.

    ``lam |mu| + t^2/2 + log(Phi(r + t) + exp(-2 t r) Phi(t - r))`` with ``t = lam sigma``, the
    log of the folded-normal MGF; the last term lies in ``[log 1/2, log 2]``, so no term cancels.
    """
    _check_lam(lam)
    m = mu.abs()
    t = lam * sigma
    return lam * m + 0.5 * t * t + _log_tilt((m / sigma).clamp(max=_R_MAX), t)


def mean_exp_abs(mu: Tensor, sigma: Tensor, lam: float = 1.0) -> Tensor:
    r"""``E exp(lam |theta|)`` (eq. 8), the folded-normal moment generating function at ``lam``.

    :math:`e^{\lambda\mu+\lambda^2\sigma^2/2}\Phi(\mu/\sigma+\lambda\sigma) + e^{-\lambda\mu+\lambda^2\sigma^2/2}
    \Phi(-\mu/\sigma+\lambda\sigma)`, computed as ``exp`` of :func:`log_mean_exp_abs`. Saturates at
    ``0.999 * torch.finfo(dtype).max`` once ``lam |mu| + (lam sigma)^2 / 2`` exceeds ~88 (float32) or ~709
    (float64); rank with :func:`log_mean_exp_abs` if that can happen.

    :param lam: the rate ``lambda > 0`` (units of 1/``mu``).
    """
    # Clamp in log space (just below log(max)) so that values and gradients stay finite.
    log_max = math.log(torch.finfo(mu.dtype).max) - 1e-3
    return torch.exp(log_mean_exp_abs(mu, sigma, lam).clamp(max=log_max))


def log_snr_exp_abs(mu: Tensor, sigma: Tensor, lam: float = 1.0) -> Tensor:
    """``log SNR(exp(lam |theta|))``, never saturating; same ranking as :func:`snr_exp_abs`."""
    _check_lam(lam)
    return -0.5 * _log_cv2((mu.abs() / sigma).clamp(max=_R_MAX), lam * sigma)


def snr_exp_abs(mu: Tensor, sigma: Tensor, lam: float = 1.0) -> Tensor:
    r"""``SNR(exp(lam |theta|)) = E X / sqrt(E X^2 - (E X)^2)``, ``X = exp(lam |theta|)``.

    With ``M(l) = E exp(l |theta|)``, ``SNR = 1 / sqrt(expm1(log M(2 lam) - 2 log M(lam)))``, a
    function of ``r = |mu|/sigma`` and ``t = lam sigma`` only, evaluated without cancellation by
    :func:`_log_cv2`. ``~1 / (t sqrt(Var|theta|/sigma^2))`` for small ``t``; for ``r >> 1`` it tends
    to the lognormal value ``1 / sqrt(expm1(t^2))``, i.e. it barely depends on ``|mu|``.
    Underflows to 0 once ``lam sigma`` exceeds ~13 (float32) or ~38 (float64); rank with
    :func:`log_snr_exp_abs` if that can happen.
    """
    return torch.exp(log_snr_exp_abs(mu, sigma, lam))


DEFAULT_REMOVAL_CRITERION = "snr_abs"
REMOVAL_CRITERIA: dict[str, RemovalCriterion] = {
    "abs_mean": abs_mean,
    "snr": snr,
    "mean_abs": mean_abs,
    "snr_abs": snr_abs,
    "mean_exp_abs": mean_exp_abs,
    "snr_exp_abs": snr_exp_abs,
}
_LAM_CRITERIA = ("mean_exp_abs", "snr_exp_abs")
#: Addition criteria (computed by :mod:`pyro_ssvi.surgery_step`): ``grad`` |dL/dtheta| at one draw,
#: ``grad_mean`` at theta = E_q theta, ``grad_mc`` the paper's mean of |dL/dtheta| over K
#: (theta, x) pairs, ``grad_mc_mean`` |mean dL/dtheta| over them.
ADDITION_CRITERIA: tuple[str, ...] = ("grad", "grad_mean", "grad_mc", "grad_mc_mean")


def _unknown(kind: str, name: object, known: tuple[str, ...] | list[str], arg: str) -> SSVIConfigError:
    return SSVIConfigError(
        f"Unknown {kind} criterion {name!r}; expected one of: {', '.join(sorted(known))}. "
        f"Pass one of these names as {arg}=..."
    )


def get_removal_criterion(name: str, *, lam: Optional[float] = None) -> RemovalCriterion:
    """Look up a removal criterion by name; ``lam`` (exp criteria only) is bound if given.

    :raises SSVIConfigError: unknown ``name``, or ``lam`` given for a criterion without one.
    """
    if not isinstance(name, str) or name not in REMOVAL_CRITERIA:
        raise _unknown("removal", name, list(REMOVAL_CRITERIA), "removal")
    if lam is None:
        return REMOVAL_CRITERIA[name]
    if name not in _LAM_CRITERIA:
        raise SSVIConfigError(f"Removal criterion {name!r} takes no lam; only {', '.join(_LAM_CRITERIA)} do")
    _check_lam(lam)
    return partial(REMOVAL_CRITERIA[name], lam=lam)


def check_addition_criterion(name: str) -> str:
    """Return ``name`` if it is one of :data:`ADDITION_CRITERIA`, else raise :class:`SSVIConfigError`."""
    if not isinstance(name, str) or name not in ADDITION_CRITERIA:
        raise _unknown("addition", name, ADDITION_CRITERIA, "addition")
    return name
