"""Whether SSVI's losses were finite, known without making the host wait for the device.

:meth:`SSVI.step_async` records each loss's finiteness into one device flag; the flag is read at
the next mask update (together with that update's loss, in one read), at :meth:`SSVI.check_finite`
or at the next synchronous step. A CUDA-graph runner can hand its own static flag over
(:meth:`FiniteLosses.adopt`).
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from .errors import NonFiniteLossError

__all__ = ["FiniteLosses", "non_finite_error"]


def non_finite_error(loss, t: int) -> NonFiniteLossError:
    """The error of a synchronous step ``t`` whose loss was not finite (nothing was changed)."""
    return NonFiniteLossError(
        f"SSVI step {t}: the loss is {float(loss)}; no parameter or mask was changed. "
        "Lower the learning rate, pass num_data=N for a per-datapoint loss, or check the data."
    )


class FiniteLosses:
    """The unchecked steps' verdict: ``pending = (all losses finite [bool, 0-dim, on the device],
    first unchecked step)``, or None when every loss so far was checked."""

    def __init__(self) -> None:
        self.pending: Optional[Tuple[Tensor, int]] = None

    def record(self, loss: Tensor, t: int) -> None:
        """AND the finiteness of step ``t``'s ``loss`` into the flag (device work only)."""
        finite = torch.isfinite(loss)
        if self.pending is None:
            self.pending = (finite, t)
        else:
            self.pending = (self.pending[0] & finite, self.pending[1])

    def adopt(self, flag: Tensor, t: int) -> None:
        """Make ``flag`` (bool, 0-dim) the one later steps AND into, carrying the current verdict
        over: a CUDA graph writes into a flag it recorded once."""
        if self.pending is None:
            flag.fill_(True)
            self.pending = (flag, t)
        elif self.pending[0] is not flag:
            flag.copy_(self.pending[0])
            self.pending = (flag, self.pending[1])

    def check(self, step_count: int) -> None:
        """Raise if an unchecked loss was not finite (one read from the device)."""
        if self.pending is not None:
            self.settle(bool(self.pending[0]), step_count)

    def settle(self, finite: bool, step_count: int) -> None:
        """Forget the pending verdict, which was ``finite``; raise if it was False."""
        if self.pending is None:
            return
        first = self.pending[1]
        self.pending = None
        if not finite:
            raise NonFiniteLossError(
                f"SSVI: a loss between steps {first} and {step_count - 1} was not finite, and the "
                "parameters were updated since. Restart from the last checkpoint with a lower learning "
                "rate, or use step(), which stops before the update."
            )

    def read_with(self, losses: List[Union[Tensor, float]]) -> Tuple[float, bool]:
        """``(mean of losses, pending verdict)`` in one read from the device (a mask update's only
        one); Pyro's estimators return floats, which need none."""
        if not any(torch.is_tensor(v) for v in losses):
            return sum(losses) / len(losses), self.pending is None or bool(self.pending[0])
        values = [torch.stack(losses).double().mean()]
        if self.pending is not None:
            values.append(self.pending[0].double())
        read = torch.stack(values).tolist()
        return read[0], len(read) == 1 or read[1] == 1.0
