"""A minibatch loader that keeps the whole data set on the training device.

Small image data sets fit in GPU memory as uint8 (CIFAR-10 train: 150 MiB), so the
usual worker processes, pinned host buffers and per-batch copies are unnecessary: the
loader indexes the device tensors, augments and normalizes there, and hands out
float batches. Nothing per batch touches the host when the device is CUDA (as long as
the random generator lives on the device too, which is the default).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor

from pyro_ssvi.data.core import ArrayDataset
from pyro_ssvi.errors import SSVIConfigError

__all__ = ["DeviceLoader", "crop_flip"]


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int, index: Tensor | None = None) -> Tensor:
    """Per-image random crop from a zero-padded image, then horizontal flip, vectorized.

    Output image ``b`` equals: pad ``images[index[b]]`` with ``pad`` zeros on every side,
    take the ``H x W`` window whose top-left corner is ``offsets[b] = (dy, dx)``, and
    mirror it left-right if ``flips[b]``. One advanced-indexing gather does it all:
    source coordinates outside the image read a clamped pixel that is then zeroed.

    :param images: ``[N, C, H, W]`` of any dtype (uint8 in the loader, so padding is black).
    :param offsets: int64 ``[B, 2]``, each in ``0..2*pad``.
    :param flips: bool ``[B]``.
    :param index: int64 ``[B]`` rows of ``images`` to use; default ``0..B-1``.
    :returns: ``[B, C, H, W]`` of the dtype of ``images``.
    """
    _, c, h, w = images.shape
    dev = images.device
    if index is None:
        index = torch.arange(offsets.shape[0], device=dev)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[:, :1] - pad + ar_h  # [B, H] source rows
    # Flipping the output = reading the window's columns right to left.
    cols = offsets[:, 1:] - pad + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # [B, W]
    valid = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    out = images[
        index[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows.clamp(0, h - 1)[:, None, :, None],
        cols.clamp(0, w - 1)[:, None, None, :],
    ]
    return out.masked_fill_(~valid, 0)


class BatchOrder:
    """Epochs of index batches over ``num_examples`` examples, reshuffled from one generator,
    with :meth:`state_dict` / :meth:`load_state_dict` that resume an interrupted epoch exactly.
    Subclasses turn an index batch into data (:meth:`_batch`)."""

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        device: torch.device | str,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> None:
        if batch_size < 1:
            raise SSVIConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        if isinstance(generator, torch.Generator):
            self.generator = generator
        else:
            if generator is None:
                generator = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            self.generator = torch.Generator(device=self.device).manual_seed(int(generator))
        self._epoch = 0  # epochs started
        self._order: Tensor | None = None  # current epoch's order; None between epochs
        self._pos = 0  # batches of the current epoch handed out
        self._resume: tuple[Tensor | None, int] | None = None
        self._active: object | None = None  # identifies the live iterator

    def __len__(self) -> int:
        n = self.num_examples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def epoch(self) -> int:
        """Number of epochs started so far (including a resumed one)."""
        return self._epoch

    def _rand_device(self) -> torch.device:
        return self.generator.device

    def _new_order(self) -> Tensor | None:
        if not self.shuffle:
            return None
        perm = torch.randperm(self.num_examples, generator=self.generator, device=self._rand_device())
        return perm.to(self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._resume is not None:
            order, start = self._resume
            self._resume = None
        else:
            self._epoch += 1
            order, start = self._new_order(), 0
        self._order, self._pos = order, start
        token = self._active = object()
        n, bs = self.num_examples, self.batch_size
        try:
            for k in range(start, len(self)):
                lo, hi = k * bs, min((k + 1) * bs, n)
                idx = order[lo:hi] if order is not None else torch.arange(lo, hi, device=self.device)
                self._pos = k + 1
                yield self._batch(idx)
        finally:
            # Exhausted or abandoned: either way the next iter() starts a fresh epoch. An
            # older iterator collected late must not reset the epoch of a newer one.
            if self._active is token:
                self._order, self._pos, self._active = None, 0, None

    def state_dict(self) -> dict[str, Any]:
        """The generator state, epoch count and position in the current epoch (host tensors)."""
        in_epoch = self._pos > 0 and self._pos < len(self)
        order = self._order if in_epoch else None
        return {
            "generator": self.generator.get_state(),
            "epoch": self._epoch,
            "position": self._pos if in_epoch else 0,
            "order": order.cpu() if order is not None else None,
            "shuffle": self.shuffle,
            "num_examples": self.num_examples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the next ``iter()`` continues from there."""
        if state.get("num_examples") != self.num_examples:
            raise SSVIConfigError(
                f"loader state is for {state.get('num_examples')} examples, this loader has {self.num_examples}"
            )
        if state.get("shuffle") != self.shuffle:
            raise SSVIConfigError("loader state was saved with a different shuffle setting")
        self.generator.set_state(state["generator"])
        self._epoch = int(state["epoch"])
        position = int(state["position"])
        order = state["order"]
        if 0 < position < len(self):
            self._resume = (order.to(self.device) if order is not None else None, position)
        else:
            self._resume = None

    def _batch(self, idx: Tensor):
        raise NotImplementedError


