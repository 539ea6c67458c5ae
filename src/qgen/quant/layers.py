"""The quantizers of one layer and the quantized layer's forward pass.

**Weights** are quantized by :class:`LSQWeightQuantizer`, attached with
:func:`torch.nn.utils.parametrize.register_parametrization`: ``layer.weight`` is the quantized weight
``w_hat`` wherever the layer reads it, the latent float weight lives at
``layer.parametrizations.weight.original`` and the step at ``layer.parametrizations.weight[0].step``.

**Activations** are quantized by :class:`ActivationQuantizer` modules: LSQ's learned step per quantized
tensor, unsigned ``[0, 2^b - 1]`` for non-negative data (after a ReLU) and signed otherwise, gradient scale
``1 / sqrt(N_F * Q_P)`` with ``N_F`` the features of one sample, step set from the first training batch
(:func:`qgen.quant.calibrate_activations`). Following LSQ, a quantized conv/linear layer quantizes its
*input* (``layer.input_quantizer``, state-dict key ``<layer>.input_quantizer.step``); VVTQ's attention also
quantizes the operands of its two matrix products (:func:`quantized_matmul`, :mod:`qgen.vvtq`).

**The quantized layer** (:func:`quantize_layer`) is the layer with :class:`QuantizedLayer` mixed into its
class, which owns its forward pass:

- in float32 (no autocast) it quantizes the input, if it has an input quantizer, and runs the layer's own
  forward on ``w_hat``: exactly what the parametrized layer computed before activations were quantized;
- under autocast (:func:`computes_on_codes`) it computes on the integer codes, ``y = s_x s_w conv(x_bar,
  w_bar) + b``: bfloat16 represents every code with ``|q| <= 256`` exactly, and the product of codes
  accumulates in float32, exactly while partial sums stay below ``2^24`` (always at 4 bits for these
  models; at 8 bits beyond that the accumulator rounds by ``2^-24``, far below the output's bfloat16
  rounding), so the weights and inputs are those of the quantization grid; ``conv(x, q s)`` would round
  ``q s`` to bfloat16's 8 significant bits instead. Scales, offset and bias are applied in float32 and
  the result is cast to the autocast dtype, as an autocast layer returns it. The gradients are LSQ's
  (:class:`~qgen.quant.ops.LSQCodes`, :class:`~qgen.quant.ops.GradScale`).

The trainer needs nothing but ``torch.autocast(device_type, dtype=torch.bfloat16)`` around the forward
pass (and the loss): quantized layers read the autocast state themselves. Float16 autocast is refused
(integer sums overflow its range of 65504); TF32 (cuDNN's default for float32 convolutions on Ampere and
later GPUs) rounds ``q s`` to 11 significant bits and is not detected (docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from qgen.errors import QgenError
from qgen.quant.ops import (
    GradScale,
    LSQCodes,
    LSQFakeQuantMany,
    apply,
    fake_quant,
    gradient_scale,
    initial_step,
    level_bounds,
    weight_step,
)

QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layers whose weight (and input) can be quantized."""

PLACEHOLDER_STEP = 1.0
"""An activation step before :func:`qgen.quant.calibrate_activations` sets it (as in zhutmost/lsq-net)."""


