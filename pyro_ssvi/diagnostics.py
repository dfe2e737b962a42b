"""Did the posterior learn? Per-layer diagnostics of a MaskedAutoNormal's sigmas.

A mean-field posterior whose sigmas never leave their initial value carries no information
from the data: its "epistemic" uncertainty is the initialization. :func:`sigma_snapshot` records
the sigmas at the start of training; :func:`posterior_diagnostics` compares the end with it, per
weight site, over the entries active at the end:

- ``sigma_start`` / ``sigma_end``: median and 10% / 90% quantiles;
- ``moved``: the fraction whose sigma changed by more than 10% (relative);
- ``snr_median``: the median signal-to-noise ratio ``|mu| / sigma``.

``learned`` is False when fewer than :data:`MOVED_ENOUGH` of all active sigmas moved;
:func:`not_learned_warning` then says what to try.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

__all__ = ["MOVED_ENOUGH", "not_learned_warning", "posterior_diagnostics", "sigma_snapshot"]

#: The fraction of active sigmas that must have moved by > 10% for a posterior to count as learned.
MOVED_ENOUGH = 0.10


@torch.no_grad()
def sigma_snapshot(guide) -> Dict[str, Tensor]:
    """Site -> a copy of every entry's sigma (active or not: regrown entries start from theirs)."""
    return {name: guide.scale(name).detach().clone() for name in guide.sites}


def _quantiles(values: Tensor) -> Dict[str, float]:
    if values.numel() == 0:
        return {"q10": float("nan"), "median": float("nan"), "q90": float("nan")}
    values = values.double().reshape(-1)[:16_000_000]
    q = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, device=values.device))
    return {"q10": float(q[0]), "median": float(q[1]), "q90": float(q[2])}


@torch.no_grad()
def posterior_diagnostics(guide, start: Dict[str, Tensor]) -> Dict[str, object]:
    """``{"layers": {site: {...}}, "moved": overall fraction, "learned": bool}`` (see the module docstring)."""
    layers, moved_total, active_total = {}, 0.0, 0
    for name in guide.sites:
        mask = guide.site_mask(name)
        loc, _ = guide.site_params(name)
        sigma_end = guide.scale(name)[mask]
        sigma_start = start[name].to(mask.device)[mask]
        moved = ((sigma_end / sigma_start - 1).abs() > 0.1).double()
        snr = loc.detach()[mask].abs() / sigma_end
        layers[name] = {
            "sigma_start": _quantiles(sigma_start), "sigma_end": _quantiles(sigma_end),
            "moved": float(moved.mean()) if moved.numel() else 0.0,
            "snr_median": _quantiles(snr)["median"], "active": int(mask.sum()),
        }
        moved_total += float(moved.sum())
        active_total += moved.numel()
    overall = moved_total / max(active_total, 1)
    return {"layers": layers, "moved": overall, "learned": overall >= MOVED_ENOUGH}


def not_learned_warning(diagnostics: Dict[str, object]) -> Optional[str]:
    """A warning when the posterior did not learn (None otherwise)."""
    if diagnostics["learned"]:
        return None
    medians = [layer["sigma_end"]["median"] for layer in diagnostics["layers"].values()]
    return (
        f"the posterior did not learn: only {100 * diagnostics['moved']:.1f}% of the active sigmas moved by more "
        f"than 10% from their initial values (median sigma per layer now {min(medians):.3g}-{max(medians):.3g}), "
        "so its uncertainty is the initialization's, not the data's. Try the exact ELBO (method.kl_max=1, "
        "method.kl_warmup=0), a larger model.init_scale, or a larger train.sigma_lr."
    )
