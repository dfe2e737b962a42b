"""One drop-and-grow update of a MaskedAutoNormal guide and its optimizer state (SSVI Alg. 1).

For each sparse site: the ``k`` active entries with the lowest removal score become inactive,
the ``k`` previously inactive entries with the highest addition score become active. Removed
entries are zeroed (loc = 0); regrown ones start at loc = 0 and sigma = ``sigma_init``; the
optimizer state (momentum, Adam moments) of both is zeroed in place. All of it is vectorized
(one ``topk`` per site), with no host synchronization. ``regrow_removed`` and
``sigma_init="mean_rho"`` are the authors' code's choices (:mod:`pyro_ssvi.variant`).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .guides import softplus_inverse
from .guides.flat import unravel

__all__ = ["select_drop_grow", "update_site", "optimizer_state_lookup", "zero_optimizer_state"]

StateLookup = Callable[[Tensor], Optional[dict]]


def select_drop_grow(
    mask: Tensor, removal_score: Tensor, addition_score: Tensor, k: int, regrow_removed: bool = False
) -> Tuple[Tensor, Tensor]:
    """Flat indices ``(removed [k], added [k])``.

    Removed: the ``k`` lowest ``removal_score`` among active entries. Added: the ``k`` highest
    ``addition_score`` among entries inactive *before* the update (the paper: a just-removed
    entry cannot come straight back, so exactly ``k`` entries leave and ``k`` different ones
    arrive); with ``regrow_removed`` (the authors' code) among the entries inactive *after* the
    removal, so an index may be in both. Requires ``k <= active`` and, without
    ``regrow_removed``, ``k <= inactive``. All inputs share ``mask``'s shape.
    """
    flat_mask = mask.reshape(-1)
    inf = torch.finfo(removal_score.dtype).max
    removal = removal_score.reshape(-1).masked_fill(~flat_mask, inf)
    removed = torch.topk(removal, k, largest=False, sorted=False).indices
    if regrow_removed:
        flat_mask = flat_mask.clone().index_fill_(0, removed, False)
    addition = addition_score.reshape(-1).to(removal.dtype).masked_fill(flat_mask, -inf)
    added = torch.topk(addition, k, largest=True, sorted=False).indices
    return removed, added


@torch.no_grad()
def update_site(
    loc: Tensor,
    rho: Tensor,
    mask: Tensor,
    removal_score: Tensor,
    addition_score: Tensor,
    k: int,
    sigma_init: Union[str, float] = "mean",
    state_lookup: Optional[StateLookup] = None,
    regrow_removed: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Apply one drop/grow of ``k`` entries to a site in place; returns ``(removed, added)``.

    Regrown sigma: ``sigma_init="mean"`` gives regrown entries the mean sigma of the entries that
    stay active (the active set at the moment of regrowth), ``"mean_rho"`` gives them
    ``softplus`` of those entries' mean rho (the authors' code), a float gives them that sigma.
    ``regrow_removed``: see :func:`select_drop_grow`; an entry removed and regrown at once is
    left as it was (mu, rho and optimizer state), as in the authors' code.
    """
    removed, added = select_drop_grow(mask, removal_score, addition_score, k, regrow_removed)
    before = mask.to(rho.dtype)
    _set(mask, removed, False, None)
    sigma = _regrown_sigma(rho, before, mask.to(rho.dtype), sigma_init)
    if regrow_removed:
        # Fixed-size [k] flags, so no host sync: which removed entries come back, which added
        # ones were just removed. Those keep their values; the rest are reset as usual.
        back = mask.new_zeros(mask.numel())
        removed_back = back.index_fill_(0, added, True).index_select(0, removed)
        added_back = back.zero_().index_fill_(0, removed, True).index_select(0, added)
    else:
        removed_back = added_back = None
    _set(loc, removed, 0.0, removed_back)
    _set(loc, added, 0.0, added_back)
    _set(rho, added, softplus_inverse(sigma), added_back)
    _set(mask, added, True, None)
    if state_lookup is not None:
        for param in (loc, rho):
            state = state_lookup(param)
            zero_optimizer_state(state, param, removed, removed_back)
            zero_optimizer_state(state, param, added, added_back)
    return removed, added


def _regrown_sigma(rho: Tensor, before: Tensor, kept: Tensor, sigma_init: Union[str, float]) -> Tensor:
    """0-dim sigma of regrown entries; ``before``/``kept``: 0/1 masks before and after removal.

    Mean over the kept entries; if every active entry is replaced (none kept), over those
    active before the update. No host sync either way.
    """
    if sigma_init not in ("mean", "mean_rho"):
        return torch.tensor(float(sigma_init), dtype=rho.dtype, device=rho.device)
    # softplus(mean rho) <= mean softplus(rho) (convexity): the two differ when sigmas vary.
    values = F.softplus(rho) if sigma_init == "mean" else rho
    kept_count = kept.sum()
    mean = torch.where(
        kept_count > 0, (values * kept).sum() / kept_count.clamp_min(1), (values * before).sum() / before.sum()
    )
    return mean if sigma_init == "mean" else F.softplus(mean)


def _set(param: Tensor, flat_index: Tensor, value, keep: Optional[Tensor]) -> None:
    """``param`` at the row-major flat indices ``flat_index`` [k] := ``value`` (a Python number or a
    0-dim tensor), except where the [k] bool ``keep`` is True (None: nowhere).

    Written through a flat view of ``param``'s memory with ``index_fill_`` / ``index_copy_``, which
    take the value as a kernel argument: ``param[index] = 0.0`` would first copy the number to the
    device, a host wait on a GPU. Works for any dense layout (contiguous, channels_last).
    """
    memory, position = _memory_view(param, flat_index)
    if keep is None:
        memory.index_fill_(0, position, value)
    else:
        memory.index_copy_(0, position, torch.where(keep, memory.index_select(0, position), value))


def _memory_view(t: Tensor, flat_index: Tensor) -> Tuple[Tensor, Tensor]:
    """``(t's memory as a [numel] view, where the row-major flat indices lie in it)``."""
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"surgery needs a dense tensor (contiguous or channels_last), got strides {t.stride()}")
    memory = t.as_strided((t.numel(),), (1,), t.storage_offset())
    if t.is_contiguous():
        return memory, flat_index
    position = sum(index * stride for index, stride in zip(unravel(flat_index, t.shape), t.stride()))
    return memory, position


def zero_optimizer_state(state: Optional[dict], param: Tensor, flat_index: Tensor, keep: Optional[Tensor] = None) -> None:
    """Zero, in place, every per-entry state tensor of ``param`` (momentum, moments) at the
    row-major flat indices ``flat_index`` [k], except where the bool ``keep`` [k] is True. Scalar
    entries (Adam's ``step``) are left alone.
    """
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            _set(value, flat_index, 0, keep)


def optimizer_state_lookup(optim) -> StateLookup:
    """``param -> state dict`` for a ``pyro.optim.PyroOptim`` (one torch optimizer per tensor)
    or a plain ``torch.optim.Optimizer``."""
    if isinstance(optim, torch.optim.Optimizer):
        return lambda p: optim.state.get(p)

    def lookup(p: Tensor) -> Optional[dict]:
        torch_optim = getattr(optim, "optim_objs", {}).get(p)
        if torch_optim is None:
            return None
        if not isinstance(torch_optim, torch.optim.Optimizer):  # a learning-rate scheduler
            torch_optim = torch_optim.optimizer
        return torch_optim.state.get(p)

    return lookup
