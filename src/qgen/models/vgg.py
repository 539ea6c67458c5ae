"""VGG-19 with batch normalization for 32x32 inputs.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (arXiv:1409.1556), configuration E, with BN after every convolution (Ioffe & Szegedy
2015). Five 2x2 max-pools take 32x32 to 1x1, so the three-layer ImageNet classifier becomes one
``Linear(512, K)``, as is usual for CIFAR. Layers keep PyTorch's default initialization.
"""

from __future__ import annotations

from torch import Tensor, nn

from qgen.models._factory import MODELS
from qgen.models._layers import conv_bn

# Output channels of the 3x3 convolutions of each stage; every stage ends in a 2x2 max-pool.
VGG19_STAGES: tuple[tuple[int, ...], ...] = (
    (64,) * 2,
    (128,) * 2,
    (256,) * 4,
    (512,) * 4,
    (512,) * 4,
)


class CifarVGG(nn.Module):
    """Stages of 3x3 conv-BN-ReLU layers, each closed by a max-pool, then a linear classifier."""

    def __init__(self, stages: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        features: list[nn.Module] = []
        in_channels = 3
        for stage in stages:
            for channels in stage:
                features.append(conv_bn(in_channels, channels, 3))
                in_channels = channels
            features.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*features)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


@MODELS.register("vgg19_cifar")
def vgg19_cifar(num_classes: int) -> CifarVGG:
    """VGG-19 (configuration E) with BN."""
    return CifarVGG(VGG19_STAGES, num_classes)
