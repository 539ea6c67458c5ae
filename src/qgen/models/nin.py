"""Network-in-Network as used by Dziugaite et al. (2020) and the QGen paper.

Lin, Chen & Yan, "Network In Network", ICLR 2014 (arXiv:1312.4400), in the fully convolutional
variant of Dziugaite et al., "In Search of Robust Measures of Generalization", NeurIPS 2020; layer
for layer as their reference code, nitarshan/robust-generalization-measures,
``data/generation/models.py``. QGen (App. B.1) trains it with base width 25.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from qgen.errors import QgenError
from qgen.models._factory import MODELS
from qgen.models._layers import GlobalAvgPool2d


class NiNBlock(nn.Module):
    """A stride-2 3x3 convolution followed by two 1x1 convolutions, each with BN and ReLU.

    The convolutions keep their biases, as in the reference.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, kernel_size=1)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.relu(self.bn3(self.conv3(x)))


class NiN(nn.Module):
    """``depth`` NiN blocks of ``C = base_width * width`` channels, then a 1x1 conv to the classes.

    Each block halves the resolution (32 -> 16 -> 8 -> ... for CIFAR). The head is
    conv 1x1 -> BN -> ReLU -> global average pool, so, as in the reference, the logits are
    non-negative. The convolution weights number ``omega = 27C + 2C^2 + 11(depth-1)C^2 + CK`` for
    ``K`` classes and 3 input channels. One deliberate change: the reference ends with
    ``.squeeze()``, which also drops the batch dimension of a batch of one; this model uses
    ``flatten(1)`` and always returns shape ``(B, K)``.
    """

    def __init__(self, num_classes: int, depth: int, width: int, base_width: int) -> None:
        super().__init__()
        if depth < 1 or width < 1 or base_width < 1:
            raise QgenError(
                f"NiN depth, width and base_width must be >= 1, got {depth}, {width}, {base_width}"
            )
        channels = base_width * width
        self.blocks = nn.Sequential(
            NiNBlock(3, channels), *(NiNBlock(channels, channels) for _ in range(depth - 1))
        )
        self.head = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(channels, num_classes, kernel_size=1),
                bn=nn.BatchNorm2d(num_classes),
                relu=nn.ReLU(),
                pool=GlobalAvgPool2d(),
                flatten=nn.Flatten(1),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))


@MODELS.register("nin")
def nin(num_classes: int, *, depth: int = 2, width: int = 8, base_width: int = 25) -> NiN:
    """NiN with ``depth`` blocks of ``base_width * width`` channels.

    QGen App. B.3 grid: width in {8, 10, 12}; depth in {2, 3, 4} on CIFAR-10, {3, 4, 5} on
    CIFAR-100.
    """
    return NiN(num_classes, depth=depth, width=width, base_width=base_width)