class DeviceLoader(BatchOrder):
    """Shuffled, normalized (and optionally augmented) minibatches of a device-resident data set.

    :param data: the data set; its tensors are moved to ``device`` once, here.
    :param batch_size: examples per batch; the last batch is smaller unless ``drop_last``.
    :param device: where the data and the batches live.
    :param shuffle: draw a new random order every epoch (else the stored order).
    :param augment: per image, a random crop of the image zero-padded by ``pad`` pixels
        and a random horizontal flip (probability 1/2), in that order. Padding is black
        (raw pixel 0, before normalization), as with torchvision's
        ``RandomCrop(padding=pad)`` followed by ``Normalize``.
    :param generator: a ``torch.Generator`` (use one on ``device`` to keep batches off the
        host), an int seed for a fresh generator on ``device``, or None for a generator
        seeded from torch's global RNG (so ``torch.manual_seed`` makes it reproducible).
    :param channels_last: return batches in ``torch.channels_last`` memory format.
    :param dtype: floating dtype of the returned images (normalization runs in float32).

    Each iteration yields ``(x, y)``: ``x`` of ``dtype`` ``[B, C, H, W]`` equal to
    ``(images / scale - mean) / std`` (after augmentation), ``y`` int64 ``[B]``.
    Random draws, all from the one generator: at the start of an epoch one
    ``randperm(N)`` (if ``shuffle``); per batch, if ``augment``, offsets
    ``randint(0, 2*pad+1, [B, 2])`` then flips ``randint(0, 2, [B])``.

    Resuming: :meth:`state_dict` captures the generator and, when taken inside an epoch,
    the epoch's order and how many batches were handed out. A loader given that state
    with :meth:`load_state_dict` continues the interrupted epoch with its next
    ``iter()`` and yields bit-identical batches (same device type) from there on.
    Abandoning an iterator (``break``) ends its epoch. Use one iterator at a time.
    """

    def __init__(
        self,
        data: ArrayDataset,
        batch_size: int,
        *,
        device: torch.device | str,
        shuffle: bool = True,
        augment: bool = False,
        pad: int = 4,
        drop_last: bool = False,
        generator: torch.Generator | int | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if pad < 0:
            raise SSVIConfigError(f"pad must be >= 0, got {pad}")
        if not dtype.is_floating_point:
            raise SSVIConfigError(f"dtype must be a floating type, got {dtype}")
        super().__init__(len(data), batch_size, device=device, shuffle=shuffle, drop_last=drop_last,
                         generator=generator)
        self.data = data.to(self.device)
        self.augment = augment
        self.pad = int(pad)
        self.channels_last = channels_last
        self.dtype = dtype
        # (x / scale - mean) / std  ==  x * a + b, folded once into two [1, C, 1, 1] tensors.
        std = torch.tensor(data.std, dtype=torch.float64)
        mean = torch.tensor(data.mean, dtype=torch.float64)
        self._a = (1.0 / (data.scale * std)).float().view(1, -1, 1, 1).to(self.device)
        self._b = (-mean / std).float().view(1, -1, 1, 1).to(self.device)

    def _batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        images = self.data.images
        if self.augment:
            b = idx.shape[0]
            g, gdev = self.generator, self._rand_device()
            offsets = torch.randint(0, 2 * self.pad + 1, (b, 2), generator=g, device=gdev)
            flips = torch.randint(0, 2, (b,), generator=g, device=gdev).bool()
            x = crop_flip(images, offsets.to(self.device), flips.to(self.device), self.pad, index=idx)
        else:
            x = images[idx]
        # addcmul in float32 even for half dtypes, so rounding happens once, at the end.
        x = torch.addcmul(self._b, x.float(), self._a)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.data.labels[idx]
