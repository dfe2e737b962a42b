"""Image-folder archives decoded once into a cached uint8 tensor file.

An *image archive* is an ``ImageFolder`` tree ``<split>/<class>/<file>.jpg`` (JPEG or
PNG, all images the same size), either as a directory or as a ``.tar``/``.tar.gz`` of
one. The tree may sit under one top-level folder (``cifar10-jpeg/train/...``).
Labels are the indices of the sorted class folder names (``ImageFolder``'s rule), and
images are ordered by (class, file name), so the result does not depend on the order
of the members in the archive.

Decoding tens of thousands of small JPEGs takes seconds to a minute, so the decoded
split is saved as ``<archive name>.<split>.uint8.pt`` and reused. Cache location:

1. ``cache_dir`` when given;
2. otherwise next to the archive, when that folder is writable (a folder whose mode
   has no write bit counts as read-only even for root, so shared read-only data is
   never written to);
3. otherwise ``$XDG_CACHE_HOME/pyro_ssvi`` (default ``~/.cache/pyro_ssvi``).

The cache records a SHA-256 fingerprint of the source (the whole archive file, or the
list of names, sizes and mtimes of a directory tree), so a changed archive is decoded
again, and a copy of the same archive elsewhere reuses the cache. A cache that cannot
be read or fails validation (truncated, wrong format, wrong fingerprint) is rebuilt
with a warning. Caches are written atomically (temporary file, then ``os.replace``).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

try:  # torchvision's decoder is ~3x faster than Pillow, but deprecated since 0.29
    from torchvision.io import ImageReadMode as _ReadMode
    from torchvision.io import decode_image as _tv_decode_image
except ImportError:  # pragma: no cover - depends on the installed torchvision
    _tv_decode_image = None

from pyro_ssvi.data.core import ArrayDataset, channel_stats
from pyro_ssvi.errors import SSVIConfigError, SSVIDataError, SSVIDataNotFoundError
from pyro_ssvi.fileio import atomic_write

__all__ = ["load_image_archive", "default_cache_dir", "cache_path_for"]

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_FORMAT = "pyro_ssvi.image_cache"
_CACHE_VERSION = 1
_LAYOUT = (
    "an ImageFolder tree '<split>/<class>/<image>.jpg' (split 'train' or 'test'), as a "
    "directory or a .tar/.tar.gz of one, optionally under one top-level folder"
)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pyro_ssvi``, or ``~/.cache/pyro_ssvi`` when that is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyro_ssvi"


def _is_writable_dir(path: Path) -> bool:
    # root passes os.access() on any folder, so also honour the mode bits: a folder
    # marked r-x (like the shared data folder) is treated as read-only on purpose.
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & 0o222) and os.access(path, os.W_OK | os.X_OK)


def cache_path_for(path: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the decoded ``split`` of the archive at ``path`` is cached (see module doc)."""
    src = Path(path).expanduser().absolute()
    name = f"{src.name}.{split}.uint8.pt"
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / name
    if _is_writable_dir(src.parent):
        return src.parent / name
    return default_cache_dir() / name


# ----------------------------------------------------------------------------- reading


