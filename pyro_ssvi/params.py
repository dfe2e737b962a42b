"""How pyro_ssvi's tensors appear in Pyro's global param store, by name, as Pyro expects.

Pyro finds parameters by name: JIT ELBOs look them up in the store, ``get_param_store().save()``
writes what the store holds, and ``pyro.optim`` names per-parameter arguments and ``get_state()``
keys after it. pyro_ssvi's modules (the guide, the point estimates of our models) keep their
tensors as ordinary ``nn.Parameter`` s and buffers, and a :class:`StoreEntries` puts those very
tensors into the store under ``<prefix><sep><key>``. Each call of the owner first runs
:meth:`StoreEntries.sync` (a dict look-up and an identity test per tensor), which handles
everything that can happen to the store in between:

- the name is missing (``pyro.clear_param_store()``): our tensor is put back;
- the name holds a tensor that is not pyro_ssvi's (``get_param_store().load(path)`` or
  ``set_state``): its values are copied into ours (the store wins, as for ``pyro.param``), and
  the store points at ours again, so optimizers and references stay valid;
- the name holds a leftover tensor of a pyro_ssvi object that no longer exists: replaced by ours.

Two live objects never share a name, so one can never train the other's tensors: a default
prefix (``MaskedAutoNormal``) is made unique among live owners (``MaskedAutoNormal_1``, ...),
and a prefix chosen by the user that a live object already holds is a
:class:`~pyro_ssvi.errors.SSVIConfigError`.

Announcing a tensor to Pyro's handlers (a ``pyro.param`` statement, which ``SVI`` and the JIT
ELBOs collect) costs a trip through the handler stack per tensor; :func:`quiet` switches
pyro_ssvi's announcements off where the caller collects the parameters itself (SSVI's
torch-optimizer fast path).
"""

from __future__ import annotations

import gc
import weakref
from typing import Callable, Dict, Optional, Tuple, Union

import pyro
import torch
from pyro.params.param_store import ParamStoreDict
from torch import Tensor
from torch.distributions import constraints

from .errors import SSVIConfigError

__all__ = ["StoreEntries", "announcing", "quiet"]

# prefix -> weak reference to the object that holds it. Process-local on purpose: a store
# loaded from disk holds no live owner, so its values are adopted.
_PREFIX_OWNERS: Dict[str, "weakref.ref"] = {}
# id -> tensor, for every tensor pyro_ssvi ever put into the store; a tensor found in the store
# that is in here but not ours is a leftover of an object that is gone (replaced, not adopted).
# (Not a WeakSet: comparing two weak references to a tensor compares the tensors elementwise.)
_OUR_TENSORS: "weakref.WeakValueDictionary[int, Tensor]" = weakref.WeakValueDictionary()
_QUIET = 0

# ``adopt(owner, name, ours, found)`` copies a loaded value into ours. Functions of the owner (not
# bound methods or closures over it), so that the entries hold the owner weakly: no cycles.
Adopt = Callable[[object, str, Tensor, Tensor], None]
# A tensor, or ``getter(owner)`` returning the current one (buffers are replaced by ``.to()``).
TensorOrGetter = Union[Tensor, Callable[[object], Tensor]]


def announcing() -> bool:
    """Whether pyro_ssvi's modules emit ``pyro.param`` statements (False inside :func:`quiet`)."""
    return _QUIET == 0


class quiet:
    """``with quiet():`` no ``pyro.param`` statements from pyro_ssvi's modules inside (the store
    is still kept in sync). A class, not a generator context manager: entered at every step."""

    def __enter__(self) -> None:
        global _QUIET
        _QUIET += 1

    def __exit__(self, *exc) -> None:
        global _QUIET
        _QUIET -= 1


def _store() -> ParamStoreDict:
    return pyro.get_param_store()


def _claim(owner, base: str, explicit: bool) -> str:
    """A prefix no other live object holds: ``base``, else ``base_1``, ``base_2``, ...
    (or an error when the user chose ``base``)."""
    candidates = (base,) if explicit else (base if i == 0 else f"{base}_{i}" for i in range(1_000_000))
    collected = False
    for prefix in candidates:
        held = _PREFIX_OWNERS.get(prefix)
        holder = held() if held is not None else None
        if holder is not None and holder is not owner and not collected:
            # The holder may be garbage that only a reference cycle keeps: collect once, look again.
            del holder
            gc.collect()
            collected = True
            holder = held()
        if holder is None or holder is owner:
            _PREFIX_OWNERS[prefix] = weakref.ref(owner)
            return prefix
    raise SSVIConfigError(
        f"the name {base!r} is already used in Pyro's param store by another live "
        f"{type(holder).__name__}; give this {type(owner).__name__} another name (name=...), or delete the other one"
    )


