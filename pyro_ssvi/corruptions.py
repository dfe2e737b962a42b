"""Image corruptions in the style of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), on torch tensors.

Each corruption takes images ``x`` as float ``[N, C, H, W]`` in ``[0, 1]`` pixel units (before any
normalisation; C = 1 or 3, any H, W), a severity 1-5 and a ``torch.Generator``, and returns float
``[N, C, H, W]`` in ``[0, 1]``. The same generator state gives the same output.

The severity constants are the published ones of the CIFAR-10-C generator (``make_cifar_c.py`` in
github.com/hendrycks/robustness), in :data:`PARAMS`; the code is this project's own, written for
batched tensors. It is **not** the official CIFAR-10-C file (which cannot be downloaded here), and
it differs from it in these ways: the random draws differ (torch, not numpy), the outputs are not
quantised by the functions themselves, blur kernels follow the published recipe (skimage's
``gaussian`` with ``truncate=4``; the anti-aliased disk of ``defocus_blur``) but are applied with
torch convolutions, and on images other than 32x32 the constants stay in pixels (a sigma-1 blur on
an 8x8 digit is relatively stronger than on CIFAR). Covered, by family (CIFAR-10-C's name):

- noise: ``gaussian_noise``, ``shot_noise``, ``impulse_noise``, ``speckle_noise`` (an extra of CIFAR-10-C);
- blur: ``defocus_blur``, ``gaussian_blur`` (an extra);
- weather: ``fog`` (a diamond-square plasma fractal), ``brightness``;
- digital: ``contrast``, ``pixelate``, ``jpeg_compression``.

Not covered: glass, motion and zoom blur, snow, frost, spatter, saturate, elastic transform
(they need ImageMagick, frost photographs, or per-pixel loops).

>>> x = torch.rand(4, 3, 32, 32)
>>> y = corrupt(x, "gaussian_noise", 3, torch.Generator().manual_seed(0))   # std 0.08, clipped
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Callable, Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SSVIConfigError

__all__ = ["CORRUPTIONS", "FAMILIES", "PARAMS", "corrupt", "plasma_fractal", "select_corruptions"]

#: Published severity constants (severity 1..5) of the CIFAR-10-C generator.
PARAMS: Dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std of additive N(0, c^2)
    "shot_noise": (500, 250, 100, 75, 50),  # Poisson photons per unit intensity (fewer: noisier)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of values set to 0 or 1 (salt & pepper)
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # std of multiplicative x * N(0, c^2)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # (disk radius, alias sigma) px
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # (fog strength, fractal wibble decay)
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the deviation from the per-channel mean
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # box-downsampling factor, then box-upsampling back
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
}

FAMILIES: Dict[str, Tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "gaussian_blur"),
    "weather": ("fog", "brightness"),
    "digital": ("contrast", "pixelate", "jpeg_compression"),
}


# ----------------------------------------------------------------------------------- noise


def _gaussian_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    return x + c * torch.randn(x.shape, generator=g, dtype=x.dtype)


def _shot_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    # skimage's random_noise(mode="s&p", amount=c): each value independently, half salt, half pepper.
    flipped = torch.rand(x.shape, generator=g) < c
    salt = torch.rand(x.shape, generator=g) < 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


def _speckle_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    return x + x * c * torch.randn(x.shape, generator=g, dtype=x.dtype)


# ------------------------------------------------------------------------------------ blur


def _gaussian_1d(sigma: float, radius: int) -> Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate each channel of ``x`` [N, C, H, W] with the odd-sized 2-D ``kernel``; borders by ``mode``."""
    kh, kw = kernel.shape
    c = x.shape[1]
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=mode)
    weight = kernel.to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


def _gaussian_blur(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    # skimage.filters.gaussian: scipy's gaussian_filter, truncate 4 (radius int(4 sigma + 0.5)), mode "nearest".
    k = _gaussian_1d(sigma, int(4.0 * sigma + 0.5))
    return _filter(x, torch.outer(k, k), mode="replicate")


def _disk(radius: float, alias_blur: float) -> Tensor:
    """The CIFAR-10-C defocus kernel: a normalised aliased disk on a 17x17 grid, smoothed by a
    3x3 Gaussian of sigma ``alias_blur`` (OpenCV's GaussianBlur, reflect-101 borders), then
    trimmed to its non-zero support (so it also fits 8x8 images)."""
    t = torch.arange(-8, 9, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).double()
    disk = disk / disk.sum()
    k = _gaussian_1d(alias_blur, 1)
    disk = _filter(disk[None, None], torch.outer(k, k), mode="reflect")[0, 0]
    nz = disk.abs().sum(0).nonzero()
    half = max(8 - int(nz.min()), int(nz.max()) - 8)  # symmetric around the centre
    return disk[8 - half: 9 + half, 8 - half: 9 + half]


def _defocus_blur(x: Tensor, c: tuple, g: torch.Generator) -> Tensor:
    return _filter(x, _disk(*c), mode="reflect")  # OpenCV filter2D's default border: reflect-101


# --------------------------------------------------------------------------------- weather


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, g: torch.Generator) -> Tensor:
    """``n`` diamond-square height maps [n, mapsize, mapsize] in [0, 1] (mapsize a power of two),
    as CIFAR-10-C's ``plasma_fractal`` (wibble starts at 100 and is divided by ``wibbledecay``
    per level; each new point is the mean of its four neighbours (wrapping) plus
    ``wibble * U(-wibble, wibble)``)."""
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise SSVIConfigError(f"plasma_fractal: mapsize must be a power of two >= 2, got {mapsize}")
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        return total / 4 + wibble * (torch.rand(total.shape, generator=g, dtype=torch.float64) * 2 - 1) * wibble

    while step >= 2:
        h = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + corners.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, h::step, h::step] = wibbled_mean(square)
        centres, corners = m[:, h::step, h::step], m[:, 0::step, 0::step]
        m[:, 0::step, h::step] = wibbled_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        m[:, h::step, 0::step] = wibbled_mean(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step, wibble = h, wibble / wibbledecay
    low = m.amin(dim=(1, 2), keepdim=True)
    m = m - low
    return m / m.amax(dim=(1, 2), keepdim=True)


def _fog(x: Tensor, c: tuple, g: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))  # 32 for CIFAR, as published
    fractal = plasma_fractal(n, size, c[1], g)[:, None, :h, :w].to(x.dtype)
    top = x.amax(dim=(1, 2, 3), keepdim=True)  # each image's brightest value, before the fog
    return (x + c[0] * fractal) * top / (top + c[0])


