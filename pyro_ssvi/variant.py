"""Where SSVI's published code departs from its paper: each departure as a switch.

pyro_ssvi follows the paper (Li et al., ICLR 2024) by default. :class:`Variant` names every
implementation detail in which the authors' published code differs, so that a run can tell
implementation differences from method differences; :data:`AUTHORS` turns them all on.
See ``docs/fidelity.md``.

>>> get_variant("authors").drop_count
'truncate'
>>> get_variant({"lrt_epsilon": 1e-8}) == Variant(lrt_epsilon=1e-8)
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Union

from .errors import SSVIConfigError

__all__ = ["AUTHORS", "PAPER", "VARIANTS", "Variant", "VariantLike", "get_variant", "resolve_variant"]

_COUNT_RULES = ("round", "truncate")
_REGROWN_SIGMAS = ("mean_sigma", "softplus_mean_rho")


def _check_choice(name: str, value: object, allowed) -> None:
    if value not in allowed:
        raise SSVIConfigError(f"Variant.{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class Variant:
    """Implementation choices of SSVI; the defaults are the paper's.

    :param regrown_sigma: sigma of a regrown entry when ``sigma_init="mean"``:
        ``"mean_sigma"`` (the paper: mean of sigma over the entries that stay active) or
        ``"softplus_mean_rho"`` (the authors' code: ``softplus(mean of rho)`` over those
        entries; smaller, since softplus is convex: 1.4x at the paper's initialisation).
    :param regrow_removed: whether an entry removed in an update may be regrown in the same
        update (the authors' code), keeping its old mu, rho and optimizer state. The paper
        regrows from the entries inactive before the update.
    :param lrt_epsilon: added to the variance inside the square root of the local
        reparameterization, ``sqrt(var + eps)`` (the authors' code: 1e-8, in squared output
        units). 0 (the paper): ``sqrt(var)``, floored at 1e-16 to keep the gradient finite.
    :param drop_count: entries moved per site and update, ``k = round(r_t * active)`` or
        ``int(r_t * active)`` (``"truncate"``, the authors' code).
    :param initial_active: active entries of a sparse site with ``n`` entries at sparsity ``s``:
        ``round((1 - s) n)`` (``"round"``) or ``n - int(s n)`` (``"truncate"``, the authors'
        code); at least 1 either way. Read by :class:`~pyro_ssvi.guides.MaskedAutoNormal`.
    """

    regrown_sigma: str = "mean_sigma"
    regrow_removed: bool = False
    lrt_epsilon: float = 0.0
    drop_count: str = "round"
    initial_active: str = "round"

    def __post_init__(self) -> None:
        _check_choice("regrown_sigma", self.regrown_sigma, _REGROWN_SIGMAS)
        _check_choice("drop_count", self.drop_count, _COUNT_RULES)
        _check_choice("initial_active", self.initial_active, _COUNT_RULES)
        if not isinstance(self.regrow_removed, bool):
            raise SSVIConfigError(f"Variant.regrow_removed must be True or False, got {self.regrow_removed!r}")
        eps = self.lrt_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < math.inf):
            raise SSVIConfigError(f"Variant.lrt_epsilon must be a finite float >= 0 (e.g. 1e-8), got {eps!r}")

    def count(self, rule_field: str, fraction: float, total: int) -> int:
        """``round(fraction * total)`` or ``int(fraction * total)`` by the rule in ``rule_field``
        (``"drop_count"`` or ``"initial_active"``)."""
        product = fraction * total
        return int(product) if getattr(self, rule_field) == "truncate" else round(product)


#: The paper's method (pyro_ssvi's default).
PAPER = Variant()
#: Every departure of the authors' published code at once.
AUTHORS = Variant(
    regrown_sigma="softplus_mean_rho", regrow_removed=True, lrt_epsilon=1e-8, drop_count="truncate",
    initial_active="truncate",
)
VARIANTS = {"paper": PAPER, "authors": AUTHORS}

#: A preset name, a :class:`Variant`, a mapping of :class:`Variant` fields (the paper's
#: defaults for the others), or None (the paper).
VariantLike = Union[None, str, Variant, Mapping[str, object]]


def get_variant(variant: VariantLike) -> Variant:
    """The :class:`Variant` meant by ``variant`` (see :data:`VariantLike`).

    :raises SSVIConfigError: an unknown preset name, an unknown field, a bad value or type.
    """
    if variant is None:
        return PAPER
    if isinstance(variant, Variant):
        return variant
    if isinstance(variant, str):
        if variant not in VARIANTS:
            raise SSVIConfigError(
                f"unknown variant {variant!r}; expected one of: {', '.join(VARIANTS)} (or a pyro_ssvi.variant."
                "Variant, or a dict of its fields). 'paper' is the default, 'authors' the published code's choices"
            )
        return VARIANTS[variant]
    if isinstance(variant, Mapping):
        fields = {f.name for f in dataclasses.fields(Variant)}
        unknown = sorted(str(k) for k in variant if k not in fields)
        if unknown:
            raise SSVIConfigError(f"unknown Variant field(s) {unknown}; expected some of: {', '.join(sorted(fields))}")
        return Variant(**dict(variant))
    raise SSVIConfigError(
        f"variant must be a preset name ({', '.join(VARIANTS)}), a pyro_ssvi.variant.Variant or a dict of its "
        f"fields, got {type(variant).__name__}"
    )


def resolve_variant(variant: VariantLike, guide_variant: Optional[Variant]) -> Variant:
    """SSVI's variant: the guide's (``guide_variant``; None: the paper) when ``variant`` is None;
    otherwise ``variant``, which must agree with the guide's on ``initial_active``, since the
    guide applied that when it chose its masks.
    """
    guide_variant = guide_variant or PAPER
    if variant is None:
        return guide_variant
    chosen = get_variant(variant)
    if chosen.initial_active != guide_variant.initial_active:
        raise SSVIConfigError(
            f"SSVI's variant has initial_active={chosen.initial_active!r} but the guide was built with "
            f"initial_active={guide_variant.initial_active!r}, and the guide fixes the number of active entries. "
            "Pass the variant to the guide (MaskedAutoNormal(..., variant=...)) and leave SSVI's variant unset "
            "to take the guide's"
        )
    return chosen
