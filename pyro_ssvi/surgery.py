"""One drop-and-grow update of a MaskedAutoNormal guide and its optimizer state (SSVI Alg. 1).

For each sparse site: the ``k`` active entries with the lowest removal score become inactive,
the ``k`` previously inactive entries with the highest addition score become active. Removed
entries are zeroed (loc = 0); regrown ones start at loc = 0 and sigma = ``sigma_init``; the
optimizer state (momentum, Adam moments) of both is zeroed in place. All of it is vectorized
(one ``topk`` per site), with no host synchronization.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .guides import softplus_inverse

__all__ = ["select_drop_grow", "update_site", "optimizer_state_lookup", "zero_optimizer_state"]

StateLookup = Callable[[Tensor], Optional[dict]]


def select_drop_grow(mask: Tensor, removal_score: Tensor, addition_score: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Flat indices ``(removed [k], added [k])``.

    Removed: the ``k`` lowest ``removal_score`` among active entries. Added: the ``k`` highest
    ``addition_score`` among entries inactive *before* the update (a just-removed entry cannot
    come straight back, so exactly ``k`` entries leave and ``k`` different ones arrive).
    Requires ``k <= active`` and ``k <= inactive``. All inputs share ``mask``'s shape.
    """
    flat_mask = mask.reshape(-1)
    inf = torch.finfo(removal_score.dtype).max
    removal = removal_score.reshape(-1).masked_fill(~flat_mask, inf)
    removed = torch.topk(removal, k, largest=False, sorted=False).indices
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
) -> Tuple[Tensor, Tensor]:
    """Apply one drop/grow of ``k`` entries to a site in place; returns ``(removed, added)``.

    ``sigma_init="mean"`` gives regrown entries the mean sigma of the entries that stay active
    (the active set at the moment of regrowth); a float gives them that sigma.
    """
    removed, added = select_drop_grow(mask, removal_score, addition_score, k)
    removed_at, added_at = _unravel(removed, mask.shape), _unravel(added, mask.shape)
    if sigma_init == "mean":
        # Mean over the entries that stay active; if every active entry is replaced (k ==
        # active), over the entries active before the update. No host sync either way.
        sigma_all = F.softplus(rho)
        before = mask.to(rho.dtype)
        mask[removed_at] = False
        kept = mask.to(rho.dtype)
        kept_count = kept.sum()
        sigma = torch.where(
            kept_count > 0, (sigma_all * kept).sum() / kept_count.clamp_min(1), (sigma_all * before).sum() / before.sum()
        )
    else:
        mask[removed_at] = False
        sigma = torch.tensor(float(sigma_init), dtype=rho.dtype, device=rho.device)
    loc[removed_at] = 0.0
    loc[added_at] = 0.0
    rho[added_at] = softplus_inverse(sigma)
    mask[added_at] = True
    if state_lookup is not None:
        changed = _unravel(torch.cat([removed, added]), mask.shape)
        for param in (loc, rho):
            zero_optimizer_state(state_lookup(param), param, changed)
    return removed, added


def _unravel(flat_index: Tensor, shape: torch.Size) -> Tuple[Tensor, ...]:
    # Multi-dimensional indices work whatever the memory layout (e.g. channels_last), where
    # .view(-1) would fail.
    return torch.unravel_index(flat_index, shape)


def zero_optimizer_state(state: Optional[dict], param: Tensor, index: Tuple[Tensor, ...]) -> None:
    """Zero, in place, every per-entry state tensor of ``param`` (momentum, moments) at ``index``
    (a tuple of per-dimension index tensors). Scalar entries (Adam's ``step``) are left alone.
    """
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value[index] = 0


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
