"""ImageNet models from torchvision and timm, optionally with their published ImageNet-1k weights.

QGen fine-tunes "PyTorch pre-trained weights" (App. B.1, citing the torchvision 0.15 model page).
For the CNNs these are torchvision's ``IMAGENET1K_V1`` weights: the ones the legacy
``pretrained=True`` loaded, trained with the original recipe and evaluated with the standard
resize-256 / crop-224 preprocessing (top-1: ResNet-18 69.758, ResNet-50 76.130, MobileNet-V2
71.878). The newer ``IMAGENET1K_V2`` weights of ResNet-50 and MobileNet-V2 come from a different
training recipe and expect other evaluation resizing, so they are not used. The transformers are
timm's default ImageNet-1k weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from torch import nn
from torchvision import models as tv
from torchvision.models import WeightsEnum

from qgen.models._factory import MODELS


def torchvision_model(
    builder: Callable[..., nn.Module],
    weights: WeightsEnum,
    classifier: str,
    num_classes: int,
    pretrained: bool,
) -> nn.Module:
    """``builder`` without weights, or with ``weights`` and the ``classifier`` Linear replaced by a
    freshly initialized ``num_classes``-way one when the class count differs from the weights'."""
    if not pretrained:
        return builder(weights=None, num_classes=num_classes)
    model = builder(weights=weights)
    if num_classes != len(weights.meta["categories"]):
        in_features = cast(nn.Linear, model.get_submodule(classifier)).in_features
        model.set_submodule(classifier, nn.Linear(in_features, num_classes))
    return model


@MODELS.register("resnet18")
def resnet18(num_classes: int, *, pretrained: bool = False) -> nn.Module:
    """ResNet-18 (He et al. 2016); weights ``ResNet18_Weights.IMAGENET1K_V1``."""
    return torchvision_model(tv.resnet18, tv.ResNet18_Weights.IMAGENET1K_V1, "fc", num_classes, pretrained)


@MODELS.register("resnet50")
def resnet50(num_classes: int, *, pretrained: bool = False) -> nn.Module:
    """ResNet-50 (He et al. 2016); weights ``ResNet50_Weights.IMAGENET1K_V1``."""
    return torchvision_model(tv.resnet50, tv.ResNet50_Weights.IMAGENET1K_V1, "fc", num_classes, pretrained)


@MODELS.register("mobilenet_v2")
def mobilenet_v2(num_classes: int, *, pretrained: bool = False) -> nn.Module:
    """MobileNet-V2 (Sandler et al. 2018); weights ``MobileNet_V2_Weights.IMAGENET1K_V1``."""
    return torchvision_model(
        tv.mobilenet_v2,
        tv.MobileNet_V2_Weights.IMAGENET1K_V1,
        "classifier.1",
        num_classes,
        pretrained,
    )


def timm_model(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    """``timm.create_model``; timm is imported here because importing it costs every job ~1.5 s."""
    import timm

    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)


@MODELS.register("deit_tiny_patch16_224")
def deit_tiny_patch16_224(num_classes: int, *, pretrained: bool = False) -> nn.Module:
    """DeiT-Tiny (Touvron et al. 2021), timm weights ``deit_tiny_patch16_224.fb_in1k``."""
    return timm_model("deit_tiny_patch16_224", num_classes, pretrained)


@MODELS.register("swin_tiny_patch4_window7_224")
def swin_tiny_patch4_window7_224(num_classes: int, *, pretrained: bool = False) -> nn.Module:
    """Swin-T (Liu et al. 2021), timm weights ``swin_tiny_patch4_window7_224.ms_in1k``."""
    return timm_model("swin_tiny_patch4_window7_224", num_classes, pretrained)
