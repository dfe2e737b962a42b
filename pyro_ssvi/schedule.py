"""When SSVI changes its masks, by how much, and the KL weight over training (pure arithmetic)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from .errors import SSVIConfigError

__all__ = ["PAPER_RECIPE", "SurgerySchedule", "kl_weight"]

#: The schedule of the SSVI paper's experiments (its code: KL weight 0.01 per data point, linear
#: warm-up over the first half of training): ``SSVI(..., num_data=N, **PAPER_RECIPE)``. The
#: defaults of :class:`~pyro_ssvi.SSVI` are the true ELBO instead (beta = 1, no warm-up), as in
#: ``pyro.infer.SVI``.
PAPER_RECIPE = {
    "update_interval": 100,
    "drop_fraction": 0.3,
    "update_end": 0.75,
    "removal": "snr_abs",
    "addition": "grad",
    "kl_max": 0.01,
    "kl_warmup": 0.5,
}


@dataclass(frozen=True)
class SurgerySchedule:
    """Mask-update schedule of SSVI Algorithm 1.

    :param update_interval: ΔT, steps between mask updates (>= 1).
    :param drop_fraction: α, fraction of active entries replaced at step 0 of the cosine.
    :param update_end: last update boundary: a float in (0, 1] is a fraction of ``num_steps``,
        an int is a step count. Updates happen at steps ``t = k ΔT`` with ``0 < t < end``.
    :param num_steps: total training steps, if known.

    ``r_t = α/2 (1 + cos(π t / t_end))`` when the end step is known; without it (no
    ``num_steps`` and a fractional ``update_end``) ``r_t = α`` and updates never stop.
    """

    update_interval: int = 100
    drop_fraction: float = 0.3
    update_end: Union[float, int] = 0.75
    num_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.update_interval, bool) or not isinstance(self.update_interval, int) or self.update_interval < 1:
            raise SSVIConfigError(f"update_interval must be an int >= 1 (steps), got {self.update_interval!r}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise SSVIConfigError(f"drop_fraction must be in [0, 1], got {self.drop_fraction!r}")
        if self.num_steps is not None and (not isinstance(self.num_steps, int) or self.num_steps < 1):
            raise SSVIConfigError(f"num_steps must be a positive int or None, got {self.num_steps!r}")
        end = self.update_end
        if isinstance(end, bool) or not isinstance(end, (int, float)):
            raise SSVIConfigError(f"update_end must be a fraction in (0, 1] or a step count, got {end!r}")
        if isinstance(end, float) and not 0.0 < end <= 1.0:
            raise SSVIConfigError(
                f"update_end={end} as a float is a fraction of num_steps and must be in (0, 1]; "
                "pass an int for a step count"
            )
        if isinstance(end, int) and end < 0:
            raise SSVIConfigError(f"update_end as a step count must be >= 0, got {end}")

    @property
    def end_step(self) -> Optional[int]:
        """First step at which no update happens any more (None: never stops)."""
        if isinstance(self.update_end, int):
            return self.update_end
        if self.num_steps is None:
            return None
        return int(self.update_end * self.num_steps)

    def is_update_step(self, step: int) -> bool:
        end = self.end_step
        return step > 0 and step % self.update_interval == 0 and (end is None or step < end)

    def num_updates(self, num_steps: Optional[int] = None) -> int:
        """How many of steps ``0 .. num_steps - 1`` are update steps (default: ``self.num_steps``)."""
        total = self.num_steps if num_steps is None else num_steps
        if total is None:
            raise SSVIConfigError("num_updates needs the number of steps")
        end = total if self.end_step is None else min(self.end_step, total)
        return len(range(self.update_interval, end, self.update_interval))

    def drop_fraction_at(self, step: int) -> float:
        """``r_t``: the fraction of each sparse site's active entries replaced at ``step``."""
        end = self.end_step
        if end is None or end <= 0:
            return self.drop_fraction
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * min(step, end) / end))


def kl_weight(step: int, kl_max: float, kl_warmup: float, num_steps: Optional[int]) -> float:
    """β_t = kl_max * min(1, t / (kl_warmup * num_steps)); kl_max when there is no warm-up."""
    if not kl_warmup or num_steps is None:
        return kl_max
    return kl_max * min(1.0, step / (kl_warmup * num_steps))
