"""LSQ weight quantization (Esser et al., ICLR 2020), weights only, one learned step per layer.

The paper quantizes each targeted layer's weight tensor ``w`` with a learned step ``s`` (paper eqs. 1-2):

    w_bar = round(clip(w / s, -2^(b-1), 2^(b-1) - 1))        (1)
    w_hat = w_bar * s                                         (2)

Gradients follow LSQ: the rounding is a straight-through estimator, so ``d w_hat / d w`` is 1 inside the
clip range and 0 outside; ``d w_hat / d s`` is ``round(w/s) - w/s`` inside the range and the clip bound
(``-Q_N`` or ``Q_P``) outside, and the step's gradient is scaled by ``g = 1 / sqrt(N * Q_P)`` with ``N`` the
number of weights in the layer. The step starts at ``s0 = 2 * mean|w| / sqrt(Q_P)``.

Quantizers are attached with :func:`torch.nn.utils.parametrize.register_parametrization`, so
``module.weight`` is the quantized weight ``w_hat`` wherever the module reads it, the latent float
weight lives at ``module.parametrizations.weight.original`` and the step at
``module.parametrizations.weight[0].step``. This works for any module that reads ``self.weight``
(torchvision and timm layers included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from qgen.errors import QgenError
from qgen.vocab import PRECISIONS

STEP_MIN: Final = 1e-8
"""Floor that keeps every learned step strictly positive (see :func:`clamp_steps_`)."""

QUANTIZABLE: Final = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def bits_of(precision: str) -> int | None:
    """Bit width of a precision name (``"int4"`` -> 4, ``"fp32"`` -> None)."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise QgenError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}") from None


def level_bounds(bits: int) -> tuple[int, int]:
    """Signed integer range ``(-Q_N, Q_P) = (-2^(b-1), 2^(b-1) - 1)`` of eq. 1."""
    if bits < 2:
        raise QgenError(f"bits must be >= 2 for signed weights, got {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def initial_step(w: Tensor, bits: int) -> Tensor:
    """LSQ's initial step ``s0 = 2 * mean|w| / sqrt(Q_P)`` (Esser et al. 2020, §2.1)."""
    _, q_p = level_bounds(bits)
    return 2 * w.detach().abs().mean() / math.sqrt(q_p)


def _scale_grad(x: Tensor, g: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``g`` in the backward pass."""
    return (x - x * g).detach() + x * g


def _round_ste(x: Tensor) -> Tensor:
    """Round to nearest in the forward pass; straight-through (identity) gradient."""
    return (x.round() - x).detach() + x


def lsq_fake_quant(w: Tensor, s: Tensor, bits: int) -> Tensor:
    """Quantize ``w`` with step ``s`` to ``bits`` bits: ``w_hat`` of paper eqs. 1-2, with LSQ gradients.

    Differentiable in ``w`` (straight-through inside the clip range, zero outside) and in ``s``
    (``round(w/s) - w/s`` inside the range, the clip bound outside, times ``1/sqrt(N * Q_P)``).
    At exactly ``w/s`` equal to a bound the value belongs to the range (``torch.clamp`` passes the
    gradient there); both formulas agree on that set up to its measure-zero boundary.
    ``s`` must be positive (a scalar tensor).
    """
    q_n, q_p = level_bounds(bits)
    s = _scale_grad(s, 1.0 / math.sqrt(w.numel() * q_p))
    return _round_ste(torch.clamp(w / s, q_n, q_p)) * s


class LSQWeightQuantizer(nn.Module):
    """Parametrization ``w -> w_hat`` holding one learned step ``s`` for one weight tensor."""

    def __init__(self, weight: Tensor, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.step = nn.Parameter(initial_step(weight, bits).to(weight.dtype))

    def forward(self, weight: Tensor) -> Tensor:
        return lsq_fake_quant(weight, self.step, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def quantize_model(model: nn.Module, bits: int | None, *, quantize_first_last: bool = False) -> nn.Module:
    """Attach an LSQ weight quantizer to every targeted conv/linear layer of ``model`` (in place).

    Targets are all ``Conv*d`` and ``Linear`` modules; the first and the last of them in definition
    order (the stem and the classifier of every registry model) are skipped unless
    ``quantize_first_last``. ``bits=None`` (FP32) returns the model unchanged. Steps are initialised
    eagerly from the current weights, so quantize *after* loading pretrained weights.
    """
    if bits is None:
        return model
    level_bounds(bits)
    layers = [m for m in model.modules() if isinstance(m, QUANTIZABLE)]
    if not quantize_first_last:
        layers = layers[1:-1]
    for layer in layers:
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"{type(layer).__name__} is already parametrized; quantize a model only once")
        parametrize.register_parametrization(layer, "weight", LSQWeightQuantizer(layer.weight, bits))
    return model


def quantizers(model: nn.Module) -> dict[str, LSQWeightQuantizer]:
    """Layer name -> its LSQ quantizer, in definition order."""
    found: dict[str, LSQWeightQuantizer] = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, LSQWeightQuantizer):
                    found[name] = p
    return found


def step_sizes(model: nn.Module) -> dict[str, float]:
    """Layer name -> learned step ``s`` (= quantization bin width, paper Figure 1)."""
    return {name: float(q.step.detach()) for name, q in quantizers(model).items()}


STEP_KEY_SUFFIX: Final = ".parametrizations.weight.0.step"
"""How a quantized layer's step is named in a state dict (``<layer>`` + suffix)."""


def step_sizes_of_state(state_dict: Mapping[str, Tensor]) -> dict[str, float]:
    """Layer name -> learned step, read from a saved state dict without building the model.

    Layers come in state-dict order, which is definition order; equals :func:`step_sizes` of the model.
    """
    return {
        key.removesuffix(STEP_KEY_SUFFIX): float(value)
        for key, value in state_dict.items()
        if key.endswith(STEP_KEY_SUFFIX)
    }


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned steps of ``model`` (for optimizer parameter groups)."""
    return [q.step for q in quantizers(model).values()]


@torch.no_grad()
def clamp_steps_(steps: list[nn.Parameter], minimum: float = STEP_MIN) -> None:
    """Keep every learned step ``s >= minimum`` (LSQ needs s > 0); call after each optimizer step with
    ``step_parameters(model)``, collected once outside the training loop."""
    for step in steps:
        step.clamp_(min=minimum)


def latent_weight(module: nn.Module) -> Tensor:
    """The float weight a layer learns: the parametrization's original if quantized, else ``weight``."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight
