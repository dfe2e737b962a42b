"""Out-of-distribution evaluation: how well predictive uncertainty separates OOD inputs from test data."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch

from .data import DATASETS, ArrayDataset, load_dataset
from .errors import SSVIConfigError
from .metrics import ood_auroc
from .predictive import ClassPrediction

__all__ = ["OOD_SETS", "ood_dataset", "ood_metrics"]

#: Built-in OOD sets (any of ``pyro_ssvi.data.DATASETS`` with the same image shape also works).
OOD_SETS = ("noise", "vflip")


def ood_dataset(kind: str, test: ArrayDataset, root: Optional[str] = None, seed: int = 0) -> ArrayDataset:
    """An OOD set shaped and normalized like ``test``.

    ``"noise"``: uniform random pixels; ``"vflip"``: the test images upside down; a data-set
    name: that data set's test split (same image shape required), normalized with ``test``'s
    statistics, as the trained network expects.
    """
    if kind == "noise":
        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, int(test.scale) + 1, tuple(test.images.shape), generator=g, dtype=torch.uint8)
        return dataclasses.replace(test, images=images, name="noise")
    if kind == "vflip":
        return dataclasses.replace(test, images=test.images.flip(-2), name=f"{test.name}-vflip")
    if kind not in DATASETS:
        raise SSVIConfigError(
            f"eval.ood={kind!r} is not allowed; expected null, {', '.join(OOD_SETS)} or a data set: {', '.join(DATASETS)}"
        )
    other = load_dataset(kind, root, split="test")
    if other.image_shape != test.image_shape:
        raise SSVIConfigError(
            f"eval.ood={kind!r} has images of shape {other.image_shape}, the test set {test.image_shape}; "
            "an OOD set must have the shape the network takes"
        )
    return dataclasses.replace(other, mean=test.mean, std=test.std, scale=test.scale)


def ood_metrics(in_dist: ClassPrediction, out_dist: ClassPrediction) -> Dict[str, float]:
    """AUROC of telling OOD inputs (positives) from test inputs by predictive entropy and by MI."""
    return {
        "ood_auroc_entropy": ood_auroc(in_dist.entropy.cpu(), out_dist.entropy.cpu()),
        "ood_auroc_mutual_information": ood_auroc(in_dist.mutual_information.cpu(), out_dist.mutual_information.cpu()),
    }
