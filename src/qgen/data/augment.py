"""Batched augmentation of uint8 image tensors: random crops of the zero-padded image, horizontal flips,
and normalization, for whole batches at once (no per-sample Python)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CROP_PADDING = 4
"""Zero padding of a random crop: ``RandomCrop(32, padding=4)``, the standard CIFAR augmentation."""


def crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Crop each image of a batch out of its zero-padded copy, mirrored where ``flip`` is set.

    Image ``i`` becomes rows ``top[i]:top[i]+H`` and columns ``left[i]:left[i]+W`` of the batch padded by
    ``padding`` zeros on every side, then flipped left-right if ``flip[i]``: exactly torchvision's
    ``RandomCrop((H, W), padding)`` followed by ``RandomHorizontalFlip`` with those draws.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    cols = torch.arange(w, device=device)
    rows = top[:, None] + torch.arange(h, device=device)
    cols = left[:, None] + torch.where(flip[:, None], (w - 1) - cols, cols)
    batch = torch.arange(n, device=device)[:, None, None, None]
    channels = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]


def draw_crop_flip(
    n: int, generator: torch.Generator, padding: int = CROP_PADDING, *, flip: bool = True
) -> Tensor:
    """The random draws of a crop and flip of ``n`` images for :func:`crop_flip`: rows ``top``, ``left``,
    ``flip``.

    Without ``flip`` no flip is drawn and the third row is all zeros (augmentation ``crop``).
    """
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return torch.cat([offsets, flips[None].long()])


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 pixels to float32 ``(x / 255 - mean) / std``; ``mean`` and ``std`` broadcast over channels."""
    return (images.float().div_(255) - mean) / std
