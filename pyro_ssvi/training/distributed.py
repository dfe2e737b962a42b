"""The training app under torchrun: ``torchrun --nproc_per_node=N -m pyro_ssvi.train ...``.

:class:`Ranks` is what the app needs to know and do about its processes. Without torchrun
(``WORLD_SIZE`` unset or 1) it is a world of one and changes nothing. With it:

- ``train.batch_size`` is the *global* batch; each rank steps on ``batch_size / world_size``
  examples, and SSVI averages the ranks' gradients (:mod:`pyro_ssvi.distributed`), so the
  objective is that of one process with the global batch;
- each rank's loader holds only its shard of the training set (on its GPU): shard ``r`` is
  ``perm[r::world_size]`` of a permutation drawn from ``seed``, padded to equal length by
  repeating its first examples (as ``DistributedSampler`` pads), so all ranks take the same
  number of equal batches. Each rank reshuffles (and augments) its shard every epoch from the
  seed ``seed + 1 + rank * RANK_STRIDE``, derived from the shared seed;
- model, guide and masks are built from the same seed on every rank and rank 0's are copied
  to all before the first step; afterwards each rank's torch, numpy and python streams are
  reseeded by rank (independent LRT noise per rank, as per example in one process);
- rank 0 alone claims the run directory and writes logs, metrics, checkpoints and plots;
  the train loss it writes is already averaged over the ranks; checkpoints carry every rank's
  loader and random state and the world size, and resuming needs the same world size.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from .. import checkpoint
from ..distributed import DistributedSync, env_world, init_from_env
from ..errors import SSVICheckpointError, SSVIConfigError

__all__ = ["RANK_STRIDE", "Ranks", "check_distributed_config", "shard_indices"]

# Seeds of different ranks' streams are this far apart (a prime, larger than any epoch count).
RANK_STRIDE = 1_000_003


def check_distributed_config(cfg: DictConfig) -> None:
    """The ``distributed`` keys' types and ranges (before anything starts)."""
    d = cfg.get("distributed")
    if d is None:
        return
    timeout = d.get("timeout_s")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise SSVIConfigError(f"distributed.timeout_s must be a positive number of seconds (e.g. 600), got {timeout!r}")
    for key in ("sync_batchnorm", "check_masks"):
        if not isinstance(d.get(key), bool):
            raise SSVIConfigError(f"distributed.{key} must be true or false, got {d.get(key)!r}")


