"""Summaries of a MaskedAutoNormal's posterior: medians, marginal quantiles, density, per-site table."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from pyro.distributions import Normal
from torch import Tensor

__all__ = ["PosteriorSummaries"]


class PosteriorSummaries:
    """What :class:`~pyro_ssvi.guides.MaskedAutoNormal` reports about its posterior (a mixin).

    Expects ``self._sites``, ``self._latents``, ``moments``, ``site_params``, ``site_mask``,
    ``scale`` and ``latent_params``.
    """

    @torch.no_grad()
    def median(self, *args, **kwargs) -> Dict[str, Tensor]:
        """Posterior median of each site: the mean (0 where inactive) for weight sites, the
        transformed unconstrained mean for dense latents."""
        result = {name: self.moments(name)[0].clone() for name in self._sites}
        for name, info in self._latents.items():
            result[name] = info.transform(self.latent_params(name)[0]).clone()
        return result

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float], *args, **kwargs) -> Dict[str, Tensor]:
        """Site name -> tensor ``[len(quantiles), *shape]`` of marginal quantiles (0 where inactive)."""
        result = {}
        for name in list(self._sites) + list(self._latents):
            if name in self._sites:
                loc, rho = self.site_params(name)
                mask = self.site_mask(name)
            else:
                (loc, rho), mask = self.latent_params(name), None
            q = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
            z = Normal(0.0, 1.0).icdf(q).reshape((-1,) + (1,) * loc.dim())
            values = loc + F.softplus(rho) * z
            result[name] = values * mask if mask is not None else self._latents[name].transform(values)
        return result

    def density(self) -> float:
        """Active / total entries over the sparse sites (1.0 if none is sparse); no device sync."""
        sparse = [info for info in self._sites.values() if info.sparse]
        if not sparse:
            return 1.0
        return sum(i.num_active for i in sparse) / sum(i.numel for i in sparse)

    @torch.no_grad()
    def summary(self) -> Dict[str, dict]:
        """Per weight site: shape, numel, active count, density, sparse flag, mean |loc| and sigma (active)."""
        rows = {}
        for name, info in self._sites.items():
            loc, _ = self.site_params(name)
            mask = self.site_mask(name)
            active = int(mask.sum())
            rows[name] = {
                "shape": tuple(info.shape),
                "numel": info.numel,
                "active": active,
                "density": active / info.numel,
                "sparse": info.sparse,
                "mean_abs_loc": float(loc.abs()[mask].mean()) if active else 0.0,
                "mean_sigma": float(self.scale(name)[mask].mean()) if active else 0.0,
            }
        return rows
