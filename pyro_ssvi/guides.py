"""MaskedAutoNormal: a mean-field Normal guide whose support is a fixed-size subset of each weight.

Per latent site it holds ``loc``, an unconstrained ``rho`` with ``scale = softplus(rho)``, and a
bool ``mask`` buffer. It samples :class:`~pyro_ssvi.distributions.MaskedNormal` *at the site
itself* (not a Delta plus an auxiliary site, as ``AutoNormal`` does), so closed-form KL
(TraceMeanField_ELBO) and local reparameterization see a Normal.

Invariants kept by this class and by :mod:`pyro_ssvi.surgery`: a sparse site has exactly
``num_active`` True entries at every moment; inactive entries hold ``loc == 0`` and a finite
placeholder ``rho``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import pyro
import torch
import torch.nn.functional as F
from pyro.distributions import Independent, Normal
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.runtime import effectful
from torch import Tensor, nn

from .distributions import MaskedNormal
from .errors import SSVIConfigError

__all__ = ["MaskedAutoNormal", "SiteInfo", "init_to_normal", "num_active_entries", "plan_site", "softplus_inverse"]

InitLocFn = Callable[[dict], Tensor]
InitScale = Union[float, Tuple[float, float]]


def softplus_inverse(scale: Tensor) -> Tensor:
    """``rho`` with ``softplus(rho) = scale`` (stable for small and large scale), same shape."""
    return scale + torch.log(-torch.expm1(-scale))


def num_active_entries(numel: int, sparsity: float) -> int:
    """``round((1 - sparsity) * numel)``, at least 1 so no layer is cut off entirely."""
    return max(1, round((1.0 - sparsity) * numel))


def plan_site(name: str, shape, sparsity: float, dense_sites=(), sparse_1d: bool = False) -> Tuple[bool, int]:
    """``(sparse, num_active)`` of a site: sparse unless ``sparsity == 0``, listed in
    ``dense_sites``, or of fewer than 2 dimensions (biases) without ``sparse_1d``."""
    numel = torch.Size(shape).numel()
    sparse = sparsity > 0 and name not in dense_sites and (len(shape) >= 2 or sparse_1d)
    return sparse, (num_active_entries(numel, sparsity) if sparse else numel)


def init_to_normal(std: Optional[float] = None) -> InitLocFn:
    """Initial means ``N(0, std^2)``; ``std=None`` uses He scaling ``sqrt(2 / fan_in)``.

    The SSVI paper initializes ResNet means with ``std=0.01``. ``fan_in`` is the product of all
    but the first dimension of the site's shape (1 for a 1-D site).
    """

    def init(site: dict) -> Tensor:
        shape = site["fn"].shape()
        s = std
        if s is None:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            s = math.sqrt(2.0 / fan_in)
        return torch.randn(shape, device=site["value"].device, dtype=site["value"].dtype) * s

    return init


@dataclass(frozen=True)
class SiteInfo:
    """Static description of one guide site."""

    shape: torch.Size
    event_dim: int
    sparse: bool
    num_active: int  # constant for the life of the guide

    @property
    def numel(self) -> int:
        return self.shape.numel()


def _key(name: str) -> str:
    # nn.ParameterDict keys cannot contain "."; site names are module paths.
    return name.replace(".", "__")


class _Buffers(nn.Module):
    """A plain holder of named buffers (nn has no BufferDict)."""


def _param_statement(name: str, value: Tensor) -> None:
    """Announce a parameter to Pyro handlers (``SVI``'s param capture) without the global store.

    Using the module's own tensor (never one looked up by name) means two guides with equal
    site names cannot train each other's parameters.
    """
    if not hasattr(value, "unconstrained"):
        value.unconstrained = weakref.ref(value)
    effectful(type="param")(lambda *_, **__: value)(name, value, name=name)


class MaskedAutoNormal(AutoGuide):
    """Mean-field Normal guide over a random ``1 - sparsity`` fraction of every weight site.

    :param model: a Pyro model whose latent sites have Normal priors (e.g. ``pyro_ssvi.models``
        models, a ``PyroModule`` with ``PyroSample`` weights, or any model with such sites).
    :param sparsity: fraction of inactive entries per sparse site, in [0, 1). ``0`` is dense
        mean-field VI through the same code path.
    :param dense_sites: sites kept fully active. Default: the model's ``default_dense_sites``
        (the ResNet stem conv) if it has one, else none. Sites of fewer than 2 dimensions
        (biases) are dense unless ``sparse_1d=True``.
    :param init_loc_fn: ``site -> initial loc``; default :func:`init_to_normal` (He scaling).
    :param init_scale: initial sigma: a float, or ``(mean, std)`` for ``|N(mean, std^2)|`` per
        entry (the paper uses ``(6e-4, 5e-4)``).
    :param seed: seed of the initial random masks (default: drawn from torch's global RNG).

    The guide is set up lazily on its first call (like every ``AutoGuide``); call
    ``guide(*model_args)`` once before building an optimizer over ``guide.parameters()``.

    >>> from pyro_ssvi import models
    >>> model = models.mlp([4, 16, 3])
    >>> guide = MaskedAutoNormal(model, sparsity=0.75)
    >>> _ = guide(torch.randn(2, 4))
    >>> int(guide.masks["1.weight"].sum()), guide.density()
    (16, 0.25)
    """

    def __init__(
        self,
        model,
        sparsity: float = 0.9,
        *,
        dense_sites: Optional[Iterable[str]] = None,
        sparse_1d: bool = False,
        init_loc_fn: Optional[InitLocFn] = None,
        init_scale: InitScale = 1e-3,
        seed: Optional[int] = None,
    ) -> None:
        if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
            raise SSVIConfigError(
                f"sparsity must be in [0, 1) (the fraction of inactive weights), got {sparsity!r}"
            )
        _check_init_scale(init_scale)
        super().__init__(model)
        self.sparsity = float(sparsity)
        self.dense_sites = tuple(dense_sites if dense_sites is not None else getattr(model, "default_dense_sites", ()))
        self.sparse_1d = sparse_1d
        self.init_loc_fn = init_loc_fn or init_to_normal()
        self.init_scale = init_scale
        self.seed = seed
        self._sites: Dict[str, SiteInfo] = {}
        self._indicators: Dict[str, Tuple[Tensor, int, Tensor]] = {}
        self._active: Dict[str, Tuple[Tensor, int, Tuple[Tensor, ...]]] = {}
        #: Emit ``pyro.param`` statements for loc/rho so ``pyro.infer.SVI`` finds them. SSVI
        #: collects the guide's parameters itself and switches this off during its own calls.
        self.announce_params = True
        # Accessed through self._modules[...] only: PyroModule.__getattr__ would otherwise
        # route nn.Module children through pyro.module() and the global parameter store.
        self.add_module("locs", nn.ParameterDict())
        self.add_module("rhos", nn.ParameterDict())
        self.add_module("mask_buffers", _Buffers())

    # ------------------------------------------------------------------ setup
    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        # Sites inside a plate are per-datum (the observation site when ``y`` is not given, as
        # under Predictive): the model, not this guide, draws those unless they are Normal.
        latent = []
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            is_normal = _normal_base(site["fn"]) is not None
            if site["cond_indep_stack"]:
                if is_normal:
                    raise SSVIConfigError(
                        f"site {name!r} is a Normal latent inside a plate; MaskedAutoNormal covers "
                        "global weights only. Hide it with poutine.block and use AutoGuideList."
                    )
                continue
            if not is_normal:
                raise SSVIConfigError(
                    f"MaskedAutoNormal needs Normal priors, but site {name!r} has {type(site['fn']).__name__}. "
                    "Hide it with poutine.block and combine guides with AutoGuideList."
                )
            latent.append((name, site))
        if not latent:
            raise SSVIConfigError(
                "The model has no latent sample site with a Normal prior, so there is nothing for "
                "MaskedAutoNormal to fit. Did you forget to make the weights sample sites (e.g. "
                "pyro_ssvi.models.bayesianize(net) or PyroSample priors)?"
            )
        unknown = set(self.dense_sites) - {n for n, _ in latent}
        if unknown:
            raise SSVIConfigError(
                f"dense_sites {sorted(unknown)} are not latent sites of the model; its sites are "
                f"{[n for n, _ in latent]}"
            )
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        for name, site in latent:
            self._init_site(name, site, generator)

    def _init_site(self, name: str, site: dict, generator: Optional[torch.Generator]) -> None:
        value = site["value"].detach()
        shape = value.shape
        sparse, num_active = plan_site(name, shape, self.sparsity, self.dense_sites, self.sparse_1d)
        info = SiteInfo(shape, site["fn"].event_dim, sparse, num_active)
        self._sites[name] = info

        mask = torch.zeros(shape.numel(), dtype=torch.bool)
        mask[torch.randperm(shape.numel(), generator=generator)[:num_active]] = True
        mask = mask.view(shape).to(value.device)
        loc = self.init_loc_fn(site).detach().to(value).reshape(shape) * mask
        scale = _initial_scale(self.init_scale, shape, value)
        key = _key(name)
        self._modules["locs"][key] = nn.Parameter(loc)
        self._modules["rhos"][key] = nn.Parameter(softplus_inverse(scale))
        self._modules["mask_buffers"].register_buffer(key, mask)

    # ------------------------------------------------------------------ access
    @property
    def sites(self) -> Dict[str, SiteInfo]:
        """Site name -> :class:`SiteInfo`, in model order (empty before the first call)."""
        return self._sites

    @property
    def masks(self) -> Dict[str, Tensor]:
        """Site name -> bool mask (the live buffers; True = active)."""
        buffers = self._modules["mask_buffers"]._buffers
        return {name: buffers[_key(name)] for name in self._sites}

    def site_params(self, name: str) -> Tuple[nn.Parameter, nn.Parameter]:
        """``(loc, rho)`` parameters of a site (``scale = softplus(rho)``)."""
        key = _key(name)
        return self._modules["locs"][key], self._modules["rhos"][key]

    def loc_parameters(self) -> list:
        """Every site's ``loc`` (the means; the paper puts weight decay on these)."""
        return list(self._modules["locs"].parameters())

    def rho_parameters(self) -> list:
        """Every site's ``rho`` (``sigma = softplus(rho)``; no weight decay in the paper)."""
        return list(self._modules["rhos"].parameters())

    def site_mask(self, name: str) -> Tensor:
        return self._modules["mask_buffers"]._buffers[_key(name)]

    def site_indicator(self, name: str) -> Tensor:
        """The site's mask as 0/1 in the parameters' dtype, cached until the mask changes.

        Multiplying by a bool mask costs a dtype-conversion kernel forward and backward; this
        tensor is rebuilt only when the mask buffer is replaced (``.to``, loading) or modified in
        place (surgery bumps its version counter).
        """
        dtype = self.site_params(name)[0].dtype
        return self._derived_from_mask(self._indicators, name, lambda mask: mask.to(dtype))

    def _derived_from_mask(self, store: dict, name: str, compute):
        """``compute(mask)``, cached in ``store`` while the mask buffer is the same tensor with the
        same version (``.to()`` and loading replace or rewrite it; surgery bumps the version)."""
        mask = self.site_mask(name)
        cached = store.get(name)
        if cached is None or cached[0] is not mask or cached[1] != mask._version:
            cached = (mask, mask._version, compute(mask))
            store[name] = cached
        return cached[2]

    def scale(self, name: str) -> Tensor:
        """``softplus(rho)``, unmasked (placeholders at inactive entries)."""
        return F.softplus(self.site_params(name)[1])

    def moments(self, name: str) -> Tuple[Tensor, Tensor]:
        """``(mean, variance)`` of the site's weight under q, zero at inactive entries."""
        loc, rho = self.site_params(name)
        indicator = self.site_indicator(name)
        return loc * indicator, F.softplus(rho).square() * indicator

    def get_distribution(self, name: str):
        """q of one site: ``MaskedNormal`` with the site's event dimensions."""
        q = self._masked_normal(name)
        event_dim = self._sites[name].event_dim
        return q.to_event(event_dim) if event_dim else q

    def _masked_normal(self, name: str) -> MaskedNormal:
        loc, rho = self.site_params(name)
        return MaskedNormal(
            loc, F.softplus(rho), self.site_mask(name), indicator=self.site_indicator(name),
            active=self.site_active_index(name),
        )

    def site_active_index(self, name: str) -> Optional[Tuple[Tensor, ...]]:
        """Per-dimension indices of a sparse site's active entries (None for a dense site).

        Cached like :meth:`site_indicator`; computing it synchronizes with the device, so
        surgery refreshes it on its own (already synchronizing) step.
        """
        if not self._sites[name].sparse:
            return None
        return self._derived_from_mask(self._active, name, lambda mask: mask.nonzero(as_tuple=True))

    # ------------------------------------------------------------------ Pyro interface
    def forward(self, *args, **kwargs) -> Dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        values = {}
        for name, info in self._sites.items():
            if self.announce_params:
                loc, rho = self.site_params(name)
                _param_statement(f"{name}.loc", loc)
                _param_statement(f"{name}.rho", rho)
            q = self._masked_normal(name)
            value = pyro.sample(name, q.to_event(info.event_dim) if info.event_dim else q)
            # The draw carries its distribution: local reparameterization reads (mean, variance)
            # from it instead of recomputing softplus(rho) (see handlers.lrt).
            value.ssvi_q = q
            values[name] = value
        return values

    @torch.no_grad()
    def median(self, *args, **kwargs) -> Dict[str, Tensor]:
        """Posterior median (= mean) of each site, zero at inactive entries."""
        return {name: self.moments(name)[0].clone() for name in self._sites}

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float], *args, **kwargs) -> Dict[str, Tensor]:
        """Site name -> tensor ``[len(quantiles), *shape]`` of marginal quantiles (0 where inactive)."""
        result = {}
        for name in self._sites:
            loc, rho = self.site_params(name)
            q = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
            z = Normal(0.0, 1.0).icdf(q).reshape((-1,) + (1,) * loc.dim())
            result[name] = (loc + F.softplus(rho) * z) * self.site_mask(name)
        return result

    def density(self) -> float:
        """Active / total entries over the sparse sites (1.0 if none is sparse); no device sync."""
        sparse = [info for info in self._sites.values() if info.sparse]
        if not sparse:
            return 1.0
        return sum(i.num_active for i in sparse) / sum(i.numel for i in sparse)

    @torch.no_grad()
    def summary(self) -> Dict[str, dict]:
        """Per site: shape, numel, active count, density, sparse flag, mean |loc| and sigma (active)."""
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


def _normal_base(fn) -> Optional[Normal]:
    base = fn.base_dist if isinstance(fn, Independent) else fn
    return base if isinstance(base, Normal) else None


def _check_init_scale(init_scale: InitScale) -> None:
    if isinstance(init_scale, (int, float)):
        ok = init_scale > 0
    else:
        ok = len(tuple(init_scale)) == 2 and all(isinstance(v, (int, float)) for v in init_scale)
    if not ok:
        raise SSVIConfigError(
            f"init_scale must be a positive float or a (mean, std) pair for |N(mean, std^2)|, got {init_scale!r}"
        )


def _initial_scale(init_scale: InitScale, shape: torch.Size, like: Tensor) -> Tensor:
    if isinstance(init_scale, (int, float)):
        return torch.full(shape, float(init_scale), dtype=like.dtype, device=like.device)
    mean, std = init_scale
    scale = (torch.randn(shape, dtype=like.dtype, device=like.device) * std + mean).abs()
    # |N(.)| can be ~0; softplus_inverse of 0 is -inf. Floor at a tiny positive sigma.
    return scale.clamp_min(1e-8)