def shard_indices(n: int, rank: int, world_size: int, seed: int) -> torch.Tensor:
    """Rank ``rank``'s ``ceil(n / world_size)`` example indices: ``perm[rank::world_size]`` of a
    permutation of ``range(n)`` drawn from ``seed`` (the same on every rank), padded with the
    first indices of the permutation so that every shard has the same length."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    per_rank = -(-n // world_size)
    padded = torch.cat([perm, perm[: per_rank * world_size - n]])
    return padded[rank::world_size]


class Ranks:
    """This process's place among the training processes (a world of one without torchrun)."""

    def __init__(self, rank: int = 0, world_size: int = 1, sync: Optional[DistributedSync] = None) -> None:
        self.rank, self.world_size, self.sync = rank, world_size, sync

    @classmethod
    def start(cls, cfg: DictConfig, device: torch.device) -> "tuple[Ranks, torch.device]":
        """Join torchrun's process group if there is one (nccl on CUDA, gloo on CPU); returns
        ``(ranks, this rank's device)``."""
        rank, world_size, local_rank = env_world()
        if world_size <= 1:
            return cls(), device
        check_distributed_config(cfg)
        if device.type == "cuda" and device.index not in (None, local_rank):
            logging.getLogger(__name__).warning(
                "device=%s is ignored under torchrun: rank %d uses cuda:%d (LOCAL_RANK)", device, rank, local_rank)
        device = init_from_env(torch.device(device.type), float(cfg.distributed.timeout_s))
        sync = DistributedSync(seed=int(cfg.seed), buffers="none" if cfg.distributed.sync_batchnorm else "broadcast",
                               check_masks=bool(cfg.distributed.check_masks))
        if rank > 0:  # one copy of every log line, from rank 0; other ranks' warnings still show
            logging.getLogger("pyro_ssvi").setLevel(logging.WARNING)
        return cls(rank, world_size, sync), device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def close(self, finished: bool = True) -> None:
        """Leave the process group (idempotent). ``finished``: every rank got here (training is
        over): meet at a barrier first, so that no rank tears its connections down while another
        still talks. After a failure the group is left as it is: destroying it while another rank
        waits in a collective can hang, and the process is about to exit anyway."""
        if not (self.distributed and dist.is_initialized()):
            return
        if not finished:
            return
        try:
            dist.barrier()
        except RuntimeError as exc:
            raise self.sync.failure("the final barrier", exc) from exc
        dist.destroy_process_group()

    # ------------------------------------------------------------------ data
    def local_batch(self, global_batch: int) -> int:
        """Examples per rank and step; the global batch must split evenly."""
        if global_batch % self.world_size:
            raise SSVIConfigError(
                f"train.batch_size={global_batch} is the global batch and must split evenly over the "
                f"{self.world_size} processes; use a multiple of {self.world_size} (e.g. "
                f"{global_batch // self.world_size * self.world_size or self.world_size})"
            )
        return global_batch // self.world_size

    def shard(self, dataset, seed: int):
        """This rank's shard of ``dataset`` (:func:`shard_indices`); the data set itself alone."""
        if not self.distributed:
            return dataset
        return dataset.subset(shard_indices(len(dataset), self.rank, self.world_size, seed).sort().values)

    def loader_seed(self, seed: int) -> int:
        """Seed of this rank's loader (shuffling and augmentation): ``seed`` on rank 0."""
        return int(seed) + self.rank * RANK_STRIDE

    def seed_rank_streams(self, seed: int) -> None:
        """Give ranks other than 0 their own torch, numpy and python streams (rank 0 keeps the
        one-process stream)."""
        if self.rank > 0:
            s = int(seed) + self.rank * RANK_STRIDE
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)

    def convert_sync_batchnorm(self, model, cfg: DictConfig, device: torch.device):
        """``distributed.sync_batchnorm``: BatchNorm statistics over the global batch (CUDA only)."""
        if not (self.distributed and cfg.distributed.sync_batchnorm):
            return model
        if device.type != "cuda":
            raise SSVIConfigError(
                "distributed.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm does not run on CPU); set it to "
                "false, and each rank normalizes with its own batch while the running statistics come from rank 0"
            )
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_fields(self, loader) -> Dict[str, Any]:
        """What a checkpoint adds about the processes: the world size and, distributed, every
        rank's loader and random state (a collective: every rank must call it)."""
        fields: Dict[str, Any] = {"world_size": self.world_size}
        if self.distributed:
            mine = {"loader": loader.state_dict(), "rng": checkpoint.get_rng_state()}
            states: List[Any] = [None] * self.world_size
            try:
                dist.all_gather_object(states, mine)
            except RuntimeError as exc:
                raise self.sync.failure("gathering the ranks' states for the checkpoint", exc) from exc
            fields["rank_states"] = states
        return fields

    def check_resume(self, state: dict, path) -> None:
        """Resuming needs the world size that wrote the checkpoint (its shards, batches, streams)."""
        stored = int(state.get("world_size", 1))
        if stored != self.world_size:
            raise SSVIConfigError(
                f"checkpoint {str(path)!r} was written by {stored} process(es) and this run has {self.world_size}: "
                f"each process's data shard, local batch and random streams belong to that number. Resume with "
                f"{'torchrun --nproc_per_node=' + str(stored) if stored > 1 else 'one process (python -m pyro_ssvi.train)'}"
                " (the same total number of processes), or start a new run"
            )

    def restore(self, state: dict, loader, path) -> None:
        """This rank's own loader and random state from a checkpoint of a distributed run."""
        if not self.distributed:
            return
        try:
            mine = state["rank_states"][self.rank]
            loader.load_state_dict(mine["loader"])
        except (KeyError, IndexError, RuntimeError, ValueError) as exc:
            raise SSVICheckpointError(
                f"checkpoint {str(path)!r} lacks rank {self.rank}'s loader state ({exc}); it was not written by "
                f"a run of {self.world_size} processes"
            ) from None
        checkpoint.set_rng_state(mine["rng"])
