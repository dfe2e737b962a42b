"""How SSVI connects to what it is given: the sparse part of a guide, the parameters of a plain
``nn.Module`` model, the tensors a step trains, and ``pyro.optim`` state that no parameter took."""

from __future__ import annotations

from typing import List, Optional, Set, Tuple

from pyro.infer.autoguide import AutoGuideList
from pyro.nn import PyroModule
from torch import Tensor, nn

from . import params
from .errors import SSVIConfigError
from .guides import MaskedAutoNormal

__all__ = ["sparse_part", "trained_tensors", "unused_optim_state", "with_point_estimates"]

# What SSVI calls on its sparse guide.
_GUIDE_API = ("sites", "site_mask", "site_params", "moments", "loc_parameters")


def sparse_part(guide):
    """The MaskedAutoNormal that SSVI drives: ``guide`` itself, or the one inside an AutoGuideList."""
    if isinstance(guide, AutoGuideList):
        parts = [part for part in guide if isinstance(part, MaskedAutoNormal)]
        if len(parts) != 1:
            raise SSVIConfigError(
                f"SSVI needs an AutoGuideList holding exactly one MaskedAutoNormal, found {len(parts)}"
            )
        return parts[0]
    for attr in _GUIDE_API:
        if not hasattr(guide, attr):
            raise SSVIConfigError(
                f"SSVI needs a MaskedAutoNormal guide (or an AutoGuideList holding one); {type(guide).__name__} "
                f"has no {attr!r}"
            )
    return guide


def with_point_estimates(model) -> Tuple[object, Optional[params.StoreEntries]]:
    """``(model to run, its store entries)``: a plain ``nn.Module`` model is wrapped so that it
    announces its parameters to Pyro, as ``pyro.module("model", model)`` would (names for
    ``pyro.optim``'s per-parameter arguments and state); anything else runs as it is.
    pyro_ssvi's models and PyroModules announce their parameters themselves."""
    if not isinstance(model, nn.Module) or isinstance(model, PyroModule) or hasattr(model, "_store"):
        return model, None
    store = params.StoreEntries(model, "model", sep="$$$")
    names = [store.add(path, p) for path, p in model.named_parameters() if p.requires_grad]

    def announced(*args, **kwargs):
        store.sync()
        if params.announcing():
            for name in names:
                store.announce(name)
        return model(*args, **kwargs)

    return announced, store


def unused_optim_state(optim) -> Optional[str]:
    """A warning if ``pyro.optim`` state given with ``set_state`` was for names that no parameter
    took at the first step (None otherwise)."""
    waiting = getattr(optim, "_state_waiting_to_be_consumed", None)
    if not waiting:
        return None
    return (
        f"pyro.optim state was set for {sorted(map(str, waiting))[:5]}, but no parameter of this run has those "
        "names, so it was not used. A guide or model built while another live one holds the same name gets a "
        "suffixed name (e.g. MaskedAutoNormal_1): delete the old objects (or pass name=) before building the "
        "resumed ones."
    )


def trained_tensors(param_trace, guide, model) -> List[Tensor]:
    """Every tensor a ``pyro.optim`` step trains: the ``pyro.param`` sites of ``param_trace``
    (unconstrained), ``guide``'s parameters and those of a ``model`` that is an ``nn.Module``,
    deduplicated by identity, in that order."""
    seen: Set[int] = set()
    found = []
    candidates = [site["value"].unconstrained() for site in param_trace.nodes.values()]
    candidates += list(guide.parameters())
    if isinstance(model, nn.Module):
        candidates += list(model.parameters())
    for p in candidates:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            found.append(p)
    return found
