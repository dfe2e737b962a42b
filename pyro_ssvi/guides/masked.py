"""MaskedAutoNormal: a mean-field Normal guide whose support is a fixed-size subset of each weight.

Every continuous latent of the model is covered (see :mod:`pyro_ssvi.guides.sites`):

- a *weight site* (global, Normal prior) has ``loc``, an unconstrained ``rho`` with
  ``scale = softplus(rho)``, and a bool ``mask`` buffer; it samples
  :class:`~pyro_ssvi.distributions.MaskedNormal` *at the site itself* (not a Delta plus an
  auxiliary site, as ``AutoNormal`` does), so closed-form KL (TraceMeanField_ELBO) and local
  reparameterization see a Normal;
- a *dense latent* (any other continuous site: a noise scale, a plate-local variable) gets a dense
  Normal in unconstrained space, mapped to the prior's support by ``biject_to``.

Parameters live where Pyro expects them: the param store holds the guide's own tensors as
``<name>.locs.<site>`` and ``<name>.scales.<site>`` (constraint ``softplus_positive``: the
unconstrained value is ``rho``), and the masks as ``<name>.masks.<site>``, so JIT ELBOs, the
store's ``save``/``load``, per-parameter ``pyro.optim`` arguments and its ``get_state`` all work
(see :mod:`pyro_ssvi.params` for loading and name clashes).

Invariants kept by this class and by :mod:`pyro_ssvi.surgery`: a sparse site has exactly
``num_active`` True entries at every moment; inactive entries hold ``loc == 0`` and a finite
placeholder ``rho``.
"""

from __future__ import annotations

import functools
import warnings
from contextlib import ExitStack
from typing import Dict, Iterable, Optional, Sequence, Tuple

import pyro
import torch
import torch.nn.functional as F
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.autoguide.utils import helpful_support_errors
from torch import Tensor, nn

from ..distributions import MaskedNormal, SubspacePrior
from ..errors import SSVIConfigError
from ..params import StoreEntries, announcing
from ..variant import VariantLike, get_variant
from .flat import FlatLayout, FlatMoments, unravel
from .init import INIT_LOC_KEY, InitScale, check_init_scale, init_to_normal, initial_mask, initial_scale
from .persistence import ParamStorePersistence, site_key
from .sites import (
    LatentInfo,
    SiteInfo,
    check_continuous,
    is_weight_site,
    latent_info,
    normal_base,
    plan_site,
    softplus_inverse,
)
from .summary import PosteriorSummaries

_key = site_key


class _Buffers(nn.Module):
    """A plain holder of named buffers (nn has no BufferDict)."""


