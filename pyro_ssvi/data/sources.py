"""Loaders for the supported data sets, and :func:`load_dataset` to pick one by name.

=================== ===================================== ============== ==========
name                source                                 train / test   image
=================== ===================================== ============== ==========
``cifar10``         torchvision ``CIFAR10`` (pickles)      50000 / 10000  3x32x32
``cifar100``        torchvision ``CIFAR100`` (pickles)     50000 / 10000  3x32x32
``cifar10_archive`` the JPEG q75 copy ``cifar10-jpeg``     50000 / 10000  3x32x32
``fashion_mnist``   the original idx ``.gz`` files         60000 / 10000  1x28x28
``digits``          ``sklearn.datasets.load_digits``       1437 / 360     1x8x8
=================== ===================================== ============== ==========

All return an :class:`~pyro_ssvi.data.ArrayDataset` with uint8 images; digits keep their
raw 0..16 counts (``scale=16``), everything else is 0..255 (``scale=255``).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from pyro_ssvi.data.archive import SPLITS, load_image_archive
from pyro_ssvi.data.core import ArrayDataset, channel_stats
from pyro_ssvi.errors import SSVIConfigError, SSVIDataError, SSVIDataNotFoundError

__all__ = [
    "DATASETS",
    "CIFAR10_CLASSES",
    "load_dataset",
    "load_cifar",
    "load_fashion_mnist",
    "read_idx",
    "load_digits",
    "default_data_roots",
]

DATASETS = ("cifar10", "cifar100", "cifar10_archive", "fashion_mnist", "digits")  # image classification

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Per-channel statistics of the training splits, in [0, 1] units (population std over
# all pixels). Fixed constants so the test split never needs the train split loaded.
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_FASHION_MNIST_STATS = ((0.28604060,), (0.35302424,))
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
CIFAR10_ARCHIVE = "cifar10-jpeg.tar.gz"

_IDX_UBYTE = 0x08


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SSVIConfigError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")


def default_data_roots() -> list[Path]:
    """Folders searched when no ``root`` is given, in order.

    ``./.data`` (current directory), ``<repo>/.data`` and ``<repo>/../shared/data``,
    where ``<repo>`` is the checkout holding this package.
    """
    repo = Path(__file__).resolve().parents[2]
    roots = [Path.cwd() / ".data", repo / ".data", repo.parent / "shared" / "data"]
    unique: list[Path] = []
    for r in roots:
        if r.absolute() not in [u.absolute() for u in unique]:
            unique.append(r)
    return unique


# ------------------------------------------------------------------------------ CIFAR


def load_cifar(name: str, root: str | os.PathLike | None, split: str, download: bool = False) -> ArrayDataset:
    """CIFAR-10/100 through torchvision's pickled batches, as uint8 ``[N, 3, 32, 32]``.

    :param name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
    :param root: folder holding ``cifar-10-batches-py``/``cifar-100-python``; default: the
        first of :func:`default_data_roots` that holds it, else ``./.data``.
    :param download: let torchvision fetch the data; only works where a network exists.
    :raises SSVIDataNotFoundError: the data are not under ``root`` and not downloaded.
    """
    from torchvision import datasets  # import here: only this loader needs it

    _check_split(split)
    if name not in _CIFAR_STATS:
        raise SSVIConfigError(f"unknown CIFAR variant {name!r}; known: cifar10, cifar100")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if root is None:
        candidates = default_data_roots()
        root = next((r for r in candidates if (r / cls.base_folder).is_dir()), candidates[0])
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as exc:
        raise SSVIDataNotFoundError(
            f"{name} not found under {Path(root) / cls.base_folder} ({exc}). Point data.root (load_dataset's "
            f"root=) at the folder holding '{cls.base_folder}', set data.download=true where a network exists, "
            "or use data=cifar10_archive for the offline JPEG copy."
        ) from exc
    # torchvision keeps HWC numpy; training wants NCHW.
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    mean, std = _CIFAR_STATS[name]
    return ArrayDataset(
        images=images,
        labels=torch.as_tensor(ds.targets, dtype=torch.int64),
        num_classes=len(ds.classes),
        mean=mean,
        std=std,
        name=name,
        classes=tuple(ds.classes),
    )


def _find_cifar10_archive(root: str | os.PathLike | None) -> Path:
    stem = CIFAR10_ARCHIVE.split(".")[0]
    if root is not None and (Path(root).is_file() or (Path(root) / "train").is_dir()):
        return Path(root)  # the archive itself, or the extracted tree itself
    if root is not None and not Path(root).is_dir():
        raise SSVIDataNotFoundError(
            f"cifar10_archive: data.root={str(root)!r} does not exist. Point it at {CIFAR10_ARCHIVE}, its extracted "
            f"'{stem}/' folder, or the folder holding either."
        )
    folders = [Path(root)] if root is not None else default_data_roots()
    for folder in folders:
        for candidate in (folder / CIFAR10_ARCHIVE, folder / stem):
            if candidate.exists():
                return candidate
    tried = ", ".join(str(f / CIFAR10_ARCHIVE) for f in folders)
    raise SSVIDataNotFoundError(
        f"cifar10_archive: found neither {CIFAR10_ARCHIVE} nor an extracted '{stem}/' folder "
        f"(tried {tried}). Point data.root (load_dataset's root=) at the archive or its folder; it holds "
        f"'{stem}/<train|test>/<class>/NNNN.jpg'."
    )


# -------------------------------------------------------------------------- idx files


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Parse an unsigned-byte idx file (``.gz`` or plain) into a uint8 tensor.

    The idx header is two zero bytes, a type byte (0x08 = unsigned byte), the number of
    dimensions, then one big-endian uint32 size per dimension.

    :raises SSVIDataNotFoundError: the file does not exist.
    :raises SSVIDataError: bad magic number, unsupported type, or wrong length.
    """
    path = Path(path)
    if not path.is_file():
        raise SSVIDataNotFoundError(f"{path}: no such idx file")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise SSVIDataError(f"{path}: cannot decompress ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise SSVIDataError(f"{path}: not an idx file (bad magic number {raw[:4].hex()})")
    if raw[2] != _IDX_UBYTE:
        raise SSVIDataError(f"{path}: idx type 0x{raw[2]:02x} is unsupported; only unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise SSVIDataError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise SSVIDataError(f"{path}: idx header says shape {shape} ({expected} bytes), file has {len(raw)}")
    # bytearray gives a writable buffer, so the tensor owns ordinary memory.
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise SSVIDataNotFoundError(
        f"Fashion-MNIST file {root / (stem + '.gz')} not found. Install it with "
        "`apt-get install dataset-fashion-mnist` (puts the idx files in "
        f"{FASHION_MNIST_ROOT}) or point data.root (eval.ood_root for eval.ood; load_dataset's root=) at the folder holding "
        "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."
    )


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> ArrayDataset:
    """Fashion-MNIST from the original idx files, as uint8 ``[N, 1, 28, 28]``.

    :param root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``;
        default ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``).
    :param split: ``"train"`` (60000 images) or ``"test"`` (10000).
    """
    _check_split(split)
    root = Path(root if root is not None else FASHION_MNIST_ROOT)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte"))
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise SSVIDataError(
            f"Fashion-MNIST {split} under {root}: images {tuple(images.shape)} and labels "
            f"{tuple(labels.shape)} do not match"
        )
    labels = labels.long()
    if int(labels.max()) >= 10:
        raise SSVIDataError(f"Fashion-MNIST {split} under {root}: label {int(labels.max())} >= 10")
    mean, std = _FASHION_MNIST_STATS
    return ArrayDataset(
        images=images.unsqueeze(1),
        labels=labels,
        num_classes=10,
        mean=mean,
        std=std,
        name="fashion_mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    )


# ----------------------------------------------------------------------------- digits


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """scikit-learn's 8x8 digits with a fixed stratified train/test split.

    Images are uint8 ``[N, 1, 8, 8]`` holding the raw counts 0..16, so ``scale=16``
    (normalization divides by 16, not 255). Mean and std come from the train part.
    With the defaults the split is 1437 train / 360 test images (the test size is
    ``ceil(test_fraction * 1797)``), every class in the same proportion in both, and
    the same for every call with the same ``seed``.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split)
    if not 0.0 < test_fraction < 1.0:
        raise SSVIConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)  # keep the original order
    mean, std = channel_stats(images[torch.from_numpy(train_idx)], scale=16.0)
    idx = torch.from_numpy(train_idx if split == "train" else test_idx)
    return ArrayDataset(
        images=images[idx].contiguous(),
        labels=labels[idx].contiguous(),
        num_classes=10,
        mean=mean,
        std=std,
        name="digits",
        scale=16.0,
        classes=tuple(str(d) for d in range(10)),
    )


# --------------------------------------------------------------------------- dispatch


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    split: str,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> ArrayDataset:
    """Load ``split`` of the data set ``name`` (one of :data:`DATASETS`).

    :param root: where the data live; its meaning and default depend on ``name``:
        a folder for ``cifar10``/``cifar100`` (see :func:`load_cifar`), the archive file,
        its folder or the extracted tree for ``cifar10_archive`` (default: search :func:`default_data_roots`),
        the idx folder for ``fashion_mnist``; ignored for ``digits``.
    :param split: ``"train"`` or ``"test"``.
    :param download: for ``cifar10``/``cifar100`` only.
    :param cache_dir: decoded-image cache folder for ``cifar10_archive``
        (see :mod:`pyro_ssvi.data.archive` for the default).
    :raises SSVIConfigError: unknown ``name`` or ``split``.
    """
    if name not in DATASETS:
        raise SSVIConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    _check_split(split)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, split, download=download)
    if name == "cifar10_archive":
        mean, std = _CIFAR_STATS["cifar10"]
        path = _find_cifar10_archive(root)
        ds = load_image_archive(path, split, name=name, cache_dir=cache_dir, mean=mean, std=std)
        if ds.classes != CIFAR10_CLASSES:
            raise SSVIDataError(f"{path}: classes {ds.classes} are not CIFAR-10's {CIFAR10_CLASSES}")
        return ds
    if name == "fashion_mnist":
        return load_fashion_mnist(root, split)
    return load_digits(split)
