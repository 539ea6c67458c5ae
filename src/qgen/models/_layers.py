"""Layers shared by the CIFAR model families: the convolution unit and the global average pool."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn


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


class GlobalAvgPool2d(nn.Module):
    """Average over the spatial dimensions, ``(N, C, H, W) -> (N, C, 1, 1)``: ``nn.AdaptiveAvgPool2d(1)``.

    Written as a mean over ``H`` and ``W`` because ``adaptive_avg_pool2d`` has no complete batching rule:
    under ``torch.func.vmap`` (the stacked perturbed copies of :mod:`qgen.measures.perturb`) on a
    channels_last input it falls back to a per-copy loop, with PyTorch's warning "There is a performance
    drop because we have not yet implemented the batching rule for aten::as_strided_". The values equal
    ``AdaptiveAvgPool2d(1)``'s up to float rounding; there are no parameters or buffers.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)