class MaskedAutoNormal(PosteriorSummaries, ParamStorePersistence, AutoGuide):
    """Mean-field Normal guide over a random ``1 - sparsity`` fraction of every weight site.

    :param model: any Pyro model. Its global Normal-prior sites (weights) get masked Normals;
        every other continuous latent gets a dense Normal in unconstrained space.
    :param sparsity: fraction of inactive entries per sparse site, in [0, 1). ``0`` is dense
        mean-field VI through the same code path.
    :param dense_sites: weight sites kept fully active, in addition to those whose model
        statement says ``infer={"ssvi_dense": True}`` (pyro_ssvi's ResNet stem conv). Sites of
        fewer than 2 dimensions (biases) are dense unless ``sparse_1d=True``.
    :param init_loc_fn: a Pyro init strategy ``site -> initial value`` (constrained space);
        default :class:`~pyro_ssvi.guides.init_to_normal` (He-scaled weights, prior medians
        elsewhere). A site whose model statement carries ``infer={"ssvi_init_loc": w}`` starts
        from ``w``, with its largest-magnitude entries active.
    :param init_scale: initial sigma: a float, or ``(mean, std)`` for ``|N(mean, std^2)|`` per
        weight entry (the paper uses ``(6e-4, 5e-4)``; dense latents take ``mean``).
    :param seed: seed of the initial random masks (default: drawn from torch's global RNG).
    :param variant: ``"paper"`` (default) or ``"authors"``, a :class:`~pyro_ssvi.variant.Variant` or a
        dict of its fields; the guide reads ``initial_active`` (how many entries start active),
        :class:`~pyro_ssvi.SSVI` the rest (see ``docs/fidelity.md``).
    :param create_plates: as for every ``AutoGuide`` (plates of plate-local latents).
    :param name: prefix of the guide's names in Pyro's param store; default
        ``"MaskedAutoNormal"`` (``"MaskedAutoNormal_1"``, ... while another live guide holds it).

    The guide is set up lazily on its first call, like every ``AutoGuide``: call it with the
    model's arguments, observations included (``guide(x, y)``), before building an optimizer
    over ``guide.parameters()``.

    >>> from pyro_ssvi import models
    >>> model = models.mlp([4, 16, 3])
    >>> guide = MaskedAutoNormal(model, sparsity=0.75)
    >>> _ = guide(torch.randn(2, 4), torch.tensor([0, 2]))
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
        init_loc_fn=None,
        init_scale: InitScale = 1e-3,
        seed: Optional[int] = None,
        create_plates=None,
        name: Optional[str] = None,
        variant: VariantLike = None,
    ) -> None:
        if not (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and 0.0 <= sparsity < 1.0):
            raise SSVIConfigError(
                f"sparsity must be in [0, 1) (the fraction of inactive weights), got {sparsity!r}"
            )
        check_init_scale(init_scale)
        if name is not None and (not isinstance(name, str) or not name or "$$$" in name):
            raise SSVIConfigError(f"name must be a non-empty string without '$$$', got {name!r}")
        self.init_loc_fn = init_loc_fn or init_to_normal()
        super().__init__(InitMessenger(self.init_loc_fn)(model), create_plates=create_plates)
        self.sparsity = float(sparsity)
        self.dense_sites = tuple(dense_sites or ())
        self.sparse_1d = sparse_1d
        self.init_scale = init_scale
        self.seed = seed
        self.variant = get_variant(variant)
        self._sites: Dict[str, SiteInfo] = {}
        # Weight site name -> SiteInfo, in model order (empty before the first call). An attribute,
        # not a property: handlers test ``name in guide.sites`` at every site of every step.
        self.sites = self._sites
        self._latents: Dict[str, LatentInfo] = {}
        self._layout: Optional[FlatLayout] = None
        self._keys: Tuple[str, ...] = ()  # weight sites' keys in the ParameterDicts, in site order
        self._weight_names: Tuple[Tuple[str, str, int], ...] = ()  # (loc name, scale name, event_dim)
        self._active: Dict[str, Tuple[Tensor, int, Tuple[Tensor, ...]]] = {}
        self._names: Dict[str, Tuple[str, str]] = {}  # site -> (loc name, scale name) in the store
        self._plain_prior_sites: Tuple[str, ...] = ()  # sparse sites whose prior is not a SubspacePrior
        self._last_draws: Dict[str, MaskedNormal] = {}
        self._warned_objective = False
        self._store = StoreEntries(self, name or "MaskedAutoNormal", explicit=name is not None)
        # Accessed through self._modules[...] only: PyroModule.__getattr__ would otherwise
        # route nn.Module children through pyro.module() and the global parameter store.
        for holder in ("locs", "rhos", "latent_locs", "latent_rhos"):
            self.add_module(holder, nn.ParameterDict())
        self.add_module("mask_buffers", _Buffers())

    # ------------------------------------------------------------------ setup
    def _setup_prototype(self, *args, **kwargs) -> None:
        # Without gradients: the prototype trace lives as long as the guide, and an autograd graph
        # in it would keep the set-up batch's activations and every model parameter's gradient
        # accumulator alive, which on CUDA ties them to the default stream and breaks a graph capture.
        with torch.no_grad():
            super()._setup_prototype(*args, **kwargs)
        self.__dict__.pop("_active_index_getters", None)  # per site, in the order of the sites found now
        weights, latents = [], []
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            check_continuous(name, site)
            (weights if is_weight_site(site) else latents).append((name, site))
        if not weights and not latents:
            raise SSVIConfigError(
                "The model has no latent sample site, so there is nothing for MaskedAutoNormal to fit. "
                "Did you forget to make the weights sample sites (e.g. pyro_ssvi.models.bayesianize(net) "
                "or PyroSample priors)?"
            )
        names = [n for n, _ in weights]
        unknown = set(self.dense_sites) - set(names)
        if unknown:
            raise SSVIConfigError(
                f"dense_sites {sorted(unknown)} are not weight sites of the model (global sites with a "
                f"Normal prior); its weight sites are {names}"
            )
        self.dense_sites = self.dense_sites + tuple(n for n, s in weights if s["infer"].get("ssvi_dense"))
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        for name, site in weights:
            self._init_weight_site(name, site, generator)
        for name, site in latents:
            self._init_latent(name, site)
        self._keys = tuple(_key(n) for n in self._sites)
        self._layout = FlatLayout({n: i.shape for n, i in self._sites.items()},
                                  {n: i.num_active for n, i in self._sites.items()})
        self._plain_prior_sites = tuple(
            n for n, s in weights if self._sites[n].sparse and not isinstance(normal_base(s["fn"]), SubspacePrior)
        )
        self._register_store()

    def _init_weight_site(self, name: str, site: dict, generator: Optional[torch.Generator]) -> None:
        value = site["value"].detach()
        shape = value.shape
        sparse, num_active = plan_site(
            name, shape, self.sparsity, self.dense_sites, self.sparse_1d, rule=self.variant.initial_active
        )
        self._sites[name] = SiteInfo(shape, site["fn"].event_dim, sparse, num_active)
        given = site["infer"].get(INIT_LOC_KEY)
        mask = initial_mask(shape, num_active, generator, value.device, magnitude=given if sparse else None)
        scale = initial_scale(self.init_scale, shape, value)
        key = _key(name)
        self._modules["locs"][key] = nn.Parameter(value.to(scale.dtype) * mask)
        self._modules["rhos"][key] = nn.Parameter(softplus_inverse(scale))
        self._modules["mask_buffers"].register_buffer(key, mask)

    def _init_latent(self, name: str, site: dict) -> None:
        with helpful_support_errors(site):
            info, loc = latent_info(site, site["value"])
        self._latents[name] = info
        mean = self.init_scale if isinstance(self.init_scale, (int, float)) else self.init_scale[0]
        scale = torch.full_like(loc, float(mean))
        key = _key(name)
        self._modules["latent_locs"][key] = nn.Parameter(loc)
        self._modules["latent_rhos"][key] = nn.Parameter(softplus_inverse(scale))

    # ------------------------------------------------------------------ access
    @property
    def latent_sites(self) -> Dict[str, LatentInfo]:
        """Dense latent site name -> :class:`LatentInfo` (empty before the first call)."""
        return self._latents

    @property
    def masks(self) -> Dict[str, Tensor]:
        """Weight site name -> bool mask (the live buffers; True = active)."""
        buffers = self._modules["mask_buffers"]._buffers
        return {name: buffers[_key(name)] for name in self._sites}

    def site_params(self, name: str) -> Tuple[nn.Parameter, nn.Parameter]:
        """``(loc, rho)`` parameters of a weight site (``scale = softplus(rho)``)."""
        key = _key(name)
        return self._modules["locs"][key], self._modules["rhos"][key]

    def latent_params(self, name: str) -> Tuple[nn.Parameter, nn.Parameter]:
        """``(loc, rho)`` of a dense latent, in unconstrained space (``scale = softplus(rho)``)."""
        key = _key(name)
        return self._modules["latent_locs"][key], self._modules["latent_rhos"][key]

    def loc_parameters(self) -> list:
        """Every weight site's ``loc`` and every dense latent's (the paper puts weight decay on means)."""
        return list(self._modules["locs"].parameters()) + list(self._modules["latent_locs"].parameters())

    def rho_parameters(self) -> list:
        """Every ``rho`` (``sigma = softplus(rho)``; no weight decay in the paper)."""
        return list(self._modules["rhos"].parameters()) + list(self._modules["latent_rhos"].parameters())

    def site_mask(self, name: str) -> Tensor:
        return self._modules["mask_buffers"]._buffers[_key(name)]

    def site_indicator(self, name: str) -> Tensor:
        """The site's mask as 0/1 in the parameters' dtype: a view of the flat indicator, which
        is rebuilt only when a mask buffer is replaced (``.to``, loading) or modified in place
        (surgery bumps its version counter). Multiplying by a bool mask instead would cost a
        dtype-conversion kernel forward and another backward on every step."""
        layout = self.flat_layout()
        return layout.indicator_views[layout.index[name]]

    def flat_layout(self, masks: Optional[Sequence[Tensor]] = None) -> FlatLayout:
        """The weight sites' :class:`~pyro_ssvi.guides.flat.FlatLayout`, refreshed for the current
        masks (``masks``: the mask buffers in site order, if the caller has them)."""
        layout = self._layout
        if masks is None:
            masks = [self._modules["mask_buffers"]._buffers[k] for k in self._keys]
        layout.refresh(masks, self._modules["locs"]._parameters[self._keys[0]].dtype)
        return layout

    def _derived_from_mask(self, store: dict, name: str, compute):
        """``compute(mask)``, cached in ``store`` while the mask buffer is the same tensor with the
        same version (``.to()`` and loading replace or rewrite it; surgery bumps the version)."""
        mask = self.site_mask(name)
        cached = store.get(name)
        if cached is None or cached[0] is not mask or cached[1] != mask._version:
            cached = (mask, mask._version, compute(mask))
            store[name] = cached
        return cached[2]

    def _active_getters(self) -> tuple:
        """Per weight site, in order: a zero-argument function returning :meth:`site_active_index`
        (MaskedNormal asks only when a registered KL needs the active entries), or None for a
        dense site; made once (after set-up)."""
        getters = self.__dict__.get("_active_index_getters")
        if getters is None:
            getters = self.__dict__["_active_index_getters"] = tuple(
                functools.partial(self.site_active_index, name) if info.sparse else None
                for name, info in self._sites.items()
            )
        return getters

    def site_active_index(self, name: str) -> Optional[Tuple[Tensor, ...]]:
        """Per-dimension indices of a sparse site's active entries (None for a dense site).

        Cached until the mask changes; found with ``nonzero_static`` (the active count is fixed),
        so computing it never waits for the device.
        """
        info = self._sites[name]
        if not info.sparse:
            return None
        return self._derived_from_mask(
            self._active, name,
            lambda mask: unravel(torch.nonzero_static(mask.reshape(-1), size=info.num_active).squeeze(1), info.shape),
        )

    def scale(self, name: str) -> Tensor:
        """``softplus(rho)`` of a weight site, unmasked (placeholders at inactive entries)."""
        return F.softplus(self.site_params(name)[1])

    def moments(self, name: str) -> Tuple[Tensor, Tensor]:
        """``(mean, variance)`` of a weight site under q, zero at inactive entries."""
        loc, rho = self.site_params(name)
        indicator = self.site_indicator(name)
        return loc * indicator, F.softplus(rho).square() * indicator

    def get_distribution(self, name: str):
        """q of one site: ``MaskedNormal`` (weight sites) or the transformed Normal (dense latents),
        with the site's event dimensions (dense latents at their full plate size)."""
        if name in self._latents:
            loc, rho = self.latent_params(name)
            return self._latents[name].distribution(loc, F.softplus(rho))
        q = self._masked_normal(name)
        event_dim = self._sites[name].event_dim
        return q.to_event(event_dim) if event_dim else q

    def _masked_normal(self, name: str, loc: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> MaskedNormal:
        if loc is None:
            loc, rho = self.site_params(name)
            scale = F.softplus(rho)
        return MaskedNormal(
            loc, scale, self.site_mask(name), validate_args=False, indicator=self.site_indicator(name),
            active=self.site_active_index(name),
        )

    # ------------------------------------------------------------------ Pyro interface
    def forward(self, *args, **kwargs) -> Dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        else:
            self._sync_store()
        if self._plain_prior_sites:
            self._check_last_objective()
        values = self._sample_weights(announcing()) if self._sites else {}
        if self._latents:
            values.update(self._sample_latents(*args, **kwargs))
        return values

    def _sample_weights(self, announce: bool) -> Dict[str, Tensor]:
        """Sample every weight site from its masked Normal, with the per-entry math of all sites
        done at once on flat vectors (:mod:`pyro_ssvi.guides.flat`)."""
        keys = self._keys
        masks = [self._modules["mask_buffers"]._buffers[k] for k in keys]
        layout = self.flat_layout(masks)
        if announce:  # through pyro.param, so Pyro's handlers see (and may substitute) every tensor
            locs, scales = [], []
            for loc_name, scale_name, event_dim in self._weight_names:
                locs.append(pyro.param(loc_name, event_dim=event_dim))
                scales.append(pyro.param(scale_name, event_dim=event_dim))
            moments = FlatMoments(layout, locs, scales=scales)
        else:  # SSVI's fast path: our own tensors, one softplus for all sites
            locs = [self._modules["locs"]._parameters[k] for k in keys]
            moments = FlatMoments(layout, locs, rhos=[self._modules["rhos"]._parameters[k] for k in keys])
        indicators, active = layout.indicator_views, self._active_getters()
        values = {}
        for i, (name, info) in enumerate(self._sites.items()):
            q = MaskedNormal.from_moments(  # scale None: made from the flat sigmas if anything asks
                locs[i], None, masks[i], indicators[i], moments.mean_views[i],
                moments.variance_views[i], flat=(moments, name), active=active[i],
            )
            value = pyro.sample(name, q.to_event(info.event_dim) if info.event_dim else q)
            # The draw carries its distribution: local reparameterization reads (mean, variance)
            # from it instead of recomputing softplus(rho), and SubspacePrior reads its mask.
            value.ssvi_q = q
            values[name] = value
            if name in self._plain_prior_sites:
                self._last_draws[name] = q
        return values

    def _sample_latents(self, *args, **kwargs) -> Dict[str, Tensor]:
        # Always through pyro.param: inside a subsampled plate it hands out the minibatch's rows.
        plates = self._create_plates(*args, **kwargs)
        values = {}
        for name, info in self._latents.items():
            with ExitStack() as stack:
                for frame in info.frames:
                    stack.enter_context(plates[frame.name])
                loc_name, scale_name = self._names[name]
                loc = pyro.param(loc_name, event_dim=info.event_dim)
                scale = pyro.param(scale_name, event_dim=info.event_dim)
                values[name] = pyro.sample(name, info.distribution(loc, scale))
        return values

    def _check_last_objective(self) -> None:
        """Warn once if the last evaluation scored sparse draws under an unmasked prior
        (``pyro.infer.SVI`` + ``Trace_ELBO`` on a model with plain Normal priors)."""
        if self._warned_objective:
            return
        wrong = [n for n, q in self._last_draws.items() if q.scored and not (q.kl_used or q.prior_masked)]
        self._last_draws = {}
        if wrong:
            self._warned_objective = True
            warnings.warn(
                f"MaskedAutoNormal: the last objective scored the draws of sparse site(s) {wrong} under the "
                "model's plain Normal prior, which counts every inactive (exactly 0) entry: a wrong ELBO that "
                "pulls a learned prior scale to 0 (e.g. pyro.infer.SVI with Trace_ELBO). Use pyro_ssvi.SSVI, or "
                "TraceMeanField_ELBO, or wrap the model: SVI(pyro_ssvi.handlers.mask_prior(model, guide=guide), "
                "guide, ...), or give the site a pyro_ssvi.distributions.SubspacePrior.",
                stacklevel=3,
            )
