"""CIFAR ResNet-18 (He et al., 2016) with Bayesian convolutions and output layer.

CIFAR variant: 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2] at 64/128/256/512
channels (times ``width``), global average pooling, linear classifier. BatchNorm and the
classifier bias are point estimates. At width 1 there are 11,164,352 weights in sample sites
(conv + linear, shortcuts included).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..errors import SSVIConfigError
from .network import BayesianNetwork
from .layers import BayesConv2d, BayesLinear

__all__ = ["resnet18", "BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, prior_scale: float):
        super().__init__()
        self.conv1 = BayesConv2d(in_planes, planes, 3, stride, 1, prior_scale=prior_scale)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = BayesConv2d(planes, planes, 3, 1, 1, prior_scale=prior_scale)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                BayesConv2d(in_planes, planes, 1, stride, prior_scale=prior_scale), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu_()


class ResNet(nn.Module):
    def __init__(self, num_blocks, num_classes: int, width: float, prior_scale: float, in_channels: int = 3):
        super().__init__()
        planes = [max(1, int(round(64 * width * 2**i))) for i in range(4)]
        self.conv1 = BayesConv2d(in_channels, planes[0], 3, 1, 1, prior_scale=prior_scale)
        self.bn1 = nn.BatchNorm2d(planes[0])
        blocks, in_planes = [], planes[0]
        for i, (p, n) in enumerate(zip(planes, num_blocks)):
            for j in range(n):
                blocks.append(BasicBlock(in_planes, p, 2 if (i > 0 and j == 0) else 1, prior_scale))
                in_planes = p
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = BayesLinear(in_planes, num_classes, prior_scale=prior_scale)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu_()
        return self.linear(self.pool(self.layers(out)))


def resnet18(
    num_classes: int = 10,
    prior_scale: float = 0.005,
    width: float = 1.0,
    num_data: Optional[int] = None,
    in_channels: int = 3,
    name: Optional[str] = None,
) -> BayesianNetwork:
    """CIFAR ResNet-18 as a Pyro model; the stem conv is a dense site by default (as in the paper).

    :param width: channel multiplier (1.0 is the standard 64-128-256-512).
    :param prior_scale: standard deviation of the N(0, s^2) prior of every weight.
    :param name: prefix of the point estimates in Pyro's param store (see :class:`BayesianNetwork`).
    """
    if not width > 0:
        raise SSVIConfigError(f"width must be > 0, got {width}")
    net = ResNet([2, 2, 2, 2], num_classes, width, prior_scale, in_channels)
    model = BayesianNetwork(net, num_data=num_data, dense_sites=("conv1.weight",), name=name)
    model.spec = {"builder": "resnet18", "num_classes": num_classes, "prior_scale": float(prior_scale),
                  "width": float(width), "num_data": num_data, "in_channels": in_channels}
    return model
