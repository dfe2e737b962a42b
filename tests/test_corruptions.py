"""The CIFAR-10-C-style corruptions: shapes, range, determinism, severity ordering, and the
published constants checked against hand-computed or independently computed references."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_ssvi.corruptions import CORRUPTIONS, FAMILIES, PARAMS, corrupt, plasma_fractal
from pyro_ssvi.errors import SSVIConfigError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(shape, seed=1):
    return torch.rand(shape, generator=_gen(seed))


SHAPES = [(3, 3, 32, 32), (2, 1, 28, 28), (16, 1, 8, 8)]  # CIFAR, Fashion-MNIST, digits (enough values to flip)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_keeps_shape_and_range_and_is_deterministic(name):
    for shape in SHAPES:
        x = _images(shape)
        for severity in (1, 5):
            y = corrupt(x, name, severity, _gen(7))
            assert y.shape == x.shape and y.dtype == x.dtype
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
            assert torch.equal(y, corrupt(x, name, severity, _gen(7))), "same generator state, same output"
            assert not torch.equal(y, x), f"{name} severity {severity} changed nothing on {shape}"
    x = _images(SHAPES[0])
    assert torch.equal(x, _images(SHAPES[0])), "the input is not modified in place"


def test_the_families_cover_the_four_cifar10c_groups_and_every_corruption():
    assert set(FAMILIES) == {"noise", "blur", "weather", "digital"}
    assert sorted(n for names in FAMILIES.values() for n in names) == sorted(CORRUPTIONS) == sorted(PARAMS)
    assert all(len(PARAMS[n]) == 5 for n in PARAMS)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_damage_grows_with_severity(name):
    # Mean absolute change over a batch of mid-grey-ish natural-like images (smooth plus texture);
    # pixelate's 8x8 case rounds two severities to the same size, so it is checked on 32x32 only.
    base = torch.nn.functional.avg_pool2d(_images((16, 3, 36, 36)), 5, stride=1)  # smooth, values near 0.5
    x = (base - 0.5) * 3 + 0.5
    x = x.clamp(0.05, 0.95)
    damage = [float((corrupt(x, name, s, _gen(3)) - x).abs().mean()) for s in range(1, 6)]
    assert all(a <= b + 1e-6 for a, b in zip(damage, damage[1:])), (name, damage)
    assert damage[-1] > damage[0], (name, damage)


def test_gaussian_noise_has_the_published_std():
    x = torch.full((64, 3, 32, 32), 0.5)  # far from the clip at 0 and 1 (0.5 is 5 sigma away at 0.10)
    for severity, c in zip(range(1, 6), (0.04, 0.06, 0.08, 0.09, 0.10)):
        noise = corrupt(x, "gaussian_noise", severity, _gen(severity)) - x
        assert abs(float(noise.std()) - c) < 0.02 * c and abs(float(noise.mean())) < 0.002


def test_shot_noise_is_poisson_with_the_published_photon_counts():
    x = torch.full((64, 1, 32, 32), 0.4)
    for severity, c in zip(range(1, 6), (500, 250, 100, 75, 50)):
        y = corrupt(x, "shot_noise", severity, _gen(severity))
        counts = y * c  # Poisson(0.4 c): integer counts, mean = variance = 0.4 c
        assert torch.allclose(counts, counts.round(), atol=1e-3)
        assert abs(float(counts.mean()) / (0.4 * c) - 1) < 0.01 and abs(float(counts.var()) / (0.4 * c) - 1) < 0.05


def test_impulse_noise_flips_the_published_fraction_half_to_salt_half_to_pepper():
    x = torch.full((64, 3, 32, 32), 0.5)
    for severity, c in zip(range(1, 6), (0.01, 0.02, 0.03, 0.05, 0.07)):
        y = corrupt(x, "impulse_noise", severity, _gen(severity))
        salt, pepper = float((y == 1).double().mean()), float((y == 0).double().mean())
        assert abs(salt + pepper - c) < 0.1 * c and abs(salt - pepper) < 0.15 * c
        assert torch.all((y == 0) | (y == 1) | (y == 0.5))


def test_gaussian_blur_matches_a_hand_computed_kernel():
    # sigma 1 (severity 5), truncate 4: radius 4, weights exp(-t^2/2) normalised, separable; an
    # impulse in the middle of a large image comes out as the outer product of the 1-D kernel.
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    y = corrupt(x, "gaussian_blur", 5, _gen())
    t = np.arange(-4, 5)
    k = np.exp(-t**2 / 2.0)
    k /= k.sum()
    np.testing.assert_allclose(y[0, 0, 6:15, 6:15].numpy(), np.outer(k, k), rtol=1e-5, atol=1e-7)
    assert float(y[0, 0, :6].abs().max()) == 0.0  # nothing beyond the truncation radius


def test_defocus_blur_kernel_at_severity_1_is_the_published_alias_blurred_point():
    # radius 0.3 covers only the centre of the 17x17 grid; OpenCV's 3x3 Gaussian of sigma 0.4
    # then spreads it: 1-D weights (e^-3.125, 1, e^-3.125) / (1 + 2 e^-3.125).
    x = torch.zeros(1, 3, 9, 9)
    x[:, :, 4, 4] = 1.0
    y = corrupt(x, "defocus_blur", 1, _gen())
    a = np.exp(-1 / (2 * 0.4**2))
    k = np.array([a, 1, a]) / (1 + 2 * a)
    for c in range(3):
        np.testing.assert_allclose(y[0, c, 3:6, 3:6].numpy(), np.outer(k, k), rtol=1e-5)
    # severity 5: radius 1.5 is the full 3x3 square (9 pixels, each 1/9 before the slight alias blur)
    y5 = corrupt(x, "defocus_blur", 5, _gen())
    assert abs(float(y5[0, 0, 4, 4]) - 1 / 9) < 0.01 and abs(float(y5[0, 0, 3, 3]) - 1 / 9) < 0.01


def test_contrast_and_brightness_follow_their_formulas():
    x = _images((2, 3, 8, 8)) * 0.6 + 0.2
    m = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(corrupt(x, "contrast", 2, _gen()), ((x - m) * 0.5 + m).clamp(0, 1), atol=1e-6)
    gray = _images((2, 1, 8, 8)) * 0.8
    assert torch.allclose(corrupt(gray, "brightness", 5, _gen()), (gray + 0.3).clamp(max=1), atol=1e-6)  # value + 0.3
    # colour: hue and saturation kept, so RGB scales by (V + c) / V with V = max over channels
    rgb = torch.tensor([0.2, 0.4, 0.5]).view(1, 3, 1, 1)
    out = corrupt(rgb, "brightness", 1, _gen()).flatten()
    assert torch.allclose(out, torch.tensor([0.2, 0.4, 0.5]) * 0.55 / 0.5, atol=1e-6)
    black = corrupt(torch.zeros(1, 3, 1, 1), "brightness", 2, _gen()).flatten()
    assert torch.allclose(black, torch.full((3,), 0.1))


def test_pixelate_and_jpeg_match_pil_directly():
    x = (_images((1, 3, 32, 32)) * 255).round() / 255
    u8 = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    # jpeg quality 40 (severity 5): PIL's own round trip of the same 8-bit image
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=40)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue()))).astype(np.float32) / 255
    np.testing.assert_allclose(corrupt(x, "jpeg_compression", 5, _gen())[0].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    # pixelate 0.65 (severity 5): box down to 20x20, box up to 32x32, per channel
    y = corrupt(x, "pixelate", 5, _gen())
    ch = Image.fromarray(x[0, 1].numpy(), mode="F").resize((20, 20), Image.BOX).resize((32, 32), Image.BOX)
    np.testing.assert_allclose(y[0, 1].numpy(), np.asarray(ch), atol=1e-6)


def test_plasma_fractal_is_a_normalised_deterministic_height_map_and_fog_brightens():
    maps = plasma_fractal(3, 32, 2.0, _gen(5))
    assert maps.shape == (3, 32, 32)
    assert torch.equal(maps.amin(dim=(1, 2)), torch.zeros(3, dtype=maps.dtype))
    assert torch.allclose(maps.amax(dim=(1, 2)), torch.ones(3, dtype=maps.dtype))
    assert torch.equal(maps, plasma_fractal(3, 32, 2.0, _gen(5))) and not torch.equal(maps[0], maps[1])
    # smoother with a faster wibble decay: neighbouring values differ less
    rough, smooth = plasma_fractal(8, 32, 1.75, _gen(1)), plasma_fractal(8, 32, 3.0, _gen(1))
    assert (smooth.diff(dim=2).abs().mean() < rough.diff(dim=2).abs().mean())
    x = torch.full((2, 3, 32, 32), 0.3)
    x[:, :, 0, 0] = 0.8  # max value 0.8
    fogged = corrupt(x, "fog", 1, _gen())  # (x + 0.2 f) * 0.8 / 1.0, f in [0, 1]
    assert float(fogged[:, :, 1:, 1:].min()) >= 0.3 * 0.8 - 1e-6 and float(fogged.max()) <= 1.0 * 0.8 + 1e-6


def test_bad_inputs_name_what_was_expected():
    x = _images((1, 3, 8, 8))
    with pytest.raises(SSVIConfigError, match="unknown corruption 'snow'.*gaussian_noise"):
        corrupt(x, "snow", 1, _gen())
    with pytest.raises(SSVIConfigError, match="severity must be an integer 1-5"):
        corrupt(x, "fog", 6, _gen())
    with pytest.raises(SSVIConfigError, match="C = 1 or 3"):
        corrupt(_images((1, 2, 8, 8)), "fog", 1, _gen())
