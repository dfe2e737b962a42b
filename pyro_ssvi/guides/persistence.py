"""MaskedAutoNormal's tensors in Pyro's param store, in state dicts and in pickles.

A mixin, so that :mod:`~pyro_ssvi.guides.masked` keeps to the posterior itself. The store holds
the guide's own tensors as ``<name>.locs.<site>``, ``<name>.scales.<site>`` (constraint
``softplus_positive``: the unconstrained value is ``rho``) and ``<name>.masks.<site>``; see
:mod:`pyro_ssvi.params` for what happens when the store is cleared, loaded or shared. Masks that
come from a store or a state dict are checked against this guide's sparsity before anything is
copied.
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

import torch
from pyro.distributions import constraints
from torch import Tensor

from ..errors import SSVIConfigError
from ..params import StoreEntries, strip_unconstrained_refs

__all__ = ["ParamStorePersistence", "site_key"]


@functools.lru_cache(maxsize=None)
def site_key(name: str) -> str:
    """A site's key in the guide's ParameterDicts and buffers (which cannot contain ".")."""
    return name.replace(".", "__")


class _MaskOf:
    """``guide -> the site's mask buffer``: the store entry of a mask, which ``.to()`` replaces
    (read from the buffer dict directly: this runs for every site at every step)."""

    def __init__(self, name: str) -> None:
        self.key = site_key(name)

    def __call__(self, guide) -> Tensor:
        return guide._modules["mask_buffers"]._buffers[self.key]


class ParamStorePersistence:
    """Param store registration, loading checks and pickling for MaskedAutoNormal.

    Expects ``self._store`` (a :class:`~pyro_ssvi.params.StoreEntries`), ``self._sites``,
    ``self._latents``, ``self.sparsity``, ``site_params``, ``site_mask`` and ``latent_params``.
    """

    _store: StoreEntries
    _names: Dict[str, Tuple[str, str]]

    def store_names(self, name: str) -> Tuple[str, str]:
        """``(loc, scale)`` names of a site's parameters in Pyro's param store."""
        return self._names[name]

    def _register_store(self) -> None:
        """Put every tensor into Pyro's param store (masks first: loading checks locs against them)."""
        self._store.bind(self)
        self._store.clear()
        self._names = {}
        for name in self._sites:
            loc, rho = self.site_params(name)
            self._store.add(f"masks.{name}", _MaskOf(name), adopt=ParamStorePersistence._adopt_mask)
            self._names[name] = (
                self._store.add(f"locs.{name}", loc),
                self._store.add(f"scales.{name}", rho, constraints.softplus_positive),
            )
        for name in self._latents:
            loc, rho = self.latent_params(name)
            self._names[name] = (
                self._store.add(f"locs.{name}", loc),
                self._store.add(f"scales.{name}", rho, constraints.softplus_positive),
            )
        self._weight_names = tuple(self._names[n] + (info.event_dim,) for n, info in self._sites.items())
        self._after_adoption()

    def _sync_store(self) -> None:
        """At every call: the store holds exactly this guide's tensors (adopting loaded values)."""
        if self._store.prefix is None:  # unpickled or copied: claim a name in this process
            self._register_store()
        elif self._store.sync():
            self._after_adoption()

    def _adopt_mask(self, store_name: str, mask: Tensor, found: Tensor) -> None:
        """Take a mask from a loaded param store, if it fits this guide's sites and sparsity."""
        name = store_name.split(".masks.", 1)[1]
        self._check_loaded_mask(name, found, "Pyro's param store", "call pyro.clear_param_store() to start afresh")
        mask.copy_(found)

    def _check_loaded_mask(self, name: str, found: Tensor, source: str, remedy: str) -> None:
        info = self._sites[name]
        if found.shape != info.shape or found.dtype != torch.bool:
            raise SSVIConfigError(
                f"{source} holds a mask for site {name!r} of shape {tuple(found.shape)} and dtype {found.dtype}; "
                f"this guide needs a bool mask of shape {tuple(info.shape)}: it comes from another model; {remedy}."
            )
        active = int(found.sum())
        if active != info.num_active:
            raise SSVIConfigError(
                f"{source} holds a mask for site {name!r} with {active} active entries of {info.numel}, but this "
                f"guide (sparsity {self.sparsity:g}) keeps {info.num_active}: it was saved from a guide with "
                f"another sparsity. Build the guide with that sparsity, or {remedy}."
            )

    def _after_adoption(self) -> None:
        # A loaded store brings masks and locs together; keep inactive locs exactly 0 either way.
        if self._store.adopted:
            with torch.no_grad():
                for name in self._sites:
                    self.site_params(name)[0].mul_(self.site_mask(name))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # load_state_dict visits this module before its children: masks whose active counts do
        # not fit this guide are refused before anything is copied.
        for name in self._sites:
            found = state_dict.get(f"{prefix}mask_buffers.{site_key(name)}")
            if found is not None:
                self._check_loaded_mask(name, found, "the state dict", "load a state saved at this sparsity")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self):
        # pyro.param leaves a weak reference on real-valued parameters; it cannot be pickled.
        strip_unconstrained_refs(self.parameters())
        state = super().__getstate__()
        state["_last_draws"] = {}
        state.pop("_active_index_getters", None)  # bound to this object; remade on demand
        return state
