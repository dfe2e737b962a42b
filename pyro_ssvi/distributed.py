"""Data-parallel SSVI over ``torch.distributed`` (torchrun, one process per GPU or CPU worker).

Every rank holds the whole model and guide and steps on its own shard of each global batch.
:class:`DistributedSync` keeps the ranks in lockstep; :class:`~pyro_ssvi.SSVI` calls it (its
``distributed`` argument), so a user's loop needs no other change:

- **before the first step** the parameters, buffers and masks of rank 0 are copied to every
  rank (after checking that every rank has the same parameters by name and shape);
- **every gradient step** the gradients of everything the optimizer steps (guide and point
  estimates, ``pyro.optim`` or a torch optimizer alike) and the loss are averaged in one
  all-reduce, before the optimizer; the model's buffers (BatchNorm statistics) are rank 0's, as
  ``DistributedDataParallel(broadcast_buffers=True)`` does;
- **every mask update** the weight draws use a seed shared by all ranks, each draw's signed
  weight gradients are averaged (so the addition score is the single-process score of the
  global batch), the removal scores are averaged, and after the top-k a fingerprint of every
  mask is compared across ranks: a difference raises :class:`~pyro_ssvi.errors.SSVIDistributedError`.

Averaging the ranks' gradients is the objective of one process with the global batch: a rank's
loss scales its likelihood by ``N / local batch`` (the model's plate), so the mean over ``R``
ranks of ``[-(N/b) sum_r log p + beta KL] / N`` is ``[-(N/(R b)) sum log p + beta KL] / N``.
This needs equal local batches (``DistributedSampler`` pads an epoch so that they are).

Why not ``DistributedDataParallel``: its reducer hooks one ``nn.Module.forward``, but an ELBO
runs a guide and a model, mask updates take no optimizer step, and ``pyro.optim`` makes its
parameters lazily. One explicit all-reduce per step does the same arithmetic (it does not
overlap communication with the backward pass as DDP's buckets do).

>>> sync = DistributedSync()  # no process group: a world of one, every collective a no-op
>>> sync.world_size, sync.rank
(1, 0)
"""

from __future__ import annotations

import contextlib
import datetime
import os
import zlib
from typing import Dict, Iterable, List, Optional, Sequence, Union

import pyro
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import SSVIConfigError, SSVIDistributedError

__all__ = ["DistributedSync", "env_world", "init_from_env", "mask_fingerprints", "resolve_distributed"]

BUFFER_MODES = ("broadcast", "none")
# Constants of a multiply-xorshift mix (PCG's and MMIX's multipliers, both < 2**63): a
# non-linear 31-bit hash of each flat index, so that two masks with the same count and index sum
# still get different fingerprints (a linear hash would not tell {1, 6} from {2, 5}).
_MIX1, _MIX2 = 6364136223846793005, 1442695040888963407


def env_world() -> tuple:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_from_env(device: Optional[torch.device] = None, timeout_s: float = 600.0) -> Optional[torch.device]:
    """Join the process group that torchrun describes (``WORLD_SIZE > 1``); else do nothing.

    The backend is ``nccl`` for CUDA and ``gloo`` for CPU. On CUDA each process takes the GPU
    ``LOCAL_RANK``. A collective that waits longer than ``timeout_s`` seconds (a rank died or
    stopped) raises instead of hanging. Returns the device this rank should use (``device``
    with the local GPU index filled in), or None when not distributed.
    """
    rank, world, local_rank = env_world()
    if world <= 1:
        return None
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise SSVIConfigError(
                f"rank {rank} has LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (torchrun --nproc_per_node=<number of GPUs>)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)), **kwargs)
    return device


def resolve_distributed(arg: Union[None, bool, "DistributedSync"]) -> Optional["DistributedSync"]:
    """SSVI's ``distributed`` argument: None (automatic: on when a process group of more than
    one rank is initialized), False (off), True (on, default group) or a :class:`DistributedSync`."""
    if isinstance(arg, DistributedSync):
        return arg
    if arg is None:
        return DistributedSync() if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None
    if arg is True:
        return DistributedSync()
    if arg is False:
        return None
    raise SSVIConfigError(f"distributed must be None, True, False or a DistributedSync, got {arg!r}")


def mask_fingerprints(masks: Dict[str, Tensor]) -> Tensor:
    """``[num sites, 3]`` int64: per mask, the number of active entries, the sum of their flat
    indices and the sum of a 31-bit hash of them (on the masks' device, no host sync)."""
    rows = []
    for mask in masks.values():
        flat = mask.reshape(-1).to(torch.int64)
        index = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64)
        hashed = _mix(index)
        rows.append(torch.stack([flat.sum(), (flat * index).sum(), (flat * hashed).sum()]))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.int64)
    return torch.stack(rows)


