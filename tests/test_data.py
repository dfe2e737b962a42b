"""Tests of pyro_ssvi.data: archive decoding and caching, idx parsing, digits, DeviceLoader."""
from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pyro_ssvi import data as D
from pyro_ssvi.data import archive as archive_mod
from pyro_ssvi.errors import SSVIConfigError, SSVIDataError, SSVIDataNotFoundError, SSVIError

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")

# --------------------------------------------------------------------------- helpers

# Class folders deliberately not in sorted order on disk/in the tar; labels must follow
# the sorted names: ant=0, bee=1, cat=2.
CLASSES = ("cat", "ant", "bee")
H, W = 6, 10  # non-square, to catch H/W mix-ups
N_TRAIN, N_TEST = 40, 12  # per class


def _pixel_value(cls: str, i: int) -> tuple[int, int, int]:
    """A distinct solid colour per (class, index), so decoded images identify themselves."""
    k = sorted(CLASSES).index(cls)
    return (20 + 80 * k, 5 * i, 250 - 5 * i)


def _encode(rgb: tuple[int, int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (W, H), rgb).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _png_of_size(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def _members() -> list[tuple[str, bytes]]:
    """(name, bytes) of a small ImageFolder tree: train as JPEG, test as PNG (exact)."""
    out = []
    for split, n, fmt, ext in (("train", N_TRAIN, "JPEG", "jpg"), ("test", N_TEST, "PNG", "png")):
        for cls in CLASSES:
            for i in range(n):
                out.append((f"tiny/{split}/{cls}/{i:04d}.{ext}", _encode(_pixel_value(cls, i), fmt)))
    out.append(("tiny/README.txt", b"not an image"))
    out.append(("tiny/train/cat/._0000.jpg", b"macOS resource fork, not an image"))
    random.Random(0).shuffle(out)  # the loader must not depend on member order
    return out


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


@pytest.fixture(scope="module")
def tiny_members() -> list[tuple[str, bytes]]:
    return _members()


@pytest.fixture
def tiny_archive(tmp_path: Path, tiny_members) -> Path:
    return _write_tar(tmp_path / "tiny.tar.gz", tiny_members)


def _expected_images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    n = N_TRAIN if split == "train" else N_TEST
    imgs, labels = [], []
    for k, cls in enumerate(sorted(CLASSES)):
        for i in range(n):
            imgs.append(torch.tensor(_pixel_value(cls, i), dtype=torch.uint8).view(3, 1, 1).expand(3, H, W))
            labels.append(k)
    return torch.stack(imgs), torch.tensor(labels)


# ------------------------------------------------------------------ image archives


def test_archive_shapes_labels_and_class_order(tiny_archive, tmp_path):
    ds = D.load_image_archive(tiny_archive, "test", cache_dir=tmp_path / "cache")
    exp_images, exp_labels = _expected_images("test")
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (3 * N_TEST, 3, H, W)
    assert ds.labels.dtype == torch.int64
    assert ds.classes == ("ant", "bee", "cat") and ds.num_classes == 3
    assert ds.name == "tiny" and ds.scale == 255.0 and ds.image_shape == (3, H, W)
    assert torch.equal(ds.labels, exp_labels)
    assert torch.equal(ds.images, exp_images)  # PNG: lossless, order by (class, file)

    train = D.load_image_archive(tiny_archive, "train", cache_dir=tmp_path / "cache")
    exp_images, exp_labels = _expected_images("train")
    assert torch.equal(train.labels, exp_labels)
    # JPEG of a solid colour decodes to within a couple of levels.
    assert (train.images.int() - exp_images.int()).abs().max() <= 3
    # Default normalization statistics are the train split's, for both splits.
    assert ds.mean == train.mean == D.channel_stats(train.images)[0]
    assert ds.std == train.std


def test_archive_cache_created_then_reused_without_decoding(tiny_archive, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = D.load_image_archive(tiny_archive, "train", cache_dir=cache_dir, mean=(0.5,) * 3, std=(0.25,) * 3)
    cache = D.cache_path_for(tiny_archive, "train", cache_dir)
    assert cache == cache_dir / "tiny.tar.gz.train.uint8.pt" and cache.is_file()
    assert not any(p.name.endswith(".tmp") for p in cache_dir.iterdir())  # temp file was renamed

    def no_decoding(data):
        raise AssertionError("decoded although a valid cache exists")

    monkeypatch.setattr(archive_mod, "_decode_one", no_decoding)
    again = D.load_image_archive(tiny_archive, "train", cache_dir=cache_dir, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.classes == first.classes


def test_cache_location_rules(tiny_archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.default_cache_dir() == tmp_path / "xdg" / "pyro_ssvi"
    # Writable data folder: the cache goes next to the archive.
    D.load_image_archive(tiny_archive, "test", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert (tiny_archive.parent / "tiny.tar.gz.test.uint8.pt").is_file()
    # A folder without write bits counts as read-only, even for root.
    ro = tmp_path / "ro"
    ro.mkdir()
    ro_archive = ro / "tiny.tar.gz"
    ro_archive.write_bytes(tiny_archive.read_bytes())
    ro.chmod(0o555)
    try:
        assert D.cache_path_for(ro_archive, "test") == tmp_path / "xdg" / "pyro_ssvi" / "tiny.tar.gz.test.uint8.pt"
        ds = D.load_image_archive(ro_archive, "test", mean=(0.5,) * 3, std=(0.25,) * 3)
        assert len(ds) == 3 * N_TEST
        assert sorted(os.listdir(ro)) == ["tiny.tar.gz"]
        assert (tmp_path / "xdg" / "pyro_ssvi" / "tiny.tar.gz.test.uint8.pt").is_file()
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_fingerprint"])
def test_bad_cache_is_rebuilt(tiny_archive, tmp_path, damage):
    cache_dir = tmp_path / "cache"
    kw = dict(cache_dir=cache_dir, mean=(0.5,) * 3, std=(0.25,) * 3)
    good = D.load_image_archive(tiny_archive, "test", **kw)
    cache = D.cache_path_for(tiny_archive, "test", cache_dir)
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "garbage":
        cache.write_bytes(b"\x00" * 100)
    else:
        payload = torch.load(cache, weights_only=True)
        payload["fingerprint"] = "0" * 64
        torch.save(payload, cache)
    with pytest.warns(UserWarning, match="decoding again"):
        rebuilt = D.load_image_archive(tiny_archive, "test", **kw)
    assert torch.equal(rebuilt.images, good.images) and torch.equal(rebuilt.labels, good.labels)
    payload = torch.load(cache, weights_only=True)  # the cache is whole again
    assert torch.equal(payload["images"], good.images)


def test_changed_archive_is_decoded_again(tiny_archive, tmp_path, tiny_members):
    cache_dir = tmp_path / "cache"
    kw = dict(cache_dir=cache_dir, mean=(0.5,) * 3, std=(0.25,) * 3)
    before = D.load_image_archive(tiny_archive, "test", **kw)
    fewer = [m for m in tiny_members if not m[0].startswith("tiny/test/cat/")]
    _write_tar(tiny_archive, fewer)
    with pytest.warns(UserWarning, match="different archive"):
        after = D.load_image_archive(tiny_archive, "test", **kw)
    assert len(before) == 3 * N_TEST and len(after) == 2 * N_TEST and after.classes == ("ant", "bee")


def test_missing_archive_error(tmp_path):
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(SSVIDataNotFoundError, match="nope.tar.gz") as info:
        D.load_image_archive(missing, "train", cache_dir=tmp_path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, SSVIError)
    assert "<split>/<class>/<image>.jpg" in str(info.value)


def test_corrupt_archives_give_clear_errors(tiny_archive, tmp_path, tiny_members):
    blob = tiny_archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SSVIDataError, match="truncated.tar.gz.*cannot read the archive"):
        D.load_image_archive(truncated, "train", cache_dir=tmp_path / "c")
    not_tar = tmp_path / "not_tar.tar.gz"
    not_tar.write_bytes(b"this is not a tar file at all" * 10)
    with pytest.raises(SSVIDataError, match="not_tar.tar.gz"):
        D.load_image_archive(not_tar, "train", cache_dir=tmp_path / "c")
    broken = [("tiny/test/ant/9999.png", b"\x89PNG broken")]
    bad_image = _write_tar(tmp_path / "bad_image.tar.gz", tiny_members + broken)
    with pytest.raises(SSVIDataError, match="test/ant/9999.png: cannot decode"):
        D.load_image_archive(bad_image, "test", cache_dir=tmp_path / "c")
    odd = _write_tar(tmp_path / "odd_size.tar.gz", [
        ("x/test/a/0.png", _encode((1, 2, 3), "PNG")),
        ("x/test/a/1.png", _png_of_size(3, 3)),
    ])
    with pytest.raises(SSVIDataError, match="same size"):
        D.load_image_archive(odd, "test", cache_dir=tmp_path / "c")
    no_split = _write_tar(tmp_path / "no_split.tar.gz", [("x/valid/a/0.png", _encode((1, 2, 3), "PNG"))])
    with pytest.raises(SSVIDataError, match="no images found for split 'train'"):
        D.load_image_archive(no_split, "train", cache_dir=tmp_path / "c")
    with pytest.raises(SSVIConfigError, match="known: train, test"):
        D.load_image_archive(tiny_archive, "val", cache_dir=tmp_path / "c")


def test_pillow_fallback_decodes_the_same(tiny_archive, tmp_path, monkeypatch):
    fast = D.load_image_archive(tiny_archive, "train", cache_dir=tmp_path / "c1")
    monkeypatch.setattr(archive_mod, "_tv_decode_image", None)  # as if torchvision dropped it
    slow = D.load_image_archive(tiny_archive, "train", cache_dir=tmp_path / "c2")
    assert torch.equal(fast.images, slow.images) and torch.equal(fast.labels, slow.labels)
    bad = _write_tar(tmp_path / "bad.tar.gz", [("x/train/a/0.jpg", b"not a jpeg")])
    with pytest.raises(SSVIDataError, match="cannot decode"):
        D.load_image_archive(bad, "train", cache_dir=tmp_path / "c3")


def test_directory_tree_matches_tar(tiny_archive, tmp_path):
    with tarfile.open(tiny_archive) as tf:
        tf.extractall(tmp_path / "extracted", filter="data")
    from_dir = D.load_image_archive(tmp_path / "extracted", "test", cache_dir=tmp_path / "c1")
    from_tar = D.load_image_archive(tiny_archive, "test", cache_dir=tmp_path / "c2")
    assert torch.equal(from_dir.images, from_tar.images) and torch.equal(from_dir.labels, from_tar.labels)
    assert from_dir.classes == from_tar.classes


# ----------------------------------------------------------------- load_dataset


def test_load_dataset_rejects_unknown_names_and_splits():
    with pytest.raises(SSVIConfigError, match="known: cifar10, cifar100, cifar10_archive, fashion_mnist, digits"):
        D.load_dataset("mnist", split="train")
    with pytest.raises(SSVIConfigError, match="unknown split 'valid'"):
        D.load_dataset("digits", split="valid")


def test_missing_cifar_sources_give_clear_errors(tmp_path):
    with pytest.raises(SSVIDataNotFoundError, match="cifar-10-batches-py"):
        D.load_dataset("cifar10", tmp_path, split="test")
    with pytest.raises(SSVIDataNotFoundError, match="cifar10-jpeg.tar.gz"):
        D.load_dataset("cifar10_archive", tmp_path, split="test")


def test_load_cifar_converts_torchvision_hwc_to_nchw(monkeypatch):
    from torchvision import datasets

    hwc = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)

    class FakeCIFAR100:  # stands in for the pickled batches, which are not available offline
        base_folder = "cifar-100-python"

        def __init__(self, root, train, download):
            self.data, self.targets, self.classes = hwc, [0, 1, 2, 50, 99], [f"c{i}" for i in range(100)]

    monkeypatch.setattr(datasets, "CIFAR100", FakeCIFAR100)
    ds = D.load_dataset("cifar100", "/nonexistent", split="test")
    assert ds.images.shape == (5, 3, 32, 32) and ds.images.is_contiguous()
    assert torch.equal(ds.images, torch.from_numpy(hwc).permute(0, 3, 1, 2))
    assert ds.labels.tolist() == [0, 1, 2, 50, 99] and ds.num_classes == 100 and ds.name == "cifar100"


def test_cifar10_archive_checks_the_class_names(tiny_archive, tmp_path):
    with pytest.raises(SSVIDataError, match="not CIFAR-10's"):
        D.load_dataset("cifar10_archive", tiny_archive, split="test", cache_dir=tmp_path)


# ------------------------------------------------------------------ Fashion-MNIST


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_hand_written_file(tmp_path):
    # Header by hand: magic 00 00 08 03, dims 2, 3, 4 (big-endian uint32), then 24 bytes.
    raw = bytes([0, 0, 8, 3]) + bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + bytes(range(24))
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        t = D.read_idx(tmp_path / name)
        assert t.dtype == torch.uint8 and t.shape == (2, 3, 4)
        assert torch.equal(t, torch.arange(24, dtype=torch.uint8).view(2, 3, 4))


@pytest.mark.parametrize(
    "raw, message",
    [
        (bytes([0, 1, 8, 1, 0, 0, 0, 1, 7]), "bad magic"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0\0\0\0", "unsupported"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "shape \\(5,\\)"),
        (bytes([0, 0, 8, 2, 0, 0]), "truncated idx header"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, raw, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(SSVIDataError, match=message):
        D.read_idx(path)


def test_fashion_mnist_from_hand_written_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        labels = rng.integers(0, 10, size=(n,))
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))  # plain works too
        ds = D.load_fashion_mnist(tmp_path, "train" if prefix == "train" else "test")
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
        assert ds.num_classes == 10 and len(ds.classes) == 10


def test_fashion_mnist_missing_root_says_how_to_get_it(tmp_path):
    with pytest.raises(SSVIDataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        D.load_dataset("fashion_mnist", tmp_path / "empty", split="train")


@pytest.mark.skipif(not (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST idx files not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_files():
    train = D.load_dataset("fashion_mnist", split="train")
    test = D.load_dataset("fashion_mnist", split="test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    mean, std = D.channel_stats(train.images)
    assert train.mean == pytest.approx(mean, abs=1e-6) and train.std == pytest.approx(std, abs=1e-6)


# ------------------------------------------------------------------------- digits


def test_digits_split_sizes_stratification_determinism():
    train, test = D.load_digits("train"), D.load_digits("test")
    assert len(train) == 1437 and len(test) == 360
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 16 and train.scale == 16.0
    # Stratified: each class's test share is within one image of 20 %.
    full = torch.bincount(train.labels, minlength=10) + torch.bincount(test.labels, minlength=10)
    assert (torch.bincount(test.labels, minlength=10) - 0.2 * full).abs().max() <= 1
    # Together the two splits are exactly the 1797 images (as a multiset).
    from sklearn.datasets import load_digits

    sk = load_digits()
    key = lambda img, y: (img.astype(np.uint8).tobytes(), int(y))  # noqa: E731
    ours = Counter(key(i.numpy(), y) for ds in (train, test) for i, y in zip(ds.images[:, 0], ds.labels))
    assert ours == Counter(key(i, y) for i, y in zip(sk.images, sk.target))
    # Deterministic; a different seed gives a different split.
    assert torch.equal(D.load_digits("test").images, test.images)
    assert not torch.equal(D.load_digits("test", seed=1).labels, test.labels)
    assert train.mean == D.channel_stats(train.images, scale=16.0)[0] == test.mean


# ------------------------------------------------------------------- DeviceLoader


def _toy(n: int = 10, c: int = 3, h: int = 5, w: int = 7, seed: int = 0) -> D.ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return D.ArrayDataset(
        images=torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8),
        labels=torch.arange(n),  # label = index, so batches show which examples they hold
        num_classes=n,
        mean=tuple(0.1 * (i + 1) for i in range(c)),
        std=tuple(0.2 + 0.05 * i for i in range(c)),
        name="toy",
    )


def _normalize(images: torch.Tensor, ds: D.ArrayDataset) -> torch.Tensor:
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return (images.double() / ds.scale - mean) / std


def test_loader_batch_count_and_each_example_once():
    ds = _toy(10)
    for drop_last, sizes in ((False, [3, 3, 3, 1]), (True, [3, 3, 3])):
        loader = D.DeviceLoader(ds, 3, device="cpu", drop_last=drop_last, generator=0)
        assert len(loader) == len(sizes)
        for _ in range(2):  # two epochs, two different orders
            batches = list(loader)
            assert [len(y) for _, y in batches] == sizes
            seen = torch.cat([y for _, y in batches])
            if not drop_last:
                assert torch.equal(seen.sort().values, torch.arange(10))
            assert len(set(seen.tolist())) == len(seen)
    shuffled = torch.cat([y for _, y in D.DeviceLoader(_toy(50), 7, device="cpu", generator=1)])
    assert not torch.equal(shuffled, torch.arange(50))
    ordered = torch.cat([y for _, y in D.DeviceLoader(_toy(50), 7, device="cpu", shuffle=False)])
    assert torch.equal(ordered, torch.arange(50))


def test_loader_normalization_matches_hand_computation():
    ds = _toy(10)
    loader = D.DeviceLoader(ds, 4, device="cpu", generator=3)
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape == (len(y), 3, 5, 7)
        torch.testing.assert_close(x.double(), _normalize(ds.images[y], ds), atol=1e-5, rtol=0)
    # One value by hand: pixel 200 of channel 1 -> (200/255 - 0.2) / 0.25.
    one = D.ArrayDataset(torch.full((1, 3, 1, 1), 200, dtype=torch.uint8), torch.zeros(1, dtype=torch.long),
                         1, (0.1, 0.2, 0.3), (0.2, 0.25, 0.3), "one")
    x, _ = next(iter(D.DeviceLoader(one, 1, device="cpu")))
    assert x[0, 1, 0, 0].item() == pytest.approx((200 / 255 - 0.2) / 0.25, abs=1e-6)
    # Digits divide by 16, not 255.
    digits = D.load_digits("test")
    x, y = next(iter(D.DeviceLoader(digits, 64, device="cpu", shuffle=False)))
    torch.testing.assert_close(x.double(), _normalize(digits.images[:64], digits), atol=1e-5, rtol=0)
    assert x.shape == (64, 1, 8, 8)


def _slow_crop_flip(images, offsets, flips, pad):
    """Reference: one image at a time, pad, slice, flip."""
    _, _, h, w = images.shape
    out = []
    for img, (dy, dx), flip in zip(images, offsets.tolist(), flips.tolist()):
        crop = F.pad(img, (pad, pad, pad, pad))[:, dy:dy + h, dx:dx + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


@pytest.mark.parametrize("pad", [0, 1, 3, 6])
def test_crop_flip_matches_slow_reference(pad):
    g = torch.Generator().manual_seed(pad)
    images = torch.randint(0, 256, (16, 3, 5, 7), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 2 * pad + 1, (16, 2), generator=g)
    offsets[0] = 0  # include both extreme corners
    offsets[1] = 2 * pad
    flips = torch.randint(0, 2, (16,), generator=g).bool()
    assert torch.equal(D.crop_flip(images, offsets, flips, pad), _slow_crop_flip(images, offsets, flips, pad))
    index = torch.tensor([5, 5, 0, 15, 3])
    assert torch.equal(
        D.crop_flip(images, offsets[:5], flips[:5], pad, index=index),
        _slow_crop_flip(images[index], offsets[:5], flips[:5], pad),
    )


def test_loader_augmentation_is_a_crop_and_flip_of_the_right_image():
    ds, pad = _toy(40), 2
    candidates = {}
    for i in range(len(ds)):  # every crop offset x flip of image i, normalized like the loader
        dy, dx = torch.meshgrid(torch.arange(2 * pad + 1), torch.arange(2 * pad + 1), indexing="ij")
        offs = torch.stack([dy.flatten(), dx.flatten()], 1).repeat(2, 1)
        flips = torch.arange(2).repeat_interleave(len(offs) // 2).bool()
        raw = _slow_crop_flip(ds.images[i].expand(len(offs), -1, -1, -1), offs, flips, pad)
        candidates[i] = (_normalize(raw, ds), flips)
    loader = D.DeviceLoader(ds, 16, device="cpu", augment=True, pad=pad, generator=0)
    used_flips = set()
    for x, y in loader:
        for img, label in zip(x.double(), y.tolist()):
            cands, flips = candidates[label]
            close = ((cands - img).abs().amax(dim=(1, 2, 3)) < 1e-5).nonzero().flatten()
            assert len(close) >= 1, "augmented image is no crop/flip of its source"
            used_flips.update(flips[close].tolist())
    assert used_flips == {False, True}
    a = torch.cat([x for x, _ in D.DeviceLoader(ds, 16, device="cpu", augment=True, pad=pad, generator=5)])
    b = torch.cat([x for x, _ in D.DeviceLoader(ds, 16, device="cpu", augment=True, pad=pad, generator=5)])
    c = torch.cat([x for x, _ in D.DeviceLoader(ds, 16, device="cpu", augment=True, pad=pad, generator=6)])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loader_default_generator_follows_torch_manual_seed():
    ds = _toy(30)
    torch.manual_seed(123)
    a = [y for _, y in D.DeviceLoader(ds, 8, device="cpu")]
    torch.manual_seed(123)
    b = [y for _, y in D.DeviceLoader(ds, 8, device="cpu")]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_loader_dtype_and_channels_last():
    ds = _toy(6, h=4, w=4)
    x, _ = next(iter(D.DeviceLoader(ds, 6, device="cpu", dtype=torch.bfloat16, channels_last=True)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(SSVIConfigError):
        D.DeviceLoader(ds, 0, device="cpu")


def _run(loader, n_batches):
    """The next ``n_batches`` batches, crossing epoch boundaries."""
    out = []
    while len(out) < n_batches:
        for batch in loader:
            out.append(batch)
            if len(out) == n_batches:
                return out, loader.state_dict()
    return out, loader.state_dict()


@pytest.mark.parametrize("stop", [2, 4, 5])  # mid-epoch, at the last batch, after a full epoch (len 4)
def test_loader_state_dict_round_trip_resumes_bit_exactly(tmp_path, stop):
    ds = _toy(23)
    kw = dict(device="cpu", augment=True, pad=1)
    reference, _ = _run(D.DeviceLoader(ds, 6, generator=7, **kw), 11)

    first = D.DeviceLoader(ds, 6, generator=7, **kw)
    batches, _ = [], None
    it = iter(first)
    for _ in range(stop if stop <= len(first) else len(first)):
        batches.append(next(it))
    if stop > len(first):  # finish the epoch, then one more batch of the next
        assert next(it, None) is None
        it = iter(first)
        batches.append(next(it))
    state = first.state_dict()
    torch.save(state, tmp_path / "state.pt")  # must survive a checkpoint file
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    # Keep the saved loader going too: both must agree with the uninterrupted run.
    batches += [next(it) for _ in range(len(first) - (stop % len(first) or len(first)))]

    resumed = D.DeviceLoader(ds, 6, generator=999, **kw)  # different seed: the state must win
    resumed.load_state_dict(state)
    rest, _ = _run(resumed, 11 - stop)
    assert resumed.epoch == (11 + 3) // 4
    for (xa, ya), (xb, yb) in zip(reference, batches[:stop] + rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    for (xa, ya), (xb, yb) in zip(reference, batches):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_breaking_out_of_an_epoch_starts_a_new_one():
    loader = D.DeviceLoader(_toy(20), 5, device="cpu", generator=0)
    for _ in loader:
        break
    assert loader.state_dict()["position"] == 0
    assert len(list(loader)) == 4 and loader.epoch == 2
    stale = iter(loader)
    next(stale)
    live = iter(loader)  # a new epoch while `stale` is still referenced
    next(live)
    next(live)
    del stale  # closing the old iterator must not reset the live epoch
    assert loader.state_dict()["position"] == 2 and loader.epoch == 4
    with pytest.raises(SSVIConfigError, match="examples"):
        D.DeviceLoader(_toy(21), 5, device="cpu").load_state_dict(loader.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda():
    ds = _toy(50)
    cpu = torch.cat([x for x, _ in D.DeviceLoader(ds, 8, device="cpu", shuffle=False)])
    gpu_loader = D.DeviceLoader(ds, 8, device="cuda", shuffle=False)
    gpu = torch.cat([x for x, _ in gpu_loader])
    assert gpu.is_cuda and gpu_loader.generator.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)
    aug = D.DeviceLoader(ds, 8, device="cuda", augment=True, generator=0)
    x, y = next(iter(aug))
    assert x.is_cuda and y.is_cuda and y.dtype == torch.int64
    state = aug.state_dict()
    nxt = next(iter(aug))  # note: a new iter() after abandoning starts a new epoch
    aug.load_state_dict(state)
    again = next(iter(aug))
    assert torch.equal(nxt[0], again[0]) and torch.equal(nxt[1], again[1])


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} not present")
def test_full_shared_cifar10_archive(tmp_path):
    t0 = time.perf_counter()
    train = D.load_dataset("cifar10_archive", SHARED_CIFAR, split="train", cache_dir=tmp_path)
    test = D.load_dataset("cifar10_archive", SHARED_CIFAR.parent, split="test", cache_dir=tmp_path)
    decode_s = time.perf_counter() - t0
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert train.classes == D.CIFAR10_CLASSES and train.num_classes == 10
    # The JPEG copy's own statistics are close to the CIFAR-10 constants used to normalize it.
    mean, std = D.channel_stats(train.images)
    assert mean == pytest.approx(train.mean, abs=0.01) and std == pytest.approx(train.std, abs=0.01)
    t0 = time.perf_counter()
    cached = D.load_dataset("cifar10_archive", SHARED_CIFAR, split="train", cache_dir=tmp_path)
    cached_s = time.perf_counter() - t0
    assert torch.equal(cached.images, train.images)
    print(f"decode both splits: {decode_s:.1f} s, cached train load: {cached_s:.2f} s")
    assert cached_s < decode_s