def _brightness(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    # HSV value + c, hue and saturation kept: RGB scales by V'/V (V = max over channels);
    # black (V = 0, saturation 0) becomes grey V'. For one channel this is x + c.
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))


# --------------------------------------------------------------------------------- digital


def _contrast(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def _per_image_pil(x: Tensor, fn: Callable) -> Tensor:
    return torch.stack([fn(img) for img in x])


def _pixelate(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    from PIL import Image

    h, w = x.shape[2:]
    small = (max(1, int(w * c)), max(1, int(h * c)))  # PIL sizes are (width, height)

    def one(img: Tensor) -> Tensor:  # float 'F' images: no 8-bit rounding in between
        chans = [Image.fromarray(ch.float().numpy(), mode="F").resize(small, Image.BOX).resize((w, h), Image.BOX)
                 for ch in img]
        return torch.stack([torch.from_numpy(np.asarray(ch).copy()) for ch in chans])

    return _per_image_pil(x, one).to(x.dtype)


def _jpeg_compression(x: Tensor, c: int, g: torch.Generator) -> Tensor:
    from PIL import Image

    def one(img: Tensor) -> Tensor:
        u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        pil = Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8, mode="L" if u8.shape[2] == 1 else "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(c))
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue()))).copy()
        return torch.from_numpy(out.reshape(*out.shape[:2], -1)).permute(2, 0, 1)

    return _per_image_pil(x, one).to(x.dtype) / 255


CORRUPTIONS: Dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise, "defocus_blur": _defocus_blur, "gaussian_blur": _gaussian_blur,
    "fog": _fog, "brightness": _brightness, "contrast": _contrast, "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}


def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator) -> Tensor:
    """``x`` (float [N, C, H, W] in [0, 1], on CPU) corrupted by ``name`` at ``severity`` (1-5),
    clipped to [0, 1]; draws come from ``generator`` only.

    :raises SSVIConfigError: unknown ``name``, severity outside 1-5, or ``x`` not [N, C, H, W]
        with C in (1, 3).
    """
    if name not in CORRUPTIONS:
        raise SSVIConfigError(f"unknown corruption {name!r}; expected one of: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise SSVIConfigError(f"corruption severity must be an integer 1-5, got {severity!r}")
    if x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        raise SSVIConfigError(f"corrupt: expected float images [N, C, H, W] with C = 1 or 3, got "
                              f"{x.dtype} {tuple(x.shape)}")
    return CORRUPTIONS[name](x, PARAMS[name][severity - 1], generator).clamp(0, 1)


def select_corruptions(spec) -> Tuple[str, ...]:
    """The corruption names ``eval.shift`` asks for (``all``, families, names, or a list of them),
    in :data:`CORRUPTIONS` order; ``()`` for null.

    :raises SSVIConfigError: a name that is neither a corruption nor a family, or an empty list.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        items = [spec]
    else:
        # (a Hydra list is a Sequence too)
        items = list(spec) if isinstance(spec, Sequence) else []
    if not items:
        raise SSVIConfigError(
            f"eval.shift={spec!r} is not allowed; expected null, all, a family ({', '.join(FAMILIES)}), a corruption "
            "or a list of those"
        )
    chosen = set()
    for item in items:
        if item == "all":
            chosen.update(CORRUPTIONS)
        elif item in FAMILIES:
            chosen.update(FAMILIES[item])
        elif item in CORRUPTIONS:
            chosen.add(item)
        else:
            raise SSVIConfigError(
                f"eval.shift: unknown corruption {item!r}; expected all, a family ({', '.join(FAMILIES)}) or one of "
                f"{', '.join(CORRUPTIONS)}"
            )
    return tuple(name for name in CORRUPTIONS if name in chosen)
