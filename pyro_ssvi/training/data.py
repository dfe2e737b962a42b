"""A training run's data: the splits, the loader, the test tensors and what the model needs to know.

Image classification sets load as :class:`~pyro_ssvi.data.ArrayDataset` (a device-resident,
augmenting :class:`~pyro_ssvi.data.DeviceLoader`); regression tables as
:class:`~pyro_ssvi.data.TableDataset` (standardized with the training split, a
:class:`~pyro_ssvi.data.TableLoader`). Everything here is checked before a run writes anything.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from omegaconf import DictConfig

from ..build import DataInfo
from ..config import channels_last_problem, task_of
from ..data import TABLES, DeviceLoader, TableLoader, load_dataset, load_table_splits
from ..data.tables import whole as whole_table
from ..errors import SSVIConfigError
from ..ood import ood_dataset

__all__ = ["RunData", "load_data", "prepare_data", "split_validation"]

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """What a run trains and evaluates on (all tensors on the run's device)."""

    train: Any  # ArrayDataset | TableDataset
    test: Any
    info: DataInfo
    loader: Any  # DeviceLoader | TableLoader
    test_x: torch.Tensor
    test_y: torch.Tensor
    ood: Optional[Any]  # an ArrayDataset, for eval.ood
    normalization: dict  # how raw inputs map to the model's (and, for a regression, back)
    channels_last: bool
    val: Optional[Any] = None  # held out of the training split (data.val_size); None: no validation
    val_x: Optional[torch.Tensor] = None
    val_y: Optional[torch.Tensor] = None

    @property
    def regression(self) -> bool:
        return self.info.task == "regression"


def _limit(ds, limit):
    if limit is not None and limit < len(ds):
        # A fixed random subset: archives are sorted by class, so a prefix would be one class.
        return ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit].sort().values)
    return ds


def load_data(cfg: DictConfig) -> Tuple[Any, Any]:
    """Train and test splits of ``data.name``, with ``data.normalize`` and ``data.limit_*`` applied."""
    d = cfg.data
    if d.name in TABLES:
        train, test = load_table_splits(d.name, d.path, d.target, d.test_fraction or 0.2, int(cfg.seed))
        return _limit(train, d.limit_train), _limit(test, d.limit_test)
    kwargs = dict(root=d.root, download=bool(d.download), cache_dir=d.cache_dir)
    if d.name in ("digits", "fashion_mnist"):
        kwargs = dict(root=d.root)
    splits = []
    for split, limit in (("train", d.limit_train), ("test", d.limit_test)):
        ds = load_dataset(d.name, split=split, **kwargs)
        if d.normalize is not None:
            try:
                ds = dataclasses.replace(ds, mean=tuple(d.normalize.mean), std=tuple(d.normalize.std))
            except SSVIConfigError as exc:
                raise SSVIConfigError(f"data.normalize does not fit the data: {exc}") from None
        splits.append(_limit(ds, limit))
    return splits[0], splits[1]


def split_validation(train, val_size, seed: int) -> Tuple[Any, Optional[Any]]:
    """``(training part, validation part)`` of ``train``: ``val_size`` examples (an int) or that
    fraction of them (a float, rounded, at least 1) drawn at random by ``seed``, both parts in the
    original order; ``(train, None)`` for ``val_size`` 0. The same seed gives the same split.

    :raises SSVIConfigError: the validation part would leave no training example.
    """
    n = len(train)
    count = val_size if isinstance(val_size, int) else max(1, round(val_size * n))
    if count == 0:
        return train, None
    if count >= n:
        raise SSVIConfigError(
            f"data.val_size={val_size} holds out {count} of the {n} training examples, leaving none to train on; use "
            f"a count below {n} or a fraction in (0, 1) (e.g. data.val_size=0.1)"
        )
    # Its own generator: the split depends on the seed only, and no other random stream moves.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return train.subset(order[count:].sort().values), train.subset(order[:count].sort().values)


def _check_against_data(cfg: DictConfig, train) -> None:
    """Config values that only make sense against the data (before anything is written)."""
    if int(cfg.train.batch_size) > len(train):
        raise SSVIConfigError(
            f"train.batch_size={cfg.train.batch_size} exceeds the {len(train)} training examples; use at most "
            f"{len(train)} (an epoch would be one short batch, and mask updates would hardly ever come)"
        )
    shape = getattr(train, "image_shape", None)
    side = min(shape[1:]) if shape is not None and len(shape) == 3 else None
    if cfg.data.augment and side is not None and int(cfg.data.pad) >= side:
        raise SSVIConfigError(
            f"data.pad={cfg.data.pad} is not smaller than the {side}-pixel images: random crops would be mostly "
            f"padding; use 0 < data.pad < {side} (CIFAR: 4)"
        )


def _whole_images(data, batch_size: int, device: torch.device):
    loader = DeviceLoader(data, batch_size, device=device, shuffle=False, generator=0)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def whole(data, batch_size: int, device: torch.device):
    """All of ``data`` in the model's units, in order: (x, y) on ``device``."""
    if data.task == "regression":
        return whole_table(data, device)
    return _whole_images(data, batch_size, device)


def prepare_data(cfg: DictConfig, device: torch.device) -> RunData:
    """Load and check the data of ``cfg`` and build its loader (nothing is written)."""
    train, test = load_data(cfg)
    train, val = split_validation(train, cfg.data.val_size, int(cfg.seed))
    _check_against_data(cfg, train)
    regression = task_of(cfg) == "regression"
    # Built now so that a bad OOD set fails before training, not after it.
    ood = ood_dataset(cfg.eval.ood, test, cfg.eval.ood_root, int(cfg.seed)) if cfg.eval.ood else None
    batch, seed = int(cfg.train.batch_size), int(cfg.seed) + 1
    if regression:
        info = DataInfo(train.input_shape, 1, len(train), "regression")
        loader = TableLoader(train, batch, device=device, shuffle=True, generator=seed)
        normalization, channels_last = train.standardization, False
    else:
        info = DataInfo(train.image_shape, train.num_classes, len(train))
        channels_last = bool(cfg.train.channels_last) and len(info.input_shape) == 3
        problem = channels_last_problem(device) if channels_last else None
        if problem:
            log.warning("train.channels_last=true is ignored: %s", problem)
            channels_last = False
        loader = DeviceLoader(train, batch, device=device, shuffle=True, augment=bool(cfg.data.augment),
                              pad=int(cfg.data.pad), generator=seed, channels_last=channels_last)
        normalization = {"mean": list(train.mean), "std": list(train.std), "scale": train.scale}
    test_x, test_y = whole(test, int(cfg.eval.batch_size), device)
    val_x, val_y = whole(val, int(cfg.eval.batch_size), device) if val is not None else (None, None)
    return RunData(train, test, info, loader, test_x, test_y, ood, normalization, channels_last, val, val_x, val_y)
