"""The in-memory data set representation shared by every loader.

Every data set becomes an :class:`ArrayDataset`: one uint8 image tensor and one int64
label tensor, kept whole in memory (host or device), plus the metadata needed to
normalize it. Keeping raw uint8 pixels (4x smaller than float32) lets a whole
CIFAR-sized training set sit on the GPU; conversion to float happens per batch in
:class:`pyro_ssvi.data.DeviceLoader`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from pyro_ssvi.errors import SSVIConfigError

__all__ = ["ArrayDataset", "channel_stats"]


# eq=False: field-wise == on tensors is ambiguous; datasets compare by identity.
@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled image data set held as two whole tensors.

    :param images: uint8 ``[N, C, H, W]`` raw pixel values in ``0..scale``.
    :param labels: int64 ``[N]`` class indices in ``0..num_classes-1``.
    :param num_classes: number of classes (may exceed ``labels.max() + 1``).
    :param mean: per-channel mean of ``images / scale`` (length ``C``), used to normalize.
    :param std: per-channel standard deviation of ``images / scale`` (length ``C``).
    :param name: short data set name, e.g. ``"cifar10"``.
    :param scale: the value that maps to 1.0: 255 for 8-bit images, 16 for sklearn digits
        (whose pixels are counts ``0..16``).
    :param classes: class names in label order (may be empty when unknown).

    Normalized input is ``(images / scale - mean) / std``. The statistics always come
    from the *training* split, so train and test are normalized the same way.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    scale: float = 255.0
    classes: tuple[str, ...] = ()
    task = "classification"  # (a class attribute, not a field)

    def __post_init__(self) -> None:
        # Fail here, at construction, rather than with a shape error deep inside training.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise SSVIConfigError(
                f"{self.name}: images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise SSVIConfigError(
                f"{self.name}: labels must be int64 [N] with N={self.images.shape[0]}, got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        channels = self.images.shape[1]
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(self.mean) != channels or len(self.std) != channels:
            raise SSVIConfigError(
                f"{self.name}: mean/std need one value per channel ({channels}), got "
                f"{len(self.mean)}/{len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise SSVIConfigError(f"{self.name}: std must be positive, got {self.std}")
        if self.classes and len(self.classes) != self.num_classes:
            raise SSVIConfigError(
                f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes"
            )
        if self.num_classes < 1:
            raise SSVIConfigError(f"{self.name}: num_classes must be >= 1")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "ArrayDataset":
        """Return a copy whose tensors live on ``device`` (no copy if already there)."""
        return dataclasses.replace(
            self, images=self.images.to(device), labels=self.labels.to(device)
        )

    def subset(self, indices: Tensor | Sequence[int]) -> "ArrayDataset":
        """Return the examples at ``indices`` (e.g. a validation split), same metadata."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])


def channel_stats(images: Tensor, scale: float = 255.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation of ``images / scale``.

    :param images: uint8 ``[N, C, H, W]``.
    :returns: ``(mean, std)``, each a tuple of ``C`` floats (population std).

    Works from a 256-bin histogram per channel, so it needs no float copy of the
    images and is exact regardless of N.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise SSVIConfigError(f"channel_stats needs uint8 [N, C, H, W], got {images.dtype}")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).double()
        total = hist.sum()
        m = (hist * values).sum() / total
        var = (hist * (values - m) ** 2).sum() / total
        means.append(float(m) / scale)
        stds.append(float(var.sqrt()) / scale)
    return tuple(means), tuple(stds)