class DistributedSync:
    """The collectives that keep SSVI's ranks identical (see the module docstring).

    :param group: the process group (None: the default one). Without an initialized
        ``torch.distributed`` the world is one process and every collective is skipped, except
        that mask updates still draw from the shared seed (so a one-process run can be compared
        with a multi-process one).
    :param seed: base of the seed of the weight draws at mask updates (``seed + step``), the
        same on every rank whatever each rank's own seed.
    :param buffers: ``"broadcast"``: each training step starts from rank 0's model buffers
        (BatchNorm running statistics), as DDP does; ``"none"``: each rank keeps its own (use
        with ``torch.nn.SyncBatchNorm``, whose statistics are already global).
    :param check_masks: compare the masks of all ranks after every mask update (one host sync).
    """

    def __init__(self, group=None, *, seed: int = 0, buffers: str = "broadcast", check_masks: bool = True) -> None:
        if buffers not in BUFFER_MODES:
            raise SSVIConfigError(f"buffers must be one of {', '.join(BUFFER_MODES)}, got {buffers!r}")
        self.group = group
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self.active else 0
        self.world_size = dist.get_world_size(group) if self.active else 1
        self.seed = int(seed)
        self.buffers = buffers
        self.check_masks_enabled = bool(check_masks)
        self.prepared = False
        self._comm_device: Optional[torch.device] = None

    @property
    def enabled(self) -> bool:
        """Whether there is anyone to talk to (more than one rank)."""
        return self.active and self.world_size > 1

    # ------------------------------------------------------------------ error handling
    def _collective(self, what: str, fn, *args, **kwargs):
        """Run a collective; a failure (a dead or stuck rank, a timeout) becomes one clear error."""
        try:
            return fn(*args, group=self.group, **kwargs)
        except RuntimeError as exc:
            raise self.failure(what, exc) from exc

    def failure(self, what: str, exc: BaseException) -> SSVIDistributedError:
        """The error for a collective that failed with ``exc``."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return SSVIDistributedError(
            f"rank {self.rank} of {self.world_size}: {what} failed ({first}). Another rank has most likely "
            "died, raised an error or stopped (see its own output); this rank stops too. Restart all ranks, "
            "from the last checkpoint if there is one."
        )

    # ------------------------------------------------------------------ set-up
    def prepare(self, model, guide, args: Sequence = (), kwargs: Optional[dict] = None) -> None:
        """Once, before the first step: set the guide up (``guide(*args, **kwargs)``) if it is not
        yet, check that every rank has the same parameters, and copy rank 0's to all."""
        if self.prepared:
            return
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise SSVIConfigError(
                "SSVI averages gradients across ranks itself: pass the model, not DistributedDataParallel(model) "
                "(see the README section on distributed training)"
            )
        self.prepared = True
        if getattr(guide, "prototype_trace", "unknown") is None:
            with pyro.poutine.block(), torch.no_grad():
                guide(*args, **(kwargs or {}))
        if self.enabled:
            self.broadcast_state(model, guide)

    def _state_tensors(self, model, guide) -> Dict[str, Tensor]:
        """Every tensor that must be equal on all ranks: the param store, the guide's parameters
        and buffers, a module model's parameters and buffers; by name, each tensor once."""
        named: Dict[str, Tensor] = {}
        seen = set()

        def add(prefix: str, items: Iterable) -> None:
            for name, tensor in items:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    named[f"{prefix}{name}"] = tensor

        add("store:", sorted(pyro.get_param_store().named_parameters()))
        if isinstance(guide, nn.Module):
            add("guide:", guide.named_parameters())
            add("guide:", guide.named_buffers())
        if isinstance(model, nn.Module):
            add("model:", model.named_parameters())
            add("model:", model.named_buffers())
        return named

    def broadcast_state(self, model, guide) -> None:
        """Copy rank 0's parameters, buffers and masks to every rank, in place (optimizers and
        caches keep seeing the same tensors). Raises if the ranks' parameter sets differ."""
        named = self._state_tensors(model, guide)
        layout = ";".join(f"{name}:{tuple(t.shape)}:{t.dtype}" for name, t in named.items())
        self._check_equal("the set of parameters (names, shapes, dtypes)", zlib.crc32(layout.encode()),
                          "build the same model and guide on every rank (same config) before the first step")
        with torch.no_grad():
            self._broadcast(list(named.values()), "broadcasting rank 0's parameters")

    def _broadcast(self, tensors: List[Tensor], what: str) -> None:
        """Broadcast from rank 0 in place, one flat buffer per (device, dtype); bool via uint8."""
        for group in _by_kind(tensors):
            dtype = torch.uint8 if group[0].dtype == torch.bool else group[0].dtype
            flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in group]).to(self._device())
            self._collective(what, dist.broadcast, flat, src=_global_rank(self.group, 0))
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view_as(t))  # (copy_ converts device and dtype back)

    def _check_equal(self, what: str, value: int, advice: str) -> None:
        """Raise on every rank if the int ``value`` differs between ranks (one all-gather)."""
        if not self.enabled:
            return
        mine = torch.tensor([value], dtype=torch.int64, device=self._device())
        values = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._collective(f"comparing {what}", dist.all_gather, values, mine)
        got = [int(v) for v in values]
        if len(set(got)) > 1:
            differ = [r for r, v in enumerate(got) if v != got[0]]
            raise SSVIDistributedError(f"rank {self.rank}: {what} differ between ranks (ranks {differ} differ "
                                       f"from rank 0); {advice}")

    def _device(self) -> torch.device:
        # NCCL collectives need CUDA tensors (on this process's GPU: torch.cuda.set_device before
        # the first collective); gloo is given CPU ones.
        if self._comm_device is None:
            nccl = self.active and dist.get_backend(self.group) == "nccl"
            self._comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return self._comm_device

    # ------------------------------------------------------------------ every step
    def before_step(self, model) -> None:
        """Rank 0's model buffers (BatchNorm statistics) for this step, when ``buffers="broadcast"``."""
        if self.enabled and self.buffers == "broadcast" and isinstance(model, nn.Module):
            buffers = [b for b in model.buffers()]
            if buffers:
                with torch.no_grad():
                    self._broadcast(buffers, "broadcasting rank 0's model buffers")

    def average_gradients(self, params: Sequence[Tensor], loss):
        """Average the ``.grad`` of ``params`` (those that have one) and ``loss`` over the ranks,
        in one all-reduce per (device, dtype); returns the averaged loss (float or tensor, as given)."""
        if not self.enabled:
            return loss
        grads = [p.grad for p in params if p.grad is not None]
        as_float = not torch.is_tensor(loss)
        like = grads[0] if grads else torch.zeros((), device=self._device())
        loss_t = torch.as_tensor(loss, dtype=like.dtype, device=like.device).detach().reshape(1)
        self.average_([*grads, loss_t], "averaging the gradients")
        loss_t = loss_t[0]
        return float(loss_t) if as_float else loss_t

    def average_(self, tensors: Union[Sequence[Tensor], Dict[str, Tensor]], what: str = "averaging scores") -> None:
        """Replace each tensor by its mean over the ranks, in place (pre-divided, so no overflow)."""
        tensors = list(tensors.values()) if isinstance(tensors, dict) else list(tensors)
        if not self.enabled or not tensors:
            return
        for group in _by_kind(tensors):
            # On the backend's device (a no-op when the tensors are there already, as in training).
            flat = torch.cat([t.reshape(-1) for t in group]).div_(self.world_size).to(self._device())
            self._collective(what, dist.all_reduce, flat)
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view_as(t))

    def average_value(self, value: float) -> float:
        """The mean over the ranks of a Python float (e.g. a mask update's loss)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        self.average_([t], "averaging the loss")
        return float(t)

    # ------------------------------------------------------------------ mask updates
    @contextlib.contextmanager
    def shared_rng(self, step: int):
        """Inside: torch's CPU and current-CUDA-device generators seeded with ``seed + step`` on
        every rank (the same weight draws everywhere); outside, each rank's own streams go on."""
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        devices = [torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.default_generator.manual_seed(self.seed + int(step))
            if cuda:
                torch.cuda.manual_seed(self.seed + int(step))
            yield

    def check_masks(self, guide, step: int) -> None:
        """Raise :class:`SSVIDistributedError` on every rank if any mask differs between ranks."""
        if not (self.enabled and self.check_masks_enabled):
            return
        masks = guide.masks
        mine = mask_fingerprints(masks).to(self._device())
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._collective("comparing the masks", dist.all_gather, gathered, mine)
        gathered = [g.cpu() for g in gathered]
        names = list(masks)
        for r, other in enumerate(gathered):
            if not torch.equal(other, gathered[0]):
                sites = [names[i] for i in range(len(names)) if not torch.equal(other[i], gathered[0][i])]
                raise SSVIDistributedError(
                    f"rank {self.rank}: after the mask update at step {step} the masks of rank {r} differ from rank "
                    f"0's at {sites}; the ranks no longer train the same subspace. Every rank must run the same "
                    "SSVI settings on equally sized batches, and nothing may change a mask on one rank only "
                    "(restart from the last checkpoint)"
                )


def _mix(index: Tensor) -> Tensor:
    """A 31-bit hash of int64 indices (int64 products wrap around, identically on every device)."""
    h = (index + 1) * _MIX1
    h = h ^ ((h >> 29) & 0x7FFFFFFFF)
    h = h * _MIX2
    return (h >> 32) & 0x7FFFFFFF


def _by_kind(tensors: Sequence[Tensor]) -> List[List[Tensor]]:
    """Tensors grouped by (device, dtype), in first-seen order (the same on every rank)."""
    groups: Dict[tuple, List[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def _global_rank(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)
