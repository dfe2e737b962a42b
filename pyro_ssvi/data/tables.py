"""Tabular regression data: real features and a real target, standardized with the training split.

Every table becomes a pair of :class:`TableDataset` (train, test) that share the training
split's means and standard deviations: ``features`` float32 ``[N, D]`` and ``targets`` float32
``[N]`` are kept raw, and :meth:`TableDataset.standardized` gives the model's units. The
statistics (:attr:`TableDataset.standardization`) go into the run's config, so a saved model's
predictions can be mapped back to the target's units.

- ``diabetes``: scikit-learn's bundled data (442 patients, 10 features), a fixed random split of
  342 train / 100 test;
- ``table``: any CSV file (a header row, numeric columns) or Parquet file (needs ``pyarrow``),
  one column named as the target, the others as features; split by ``test_fraction``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from pyro_ssvi.data.loader import BatchOrder
from pyro_ssvi.errors import SSVIConfigError, SSVIDataError, SSVIDataNotFoundError

__all__ = ["TABLES", "TableDataset", "TableLoader", "load_diabetes", "load_table", "load_table_splits"]

TABLES = ("diabetes", "table")


@dataclass(frozen=True, eq=False)
class TableDataset:
    """One split of a table: raw ``features`` [N, D] and ``targets`` [N] (float32) and the
    training split's statistics used to standardize both."""

    features: Tensor
    targets: Tensor
    feature_mean: Tensor
    feature_std: Tensor
    target_mean: float
    target_std: float
    name: str
    feature_names: Tuple[str, ...] = ()
    target_name: str = "target"
    task = "regression"

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def input_shape(self) -> Tuple[int]:
        return (self.features.shape[1],)

    def standardized(self) -> Tuple[Tensor, Tensor]:
        """``((features - mean) / std, (targets - mean) / std)``."""
        return ((self.features - self.feature_mean) / self.feature_std,
                (self.targets - self.target_mean) / self.target_std)

    def subset(self, index: Tensor) -> "TableDataset":
        return dataclasses.replace(self, features=self.features[index], targets=self.targets[index])

    @property
    def standardization(self) -> Dict[str, object]:
        """The statistics, JSON-serializable: ``x = (raw - feature_mean) / feature_std``, and
        ``target = prediction * target_std + target_mean``."""
        return {"feature_mean": self.feature_mean.tolist(), "feature_std": self.feature_std.tolist(),
                "target_mean": self.target_mean, "target_std": self.target_std,
                "feature_names": list(self.feature_names), "target_name": self.target_name}


def _split(features: np.ndarray, targets: np.ndarray, test_size: int, seed: int, name: str, feature_names,
           target_name) -> Tuple[TableDataset, TableDataset]:
    n = len(targets)
    if not 0 < test_size < n - 1:
        raise SSVIConfigError(f"{name}: a test split of {test_size} of {n} rows leaves no training data")
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.float32)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, test = order[: n - test_size].sort().values, order[n - test_size:].sort().values
    mean, std = x[train].mean(0), x[train].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays as it is
    y_std = float(y[train].std()) or 1.0
    make = lambda idx: TableDataset(x[idx], y[idx], mean, std, float(y[train].mean()), y_std, name,  # noqa: E731
                                    tuple(feature_names), target_name)
    return make(train), make(test)


def load_diabetes(test_size: int = 100, seed: int = 0) -> Tuple[TableDataset, TableDataset]:
    """scikit-learn's diabetes data: (train 342, test 100) with the defaults."""
    from sklearn.datasets import load_diabetes as sk_diabetes

    bunch = sk_diabetes()
    return _split(bunch.data, bunch.target, test_size, seed, "diabetes", bunch.feature_names, "disease progression")


def _read_columns(path: Path) -> Dict[str, np.ndarray]:
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SSVIConfigError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or save the table as CSV"
            ) from None
        table = pq.read_table(path)
        return {name: table.column(name).to_numpy() for name in table.column_names}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise SSVIDataError(f"{path}: expected a header row and data rows, found {len(rows)} row(s)")
    header, body = rows[0], rows[1:]
    columns = {}
    for j, name in enumerate(header):
        try:
            columns[name] = np.array([float(r[j]) for r in body], dtype=np.float64)
        except (ValueError, IndexError):
            bad = next((i for i, r in enumerate(body, start=2) if len(r) <= j or not _is_number(r[j])), "?")
            raise SSVIDataError(f"{path}: column {name!r} is not numeric (line {bad}); give numeric columns only") from None
    return columns


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_table(path, target: str, test_fraction: float = 0.2, seed: int = 0) -> Tuple[TableDataset, TableDataset]:
    """A CSV or Parquet file: ``target`` is the column to predict, every other column a feature."""
    if path is None:
        raise SSVIConfigError("data=table needs data.path (a .csv or .parquet file) and data.target (a column)")
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise SSVIDataNotFoundError(f"data.path={str(path)!r} does not exist (expected a .csv or .parquet file)")
    if not 0 < test_fraction < 1:
        raise SSVIConfigError(f"data.test_fraction={test_fraction!r} is not allowed; expected a number in (0, 1)")
    columns = _read_columns(path)
    if target not in columns:
        raise SSVIConfigError(f"data.target={target!r} is not a column of {path}; its columns are {sorted(columns)}")
    names = [c for c in columns if c != target]
    if not names:
        raise SSVIDataError(f"{path}: no feature column besides the target {target!r}")
    features = np.stack([columns[c] for c in names], axis=1)
    targets = columns[target]
    if not (np.isfinite(features).all() and np.isfinite(targets).all()):
        raise SSVIDataError(f"{path}: missing or non-finite values; clean or drop those rows first")
    test_size = max(1, math.ceil(test_fraction * len(targets)))
    return _split(features, targets, test_size, seed, path.stem, names, target)


def load_table_splits(name: str, path=None, target=None, test_fraction: float = 0.2, seed: int = 0):
    """(train, test) of a named table data set (one of :data:`TABLES`)."""
    if name == "diabetes":
        return load_diabetes(seed=seed)
    if name == "table":
        return load_table(path, target, test_fraction, seed)
    raise SSVIConfigError(f"unknown table data set {name!r}; known: {', '.join(TABLES)}")


class TableLoader(BatchOrder):
    """Shuffled minibatches ``(x [B, D], y [B])`` of a :class:`TableDataset`, standardized, on ``device``."""

    def __init__(self, data: TableDataset, batch_size: int, *, device, shuffle: bool = True,
                 generator=None, drop_last: bool = False) -> None:
        super().__init__(len(data), batch_size, device=device, shuffle=shuffle, drop_last=drop_last,
                         generator=generator)
        x, y = data.standardized()
        self.x, self.y = x.to(self.device), y.to(self.device)

    def _batch(self, idx):
        return self.x[idx], self.y[idx]


def whole(data: TableDataset, device) -> Sequence[Tensor]:
    """All of ``data`` standardized, in order: (x [N, D], y [N]) on ``device``."""
    x, y = data.standardized()
    return x.to(device), y.to(device)
