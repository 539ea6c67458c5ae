"""ResNets for 32x32 inputs.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385):
the ImageNet ResNet-18/50 block layouts ([2, 2, 2, 2] basic, [3, 4, 6, 3] bottleneck) with a CIFAR
stem (one 3x3 stride-1 convolution, no max-pool), stage widths ``base_width * (1, 2, 4, 8)`` and
1x1 projection shortcuts where the shape changes (option B). QGen (App. B.1) uses base width 16.
Layers keep PyTorch's default initialization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from qgen.errors import QgenError
from qgen.models._factory import MODELS
from qgen.models._layers import GlobalAvgPool2d, conv_bn

BOTTLENECK_EXPANSION = 4


class ResidualBlock(nn.Module):
    """``relu(residual(x) + shortcut(x))``, the shortcut projecting only where the shape changes."""

    def __init__(self, residual: nn.Sequential, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.residual = residual
        self.shortcut: nn.Module = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else conv_bn(in_channels, out_channels, 1, stride=stride, activation=False)
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


def basic_block(in_channels: int, width: int, stride: int) -> ResidualBlock:
    """Two 3x3 convolutions (He et al. 2016, Fig. 5 left)."""
    residual = nn.Sequential(
        conv_bn(in_channels, width, 3, stride=stride),
        conv_bn(width, width, 3, activation=False),
    )
    return ResidualBlock(residual, in_channels, width, stride)


def bottleneck(in_channels: int, width: int, stride: int) -> ResidualBlock:
    """1x1 reduce, 3x3, 1x1 expand by 4 (He et al. 2016, Fig. 5 right); the stride sits on the 3x3
    convolution, as in torchvision's ResNet ("v1.5")."""
    out_channels = width * BOTTLENECK_EXPANSION
    residual = nn.Sequential(
        conv_bn(in_channels, width, 1),
        conv_bn(width, width, 3, stride=stride),
        conv_bn(width, out_channels, 1, activation=False),
    )
    return ResidualBlock(residual, in_channels, out_channels, stride)


class CifarResNet(nn.Module):
    """Stem, stages of ``blocks_per_stage`` blocks of widths ``base_width * (1, 2, 4, ...)`` (the
    first stage at stride 1, the others opening with stride 2), global average pool, linear head.

    ``block(in_channels, width, stride)`` builds one residual block.
    """

    def __init__(
        self,
        block: Callable[[int, int, int], ResidualBlock],
        blocks_per_stage: Sequence[int],
        num_classes: int,
        base_width: int,
    ) -> None:
        super().__init__()
        if base_width < 1:
            raise QgenError(f"ResNet base_width must be >= 1, got {base_width}")
        self.stem = conv_bn(3, base_width, 3)
        stages = []
        in_channels = base_width
        for stage, num_blocks in enumerate(blocks_per_stage):
            width, stride = base_width * 2**stage, 1 if stage == 0 else 2
            blocks = []
            for index in range(num_blocks):
                blocks.append(block(in_channels, width, stride if index == 0 else 1))
                in_channels = blocks[-1].out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = GlobalAvgPool2d()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


@MODELS.register("resnet18_cifar")
def resnet18_cifar(num_classes: int, *, base_width: int = 16) -> CifarResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return CifarResNet(basic_block, (2, 2, 2, 2), num_classes, base_width)


@MODELS.register("resnet50_cifar")
def resnet50_cifar(num_classes: int, *, base_width: int = 16) -> CifarResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return CifarResNet(bottleneck, (3, 4, 6, 3), num_classes, base_width)
