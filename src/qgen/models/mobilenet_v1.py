"""MobileNet-V1 for 32x32 inputs.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", 2017 (arXiv:1704.04861), Table 1, with the first convolution at stride 1 instead of
2 so that the four remaining stride-2 layers take 32x32 to 2x2 before the global pool. The width
multiplier ``alpha`` scales every layer's channels (Sec. 3.3). Layers keep PyTorch's default
initialization.
"""

from __future__ import annotations

from torch import Tensor, nn

from qgen.errors import QgenError
from qgen.models._factory import MODELS
from qgen.models._layers import GlobalAvgPool2d, conv_bn

STEM_CHANNELS = 32
# (output channels, stride) of the 13 depthwise-separable blocks (Howard et al. 2017, Table 1).
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU (Howard et al. 2017, Fig. 3)."""
    return nn.Sequential(
        conv_bn(in_channels, in_channels, 3, stride=stride, groups=in_channels),
        conv_bn(in_channels, out_channels, 1),
    )


class CifarMobileNetV1(nn.Module):
    """Stem, 13 depthwise-separable blocks, global average pool, linear head."""

    def __init__(self, num_classes: int, width_mult: float) -> None:
        super().__init__()
        if width_mult <= 0:
            raise QgenError(f"MobileNet-V1 width_mult must be > 0, got {width_mult}")

        def scaled(channels: int) -> int:
            return max(1, int(channels * width_mult))

        in_channels = scaled(STEM_CHANNELS)
        self.stem = conv_bn(3, in_channels, 3)
        blocks = []
        for channels, stride in BLOCKS:
            blocks.append(depthwise_separable(in_channels, scaled(channels), stride))
            in_channels = scaled(channels)
        self.blocks = nn.Sequential(*blocks)
        self.pool = GlobalAvgPool2d()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


@MODELS.register("mobilenet_v1_cifar")
def mobilenet_v1_cifar(num_classes: int, *, width_mult: float = 1.0) -> CifarMobileNetV1:
    """MobileNet-V1 with width multiplier ``width_mult``."""
    return CifarMobileNetV1(num_classes, width_mult)
