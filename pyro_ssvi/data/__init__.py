"""Data held whole in memory (image classification, tabular regression), and device-resident loaders.

Every data set is loaded into an :class:`ArrayDataset`: uint8 images ``[N, C, H, W]``,
int64 labels ``[N]``, the number of classes, and the per-channel mean/std (of the
training split, in ``[0, 1]`` units) used to normalize. :class:`DeviceLoader` moves it to
the training device once and yields normalized, optionally augmented float batches.

>>> train = load_dataset("digits", split="train")
>>> loader = DeviceLoader(train, 128, device="cpu", generator=0)
>>> x, y = next(iter(loader))   # x float32 [128, 1, 8, 8], y int64 [128]

Modules: :mod:`.core` (the data set type), :mod:`.archive` (image-folder archives and
their decoded cache), :mod:`.sources` (the named data sets), :mod:`.loader`, :mod:`.tables`
(regression tables: diabetes, any CSV / Parquet).
"""
from pyro_ssvi.data.archive import cache_path_for, default_cache_dir, load_image_archive
from pyro_ssvi.data.core import ArrayDataset, channel_stats
from pyro_ssvi.data.loader import BatchOrder, DeviceLoader, crop_flip
from pyro_ssvi.data.sources import (
    CIFAR10_CLASSES,
    DATASETS,
    default_data_roots,
    load_cifar,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    read_idx,
)
from pyro_ssvi.data.tables import TABLES, TableDataset, TableLoader, load_diabetes, load_table, load_table_splits

__all__ = [
    "ArrayDataset",
    "BatchOrder",
    "CIFAR10_CLASSES",
    "DATASETS",
    "DeviceLoader",
    "TABLES",
    "TableDataset",
    "TableLoader",
    "cache_path_for",
    "channel_stats",
    "crop_flip",
    "default_cache_dir",
    "default_data_roots",
    "load_cifar",
    "load_dataset",
    "load_diabetes",
    "load_digits",
    "load_fashion_mnist",
    "load_image_archive",
    "load_table",
    "load_table_splits",
    "read_idx",
]