def _copy_values(owner, name: str, ours: Tensor, found: Tensor) -> None:
    """Default adoption: same shape, values copied into ``ours`` in place."""
    if found.shape != ours.shape:
        raise SSVIConfigError(
            f"Pyro's param store holds {name!r} with shape {tuple(found.shape)}, but this model's tensor has "
            f"shape {tuple(ours.shape)}: the store comes from a different model. Call pyro.clear_param_store() "
            "before building this one, or load a store saved from the same model."
        )
    with torch.no_grad():
        ours.copy_(found)


class StoreEntries:
    """The tensors one object keeps in Pyro's param store, under ``<prefix><sep><key>``.

    :param owner: the object the tensors belong to (held weakly).
    :param base: the wanted prefix. :param explicit: True when the user chose it (a clash is an
        error instead of a new suffix). :param sep: ``"."`` (guides, as ``AutoNormal``) or
        ``"$$$"`` (modules, as ``pyro.module``).
    """

    def __init__(self, owner, base: str, explicit: bool = False, sep: str = ".") -> None:
        self._owner = weakref.ref(owner)
        self.base, self.explicit, self.sep = base, explicit, sep
        self.prefix: Optional[str] = None
        # full name -> (getter(owner) of the current tensor, constraint, adopt)
        self._entries: Dict[str, Tuple[Callable[[object], Tensor], constraints.Constraint, Adopt]] = {}
        self.adopted = False  # set by sync() when values were copied from the store

    def name(self, key: str) -> str:
        """The full store name of ``key``."""
        if self.prefix is None:
            self.prefix = _claim(self._owner(), self.base, self.explicit)
        return f"{self.prefix}{self.sep}{key}"

    def add(self, key: str, tensor: TensorOrGetter, constraint=constraints.real, adopt: Optional[Adopt] = None) -> str:
        """Register ``tensor`` (the unconstrained value for ``constraint``; or ``getter(owner)``
        returning it, for a buffer that ``.to()`` replaces) and put it into the store now (adopting
        a loaded value already there); returns its full name."""
        name = self.name(key)
        getter = tensor if callable(tensor) and not torch.is_tensor(tensor) else _constant(tensor)
        self._entries[name] = (getter, constraint, adopt or _copy_values)
        self._resolve(name)
        return name

    def clear(self) -> None:
        """Forget every entry (the store keeps what it holds until it is replaced)."""
        self._entries.clear()

    def sync(self) -> bool:
        """Make the store hold exactly our tensors again; True if a loaded value was adopted."""
        params = _store()._params
        owner = self._owner()
        self.adopted = False
        for name, (current, _, _) in self._entries.items():
            # A Parameter's identity never changes: compare it without calling its getter.
            tensor = current.tensor if type(current) is _constant else current(owner)
            if params.get(name) is not tensor:
                self._resolve(name)
        return self.adopted

    def _resolve(self, name: str) -> None:
        store = _store()
        current, constraint, adopt = self._entries[name]
        owner = self._owner()
        tensor = current(owner)
        found = store._params.get(name)
        if found is tensor:
            return
        if found is not None:
            store._param_to_name.pop(found, None)
            if _OUR_TENSORS.get(id(found)) is not found:  # loaded or set by hand: the store's values win
                adopt(owner, name, tensor, found.detach())
                self.adopted = True
        _OUR_TENSORS[id(tensor)] = tensor
        store._params[name] = tensor
        store._param_to_name[tensor] = name
        store._constraints[name] = constraint

    def announce(self, name: str, event_dim: Optional[int] = None) -> Optional[Tensor]:
        """``pyro.param(name)`` (the constrained value, through every handler), or None when quiet."""
        if _QUIET:
            return None
        return pyro.param(name, event_dim=event_dim)

    # Pickling: weak references cannot be pickled, and a copy is a new owner that claims its
    # prefix again on first use (a copy living beside its original gets a new suffix).
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_owner"], state["prefix"], state["_entries"] = None, None, {}
        return state

    def bind(self, owner) -> None:
        """Attach to ``owner`` (after unpickling or copying)."""
        self._owner = weakref.ref(owner)


class _constant:
    """``getter(owner) -> tensor`` for a tensor whose identity never changes (a Parameter)."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    def __call__(self, owner) -> Tensor:
        return self.tensor


def strip_unconstrained_refs(tensors) -> None:
    """Drop the ``.unconstrained`` weak reference that ``pyro.param`` leaves on a real-valued
    tensor (it is the tensor itself), so that the tensor can be pickled. Pyro's own
    ``ParamStoreDict.get_state`` does the same."""
    for t in tensors:
        t.__dict__.pop("unconstrained", None)
