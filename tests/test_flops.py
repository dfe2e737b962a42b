"""pyro_ssvi.flops against counts done by hand."""

import pytest
import torch
from torch import nn

from pyro_ssvi import MaskedAutoNormal, SSVIConfigError, models
from pyro_ssvi.flops import layer_macs, site_densities, training_flops
from pyro_ssvi.models import BayesConv2d, BayesianClassifier, BayesLinear


def one_conv_net(groups: int = 1) -> BayesianClassifier:
    # 4 -> 6 channels, 3x3 kernel, stride 2, padding 1 on a 5x5 input: 3x3 output.
    return BayesianClassifier(nn.Sequential(BayesConv2d(4, 6, 3, stride=2, padding=1, groups=groups), nn.Flatten()))


def test_linear_macs_by_hand():
    model = BayesianClassifier(nn.Sequential(nn.Flatten(), BayesLinear(5, 3)))
    # 5 inputs x 3 outputs = 15 MACs per example, whatever the batch.
    assert layer_macs(model, torch.zeros(1, 5)) == {"1.weight": 15}
    assert layer_macs(model, torch.zeros(7, 5)) == {"1.weight": 15}


@pytest.mark.parametrize("groups, expected", [(1, 3 * 3 * 6 * 4 * 3 * 3), (2, 3 * 3 * 6 * 2 * 3 * 3)])
def test_conv_macs_by_hand(groups, expected):
    # out_h * out_w * out_c * (in_c / groups) * kh * kw: 3*3*6*4*9 = 1944; groups=2 halves it.
    assert layer_macs(one_conv_net(groups), torch.zeros(2, 4, 5, 5)) == {"0.weight": expected}


def test_training_flops_one_layer_by_hand():
    model = BayesianClassifier(nn.Sequential(nn.Flatten(), BayesLinear(4, 3)))
    x = torch.zeros(2, 4)
    guide = MaskedAutoNormal(model, sparsity=0.75, seed=0)
    guide(x, torch.zeros(2, dtype=torch.long))
    assert guide.sites["1.weight"].num_active == 3  # round(0.25 * 12)
    # 10 steps, batch 2, ΔT = 3 until step 10: updates at t = 3, 6, 9.
    r = training_flops(model, guide, x, num_steps=10, batch_size=2, update_interval=3, update_end=1.0)
    m = 12  # MACs per example
    assert r["num_updates"] == 3
    assert r["forward_macs_per_example"] == m
    # dense VI: 2 LRT ops x 2 FLOPs/MAC x 3 (forward + backward) = 12 FLOPs per MAC.
    assert r["dense_vi_flops"] == 10 * 2 * 12 * m  # 2880
    # theoretical: at density 1/4, plus one dense weight-gradient op (2 FLOPs/MAC) per update.
    assert r["ssvi_theoretical_flops"] == pytest.approx(10 * 2 * 12 * m * 0.25 + 3 * 2 * 2 * m)  # 864
    # executed: 7 dense LRT steps + 3 update steps at sampled weights (one op: 6 FLOPs/MAC).
    assert r["ssvi_executed_flops"] == 7 * 2 * 12 * m + 3 * 2 * 6 * m  # 2448
    assert r["relative_theoretical"] == pytest.approx(864 / 2880)
    assert r["relative_executed"] == pytest.approx(2448 / 2880)


def test_dense_guide_has_no_updates_and_ratio_one():
    model = one_conv_net()
    x = torch.zeros(1, 4, 5, 5)
    r = training_flops(model, 1.0, x, num_steps=50, batch_size=4, update_interval=5)
    assert r["num_updates"] == 0
    assert r["relative_theoretical"] == 1.0 and r["relative_executed"] == 1.0


def test_float_density_keeps_stem_dense():
    model = models.resnet18(width=0.125)
    dens = site_densities(model, 0.1)
    assert dens["conv1.weight"] == 1.0
    assert sum(abs(d - 0.1) < 0.01 for d in dens.values()) == 20  # rounding on small shortcuts
    # Exactly the guide's rounded active counts, not the nominal density.
    guide = MaskedAutoNormal(model, sparsity=0.9)
    guide(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    assert dens == site_densities(model, guide)


def test_bad_densities():
    with pytest.raises(SSVIConfigError):
        site_densities(one_conv_net(), {"nope.weight": 0.5})
    with pytest.raises(SSVIConfigError):
        site_densities(one_conv_net(), 0.0)


def _resnet18_cifar_macs_by_hand() -> int:
    """Forward MACs of CIFAR ResNet-18 (width 1) on one 32x32 image, from the architecture."""
    def conv(hw, c_out, c_in, k):
        return hw * hw * c_out * c_in * k * k

    stem = conv(32, 64, 3, 3)
    stage1 = 4 * conv(32, 64, 64, 3)
    stage2 = conv(16, 128, 64, 3) + 3 * conv(16, 128, 128, 3) + conv(16, 128, 64, 1)
    stage3 = conv(8, 256, 128, 3) + 3 * conv(8, 256, 256, 3) + conv(8, 256, 128, 1)
    stage4 = conv(4, 512, 256, 3) + 3 * conv(4, 512, 512, 3) + conv(4, 512, 256, 1)
    head = 512 * 10
    return stem + stage1 + stage2 + stage3 + stage4 + head


def test_resnet18_forward_macs():
    expected = _resnet18_cifar_macs_by_hand()
    assert expected == 555_422_720  # ~0.56 GMACs, the usual figure for CIFAR ResNet-18
    macs = layer_macs(models.resnet18(width=1.0), torch.zeros(1, 3, 32, 32))
    assert len(macs) == 21  # 17 3x3 convs + 3 shortcuts + linear
    assert sum(macs.values()) == expected


def test_paper_schedule_relative_flops():
    model = models.resnet18(width=1.0)
    x = torch.zeros(1, 3, 32, 32)
    steps = 200 * 391  # 200 epochs of ceil(50000 / 128) steps
    r = training_flops(model, 0.1, x, num_steps=steps, batch_size=128, update_interval=100, update_end=0.75)
    assert r["num_updates"] == 586  # t = 100, ..., 58600 < 0.75 * 78200
    # 90% sparse except the stem (0.32% of the MACs, dense): a bit over 0.10.
    assert 0.102 < r["relative_theoretical"] < 0.106
    assert 0.99 < r["relative_executed"] < 1.0
