"""The convolution unit shared by the CIFAR model families."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    activation: bool = True,
) -> nn.Sequential:
    """``Conv2d`` -> ``BatchNorm2d`` -> optional ReLU.

    The convolution pads to keep the resolution (divided by ``stride``) and has no bias, which the
    BN shift makes redundant.

    Children are named ``conv``, ``bn`` and ``relu``, so batch-norm parameter names contain ``bn``.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        bn=nn.BatchNorm2d(out_channels),
    )
    if activation:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)
