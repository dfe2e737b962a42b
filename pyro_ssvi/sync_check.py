"""Which operators make the host wait for a CUDA device, and a mode that refuses them.

Checked on any device (the operators are the same on CPU): what a CUDA graph cannot record and
what stalls a GPU's queue inside a training step.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "fail_on_sync"]

_aten = torch.ops.aten
#: Operators that read device memory on the host (``.item()``, ``bool()``, ``float()``) or whose
#: output size depends on the data (``nonzero``, ``masked_select``, boolean indexing, ``unique``).
SYNC_OPS = frozenset({
    _aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.equal.default,
    _aten.nonzero.default, _aten.nonzero.out, _aten.masked_select.default, _aten.unique_dim.default,
    _aten._unique2.default, _aten.unique_consecutive.default, _aten.repeat_interleave.Tensor,
    _aten.allclose.default,
})


class _FailOnSync(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            raise RuntimeError(f"{func} would make the host wait for the device (not allowed here)")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def fail_on_sync() -> Iterator[None]:
    """Raise ``RuntimeError`` on any operator of :data:`SYNC_OPS` inside the block."""
    with _FailOnSync():
        yield
