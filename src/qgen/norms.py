"""The weight set W of the paper's norm and flatness measures, and its L2 norm (paper Table 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qgen.quant import QUANTIZABLE, latent_weight


def weight_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Layer name -> latent weight of every conv/linear layer (no biases, no BN), in definition order.

    For a quantized layer this is the float weight the optimizer updates, not its quantized image.
    """
    return {
        name: latent_weight(m).detach() for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)
    }


def weight_norm(model: nn.Module) -> float:
    """``||W||_2`` with all weights flattened into one vector (paper Table 2)."""
    squares = sum(w.double().square().sum() for w in weight_tensors(model).values())
    return float(torch.as_tensor(squares).sqrt())