class LSQWeightQuantizer(nn.Module):
    """Parametrization ``w -> w_hat`` holding one learned step ``s`` for one weight tensor (signed)."""

    def __init__(self, weight: Tensor, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.lower, self.upper = level_bounds(bits)
        self.step = nn.Parameter(initial_step(weight, bits).to(weight.dtype))

    def forward(self, weight: Tensor) -> Tensor:
        """:func:`~qgen.quant.ops.lsq_fake_quant` of ``weight`` (its range looked up once)."""
        return fake_quant(weight, self.step, *self.range_of(weight))

    def range_of(self, weight: Tensor) -> tuple[int, int, float]:
        """``(lower, upper, grad_scale)`` of LSQ's fake quantization of ``weight``: the signed range of
        :attr:`bits` and the gradient scale ``1/sqrt(N Q_P)`` of its ``N`` weights."""
        return self.lower, self.upper, gradient_scale(weight.numel(), self.upper)

    def codes(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """``(w_bar, s)``: the codes of ``weight`` and the (gradient-scaled) step; ``w_hat = w_bar s``."""
        s = weight_step(self.step, weight, self.bits)
        return apply(LSQCodes, weight, s, self.lower, self.upper), s

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class ActivationQuantizer(nn.Module):
    """LSQ quantizer of an activation: ``x_hat = round(clip((x - beta) / s, lower, upper)) * s + beta``.

    ``signed`` picks ``[-2^(b-1), 2^(b-1) - 1]`` or ``[0, 2^b - 1]``. The step gets LSQ's gradient scale
    ``1 / sqrt(N_F * Q_P)``, ``N_F`` the number of features of one sample (the elements of ``x[0]``; LSQ
    §2.2). ``offset`` adds a learned offset ``beta`` (0 at start, no gradient scale), as VVTQ's unsigned
    quantizer after the MLP's GELU (``QuantAct(offset=True)``), whose output dips below 0.
    """

    def __init__(self, bits: int, signed: bool, offset: bool = False) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.lower, self.upper = level_bounds(bits, signed)
        self.step = nn.Parameter(torch.tensor(PLACEHOLDER_STEP))
        self.offset = nn.Parameter(torch.tensor(0.0)) if offset else None

    def _gradient_scale(self, x: Tensor) -> float:
        features = x[0].numel() if x.dim() > 1 else x.numel()
        return gradient_scale(features, self.upper)

    def _shifted(self, x: Tensor) -> Tensor:
        return x if self.offset is None else x - self.offset

    def forward(self, x: Tensor) -> Tensor:
        x_hat = fake_quant(self._shifted(x), self.step, self.lower, self.upper, self._gradient_scale(x))
        return x_hat if self.offset is None else x_hat + self.offset

    def codes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_bar, s)``: the codes and the (gradient-scaled) step; ``x_hat = x_bar s + beta``."""
        s = apply(GradScale, self.step, self._gradient_scale(x))
        return apply(LSQCodes, self._shifted(x), s, self.lower, self.upper), s

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, offset={self.offset is not None}"


def computes_on_codes(x: Tensor) -> bool:
    """Whether quantized layers compute on integer codes for the input ``x``: under autocast on its device.

    Float16 autocast is refused: sums of codes overflow float16 (a 3x3 conv of 512 channels of 4-bit codes
    reaches 7 * 15 * 4608 = 483,840 > 65,504).
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return False
    if torch.get_autocast_dtype(device) == torch.float16:
        raise QgenError(
            "quantized layers under float16 autocast: sums of integer codes overflow float16; "
            "use torch.autocast(..., dtype=torch.bfloat16)"
        )
    return True


def quantized_matmul(
    a: Tensor, qa: ActivationQuantizer | None, b: Tensor, qb: ActivationQuantizer | None
) -> Tensor:
    """``a_hat @ b_hat``, each operand quantized by its quantizer (``None``: left as it is).

    With both quantized, without offsets, and under autocast, the product is computed on the codes and
    scaled in float32: ``s_a s_b (a_bar @ b_bar)``, cast to the autocast dtype.
    """
    codes = qa is not None and qb is not None and qa.offset is None and qb.offset is None
    if codes and computes_on_codes(a):
        (a_bar, s_a), (b_bar, s_b) = qa.codes(a), qb.codes(b)
        product = a_bar @ b_bar
        return (_at_least_float32(product) * (s_a * s_b)).to(product.dtype)
    return (a if qa is None else qa(a)) @ (b if qb is None else qb(b))


class QuantizedLayer(nn.Module):
    """Mixed into a conv/linear layer's class by :func:`quantize_layer`: the quantized layer's forward.

    The layer keeps its parameters and its own forward; ``input_quantizer`` (``None`` for weight-only
    quantization) quantizes its input, and under autocast the layer computes on integer codes (module
    docstring).
    """

    input_quantizer: ActivationQuantizer | None
    weight_in_one_node: tuple[Tensor, Tensor] | None = None
    """``(latent, w_hat)`` while :class:`WeightsInOneNode` has quantized the model's weights, else ``None``;
    ``w_hat`` serves only while the layer's latent weight is ``latent`` (not, say, under
    ``torch.func.functional_call`` with other weights)."""

    def forward(self, x: Tensor) -> Tensor:
        if computes_on_codes(x) and weight_quantizer(self) is not None:
            return self.forward_on_codes(x)
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        one_node = self.weight_in_one_node
        if one_node is not None and one_node[0] is self.parametrizations.weight.original:
            return self._forward_with(x, one_node[1])
        return super().forward(x)

    def _forward_with(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer's own forward with ``weight`` in place of ``self.weight``."""
        if isinstance(self, nn.Linear):
            return F.linear(x, weight, self.bias)
        return self._conv_forward(x, weight, self.bias)

    def forward_on_codes(self, x: Tensor) -> Tensor:
        """``s_x s_w layer(x_bar, w_bar) + beta s_w rowsum(w_bar) + b``, scaled and summed in float32.

        The forward under autocast (:meth:`forward`); in float32 or float64 it equals the fake-quantized
        forward up to rounding, with the same (LSQ) gradients. Needs a quantized weight.
        """
        quantizer = weight_quantizer(self)
        if quantizer is None:
            raise QgenError(f"{type(self).__name__} has no quantized weight to compute on codes")
        w_bar, scale = quantizer.codes(self.parametrizations.weight.original)
        offset_term = None
        if self.input_quantizer is not None:
            s_w, (x, s_x) = scale, self.input_quantizer.codes(x)
            scale = s_w * s_x
            if self.input_quantizer.offset is not None:  # Linear only (quantize_layer)
                offset_term = self.input_quantizer.offset * s_w * w_bar.sum(1)
        y = F.linear(x, w_bar) if isinstance(self, nn.Linear) else self._conv_forward(x, w_bar, None)
        out = _at_least_float32(y) * scale
        if offset_term is not None:
            out = out + offset_term
        if self.bias is not None:
            out = out + (
                self.bias if isinstance(self, nn.Linear) else self.bias.view(-1, *[1] * (y.dim() - 2))
            )
        return out.to(y.dtype)


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or as it is when it is wider (float64 tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@functools.cache
def quantized_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` with :class:`QuantizedLayer` mixed in (one class per layer type)."""
    return type(f"Quantized{cls.__name__}", (QuantizedLayer, cls), {})


def quantize_layer(
    layer: nn.Module, weight_bits: int | None, input_quantizer: ActivationQuantizer | None
) -> None:
    """Make ``layer`` (a :data:`QUANTIZABLE` module) a quantized layer, in place.

    Its weight gets an :class:`LSQWeightQuantizer` of ``weight_bits`` (``None``: the weight stays float),
    its input ``input_quantizer`` (``None``: the input stays float). The step of the weight is initialised
    from the current weight, so quantize *after* loading pretrained weights. An input offset is refused
    on a convolution (its zero padding would not be offset).
    """
    name = type(layer).__name__
    if not isinstance(layer, QUANTIZABLE):
        raise QgenError(f"cannot quantize a {name}; quantizable layers: {[c.__name__ for c in QUANTIZABLE]}")
    if isinstance(layer, QuantizedLayer) or parametrize.is_parametrized(layer, "weight"):
        raise QgenError(f"{name} is already quantized; quantize a model only once")
    if (
        input_quantizer is not None
        and input_quantizer.offset is not None
        and not isinstance(layer, nn.Linear)
    ):
        raise QgenError(f"an input offset needs a Linear layer, not a {name}")
    layer.__class__ = quantized_class(type(layer))
    layer.register_module("input_quantizer", input_quantizer)
    if weight_bits is not None:
        parametrize.register_parametrization(layer, "weight", LSQWeightQuantizer(layer.weight, weight_bits))


class WeightsInOneNode:
    """Every quantized weight of a model computed by one autograd node per forward pass.

    Inside ``with weights.quantized():`` the model's quantized layers use weights that one
    :class:`~qgen.quant.ops.LSQFakeQuantMany` node quantized on entry, in place of each layer's own
    quantizer: the same values and gradients, bit for bit, with one Python call for all weights in each
    direction instead of one per layer (inside a training step such a call costs more than the
    elementwise work of a small layer's weight on a CPU; ``bench/lsq_overhead.py``). The node's backward runs
    once every weight's gradient has arrived. The latent weights and steps are those at construction:
    build it after loading a checkpoint, once per epoch.

    Nothing is done under autocast, where quantized layers compute on integer codes
    (:func:`computes_on_codes`), or for a model without weight quantizers. Plain eager autograd only: not
    under ``torch.func`` transforms or ``torch.compile``, which see the per-layer quantizers.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers: list[QuantizedLayer] = []
        self.ranges: list[tuple[int, int, float]] = []
        self.latents: list[Tensor] = []
        self.steps: list[Tensor] = []
        for layer in model.modules():
            quantizer = weight_quantizer(layer)
            if isinstance(layer, QuantizedLayer) and quantizer is not None:
                latent = layer.parametrizations.weight.original
                self.layers.append(layer)
                self.ranges.append(quantizer.range_of(latent))
                self.latents.append(latent)
                self.steps.append(quantizer.step)

    @contextlib.contextmanager
    def quantized(self) -> Iterator[None]:
        """The block in which the layers use the weights quantized in one node on entry."""
        if not self.layers or torch.is_autocast_enabled(self.latents[0].device.type):
            yield
            return
        w_hats = LSQFakeQuantMany.apply(tuple(self.ranges), *self.latents, *self.steps)
        for layer, latent, w_hat in zip(self.layers, self.latents, w_hats, strict=True):
            layer.weight_in_one_node = (latent, w_hat)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.weight_in_one_node = None


def weight_quantizer(layer: nn.Module) -> LSQWeightQuantizer | None:
    """The LSQ quantizer of ``layer``'s weight, or ``None``."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    return next((p for p in layer.parametrizations.weight if isinstance(p, LSQWeightQuantizer)), None)
