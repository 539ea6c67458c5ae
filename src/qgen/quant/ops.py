"""LSQ weight quantization (Esser et al., ICLR 2020), weights only, one learned step per layer.

The paper quantizes each targeted layer's weight tensor ``w`` with a learned step ``s`` (paper eqs. 1-2):

    w_bar = round(clip(w / s, -2^(b-1), 2^(b-1) - 1))        (1)
    w_hat = w_bar * s                                         (2)

Gradients follow LSQ: the rounding is a straight-through estimator, so ``d w_hat / d w`` is 1 inside the
clip range and 0 outside; ``d w_hat / d s`` is ``round(w/s) - w/s`` inside the range and the clip bound
(``-Q_N`` or ``Q_P``) outside, and the step's gradient is scaled by ``g = 1 / sqrt(N * Q_P)`` with ``N`` the
number of weights in the layer; ``w/s`` exactly at a bound counts as clipped. One fused autograd node,
:class:`LSQFakeQuant`, computes ``w_hat`` and both gradients. The step starts at
``s0 = 2 * mean|w| / sqrt(Q_P)``.

Quantizers are attached with :func:`torch.nn.utils.parametrize.register_parametrization`, so
``module.weight`` is the quantized weight ``w_hat`` wherever the module reads it, the latent float
weight lives at ``module.parametrizations.weight.original`` and the step at
``module.parametrizations.weight[0].step``. This works for any module that reads ``self.weight``
(torchvision and timm layers included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

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


class LSQFakeQuant(torch.autograd.Function):
    """LSQ fake quantization ``round(clip(x / s, lower, upper)) * s`` with LSQ's gradients, in one node.

    ``apply(x, s, lower, upper, grad_scale)`` quantizes ``x`` with the positive step ``s`` to the integer
    range ``[lower, upper] = [-Q_N, Q_P]`` (paper eqs. 1-2; Esser et al. 2020, eqs. 1-2). With
    ``v = x / s``, the backward node returns the closed forms of Esser et al. eq. 3 and §2.2:

    - ``dL/dx = dL/dx_hat`` where ``lower < v < upper``, else 0 (straight-through rounding, clipped
      elements get no gradient);
    - ``dL/ds = grad_scale * sum(dL/dx_hat * d)`` with ``d = round(v) - v`` where ``lower < v < upper``,
      ``d = lower`` where ``v <= lower`` and ``d = upper`` where ``v >= upper`` (eq. 3). The gradient
      scale is ``1 / sqrt(N * Q_P)``, ``N`` the number of elements the step quantizes (§2.2).

    **At a bound** (``v == lower`` or ``v == upper`` exactly) the element counts as clipped, as in eq. 3:
    no ``dL/dx``, and ``d`` is the bound. This is the gradient of ``F.hardtanh`` (the clip of the LSQ
    paper's pseudocode) and of ``torch.clamp`` in the pinned PyTorch 2.14, so the op equals the composite
    ``(round(clamp(x / s')) - ...).detach()`` formulation it replaces; PyTorch releases before the
    change to clamp's boundary subgradient (pytorch/pytorch#184574) passed the gradient there instead.
    Values and gradients equal the composite's up to float rounding: it divides by
    ``s' = (s - g s).detach() + g s``, which can differ from ``s`` in the last bit, and accumulates
    ``dL/ds`` in another order. A NaN element passes ``dL/dx`` (the composite gives 0); training that
    produced one has diverged anyway. Rounding is computed in the dtype of ``x / s``, as before.

    The backward saves only ``x`` and ``s`` (for a weight quantizer ``x`` is the latent weight, which
    lives anyway) and recomputes ``v``. The same op serves a weight quantizer (signed range, ``N`` =
    weights of the layer) and an activation quantizer (``lower = 0`` for unsigned data, ``N`` = features).
    ``s`` is a scalar or broadcasts to ``x`` (its gradient is summed to its shape). Runs under
    ``torch.func`` transforms (``vmap`` of ``functional_call``, ``grad``) through the generated vmap rule;
    every op used has a batching rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, s: Tensor, lower: int, upper: int, grad_scale: float) -> Tensor:
        # In place on the one new tensor: on a CPU a fresh allocation per op costs more than the op.
        # clamp_min_/clamp_max_ rather than clamp_, which has no batching rule under vmap.
        return (x / s).clamp_min_(lower).clamp_max_(upper).round_().mul_(s)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, s, lower, upper, grad_scale = inputs
        ctx.save_for_backward(x, s)
        ctx.lower, ctx.upper, ctx.grad_scale = lower, upper, grad_scale

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        x, s = ctx.saved_tensors
        v = x / s
        grad_x = _where_inside(grad_out, v, ctx.lower, ctx.upper)
        # round(clip(v)) is round(v) inside and the bound outside; v is subtracted inside only.
        inside_v = _where_inside(v, v, ctx.lower, ctx.upper)
        d_s = v.clamp_min_(ctx.lower).clamp_max_(ctx.upper).round_().sub_(inside_v)
        grad_s = (d_s * grad_out).sum_to_size(s.shape) * ctx.grad_scale
        return grad_x, grad_s, None, None, None


def _where_inside(values: Tensor, v: Tensor, lower: int, upper: int) -> Tensor:
    """``values`` where ``lower < v < upper``, else 0: the gradient of ``F.hardtanh`` (one fused kernel;
    a bool mask with ``torch.where``/``masked_fill`` is several times slower on a CPU)."""
    return torch.ops.aten.hardtanh_backward(values, v, lower, upper)


def lsq_fake_quant(w: Tensor, s: Tensor, bits: int) -> Tensor:
    """Quantize ``w`` with step ``s`` to ``bits`` bits: ``w_hat`` of paper eqs. 1-2, with LSQ gradients.

    Differentiable in ``w`` (straight-through inside the clip range, zero outside) and in ``s``
    (``round(w/s) - w/s`` inside the range, the clip bound outside, times ``1/sqrt(N * Q_P)`` with ``N``
    the number of weights). A weight exactly at a bound (``w/s == -Q_N`` or ``Q_P``) counts as clipped,
    as in LSQ's eq. 3. One fused node, :class:`LSQFakeQuant`. ``s`` must be positive (a scalar tensor).
    """
    q_n, q_p = level_bounds(bits)
    return LSQFakeQuant.apply(w, s, q_n, q_p, 1.0 / math.sqrt(w.numel() * q_p))


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
