"""The weight set W of the paper's norm and flatness measures, and its L2 norm (paper Table 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qgen.quant import QUANTIZABLE, latent_weight


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """``W``: the weight of every conv/linear layer (no biases, no BN), in definition order.

    For a quantized layer this is the latent float weight the optimizer updates, not its quantized image.
    """
    return [latent_weight(m) for m in model.modules() if isinstance(m, QUANTIZABLE)]


def weight_vector(model: nn.Module) -> Tensor:
    """``W`` flattened into one float64 vector (detached)."""
    return torch.cat([w.detach().flatten().double() for w in weight_parameters(model)])


def weight_norm(model: nn.Module) -> float:
    """``||W||_2`` with all weights flattened into one vector (paper Table 2)."""
    return math.sqrt(float(weight_vector(model).square().sum()))