def _split_member(rel: str, split: str) -> tuple[tuple[str, ...], str, str] | None:
    """``(prefix, class, file)`` when the path ``rel`` is ``prefix/<split>/<class>/<file>``."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if len(parts) < 3 or parts[-3] != split:
        return None
    fname = parts[-1]
    if fname.startswith(".") or not fname.lower().endswith(IMAGE_SUFFIXES):
        return None  # skip non-images and e.g. macOS '._x.jpg' resource forks
    return tuple(parts[:-3]), parts[-2], fname


def _collect(entries: Iterable[tuple[str, bytes]], split: str, source: Path) -> list[tuple[str, str, bytes]]:
    """Keep the ``split`` images of ``(relative path, bytes)`` pairs as ``(class, file, bytes)``."""
    found: list[tuple[str, str, bytes]] = []
    prefixes: set[tuple[str, ...]] = set()
    for rel, data in entries:
        hit = _split_member(rel, split)
        if hit is not None:
            prefixes.add(hit[0])
            found.append((hit[1], hit[2], data))
    if not found:
        raise SSVIDataError(f"{source}: no images found for split {split!r}; expected {_LAYOUT}")
    if len(prefixes) > 1:
        shown = sorted("/".join(p) or "." for p in prefixes)
        raise SSVIDataError(f"{source}: several '{split}/' folders ({shown}); expected {_LAYOUT}")
    return found


def _read_tar(path: Path, split: str) -> list[tuple[str, str, bytes]]:
    def entries() -> Iterable[tuple[str, bytes]]:
        # Streaming mode ('r|*') decompresses the archive once, front to back.
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                # Only read the bytes of members that can be wanted.
                if member.isfile() and _split_member(member.name, split) is not None:
                    fobj = tf.extractfile(member)
                    yield member.name, fobj.read() if fobj is not None else b""

    try:
        return _collect(entries(), split, path)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise SSVIDataError(
            f"{path}: cannot read the archive ({type(exc).__name__}: {exc}); it may be truncated "
            f"or not a tar file; expected {_LAYOUT}"
        ) from exc


def _dir_files(root: Path, split: str) -> list[tuple[str, Path]]:
    """``(relative path, file)`` for every file under ``root`` whose parent's parent is ``split``."""
    candidates = [root / split] if (root / split).is_dir() else [
        d / split for d in sorted(root.iterdir()) if (d / split).is_dir()
    ]
    out = []
    for split_dir in candidates:
        for cls in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for f in sorted(cls.iterdir()):
                if f.is_file():
                    out.append((f.relative_to(root).as_posix(), f))
    return out


def _fingerprint(path: Path, split: str) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for rel, f in _dir_files(path, split):
            st = f.stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        # Hashing the whole file (~40 ms for the 19 MB CIFAR-10 copy) is cheap next to
        # decoding, and unlike mtimes it survives copying the archive to another machine.
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _decode_one(data: bytes) -> Tensor:
    """Decode one JPEG/PNG file's bytes to uint8 ``[3, H, W]`` RGB."""
    if _tv_decode_image is not None:
        # bytearray: torch.frombuffer wants a writable buffer; the copy is tiny.
        return _tv_decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=_ReadMode.RGB)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(str(exc)) from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _decode_all(items: list[tuple[str, str, bytes]], source: Path, split: str) -> dict:
    classes = sorted({cls for cls, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    items.sort(key=lambda t: (index[t[0]], t[1]))
    images: Tensor | None = None
    with warnings.catch_warnings():
        # torchvision warns on every decode call that its decoders are deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        # A bar on terminals: the first decode of CIFAR-10 takes 30-60 s on 2 cores.
        for i, (cls, fname, data) in enumerate(tqdm(items, desc=f"decoding {split}", unit="img", disable=None,
                                                    leave=False, mininterval=1.0)):
            where = f"{source}: {split}/{cls}/{fname}"
            try:
                img = _decode_one(data)
            except (RuntimeError, ValueError) as exc:
                raise SSVIDataError(f"{where}: cannot decode image ({exc})") from exc
            if images is None:
                # Decode straight into one preallocated tensor: no list of 50k small tensors.
                images = torch.empty((len(items), *img.shape), dtype=torch.uint8)
            elif img.shape != images.shape[1:]:
                raise SSVIDataError(
                    f"{where}: image shape {tuple(img.shape)} differs from "
                    f"{tuple(images.shape[1:])}; all images of an archive must have the same size"
                )
            images[i] = img
    labels = torch.tensor([index[cls] for cls, _, _ in items], dtype=torch.int64)
    return {"images": images, "labels": labels, "classes": classes}


# ------------------------------------------------------------------------------- cache


def _load_cache(cache: Path, fingerprint: str, split: str) -> dict | None:
    """The cached payload, or None (with a warning if a cache existed but was bad)."""
    if not cache.is_file():
        return None
    try:
        obj = torch.load(cache, map_location="cpu", weights_only=True)
        ok = (
            isinstance(obj, dict)
            and obj.get("format") == _CACHE_FORMAT
            and obj.get("version") == _CACHE_VERSION
            and obj.get("split") == split
        )
        if ok and obj.get("fingerprint") != fingerprint:
            warnings.warn(f"{cache}: made from a different archive; decoding again", stacklevel=3)
            return None
        if ok:
            images, labels, classes = obj["images"], obj["labels"], obj["classes"]
            ok = (
                isinstance(images, Tensor)
                and images.dtype == torch.uint8
                and images.dim() == 4
                and isinstance(labels, Tensor)
                and labels.dtype == torch.int64
                and labels.shape == (images.shape[0],)
                and isinstance(classes, list)
                and len(classes) > 0
                and images.shape[0] > 0
                and int(labels.min()) >= 0
                and int(labels.max()) < len(classes)
            )
        if ok:
            return obj
        reason = "unexpected contents"
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        reason = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"{cache}: unusable cache ({reason}); decoding again", stacklevel=3)
    return None


def _save_cache(cache: Path, payload: dict) -> None:
    """Write ``payload`` atomically; on failure warn and carry on uncached."""
    try:
        atomic_write(cache, lambda f: torch.save(payload, f))  # readers see old or complete new
    except OSError as exc:
        warnings.warn(f"could not write the cache {cache} ({exc}); continuing without it", stacklevel=3)


def _decoded_split(path: Path, split: str, cache_dir: str | os.PathLike | None) -> dict:
    if not path.exists():
        raise SSVIDataNotFoundError(f"{path}: no such archive or folder; expected {_LAYOUT}")
    fingerprint = _fingerprint(path, split)
    cache = cache_path_for(path, split, cache_dir)
    payload = _load_cache(cache, fingerprint, split)
    if payload is None:
        if path.is_dir():
            items = _collect(((rel, f.read_bytes()) for rel, f in _dir_files(path, split)), split, path)
        else:
            items = _read_tar(path, split)
        log.info("decoding the %d %s images of %s once; the decoded copy is cached at %s", len(items), split, path, cache)
        payload = _decode_all(items, path, split)
        payload.update(format=_CACHE_FORMAT, version=_CACHE_VERSION, split=split, fingerprint=fingerprint)
        _save_cache(cache, payload)
    return payload


def load_image_archive(
    path: str | os.PathLike,
    split: str,
    *,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ArrayDataset:
    """Load one split of an image-folder archive as uint8 RGB ``[N, 3, H, W]``.

    :param path: a ``.tar``/``.tar.gz`` file or a directory (see the module doc for layout).
    :param split: ``"train"`` or ``"test"``.
    :param name: data set name; default: the archive's file name without extensions.
    :param cache_dir: where to keep the decoded cache; default: see the module doc.
    :param mean: per-channel mean in ``[0, 1]`` units; with ``std``, both default to the
        exact statistics of the archive's *train* split (decoding and caching it if needed).
    :raises SSVIDataNotFoundError: ``path`` does not exist.
    :raises SSVIDataError: the archive is unreadable, lacks the split, or holds images
        that cannot be decoded or differ in size.
    """
    if split not in SPLITS:
        raise SSVIConfigError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if (mean is None) != (std is None):
        raise SSVIConfigError("give both mean and std, or neither")
    src = Path(path).expanduser()
    payload = _decoded_split(src, split, cache_dir)
    if mean is None:
        train = payload if split == "train" else _decoded_split(src, "train", cache_dir)
        mean, std = channel_stats(train["images"])
    if name is None:
        name = src.name.split(".")[0] if src.is_file() else src.name
    return ArrayDataset(
        images=payload["images"],
        labels=payload["labels"],
        num_classes=len(payload["classes"]),
        mean=mean,
        std=std,
        name=name,
        scale=255.0,
        classes=tuple(payload["classes"]),
    )
