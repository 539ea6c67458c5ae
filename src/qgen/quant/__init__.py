"""LSQ quantization (Esser et al., ICLR 2020) of weights and, for W/A precisions, activations.

The paper quantizes each targeted layer's weight tensor ``w`` with a learned step ``s`` (paper eqs. 1-2):

    w_bar = round(clip(w / s, -2^(b-1), 2^(b-1) - 1))        (1)
    w_hat = w_bar * s                                         (2)

with LSQ's straight-through gradients and gradient scale (:mod:`qgen.quant.ops`, one fused node per
quantizer). A precision (:data:`qgen.vocab.PRECISION_FACTS`) names the bit widths: ``int8/int4/int2``
quantize weights only, as the paper; ``w8a8/w4a4/w2a2`` quantize the inputs of the quantized layers
too, LSQ's convention (unsigned after a ReLU, signed otherwise; :mod:`qgen.quant.layers`).

:func:`quantize_model` applies LSQ's layer policy: every conv/linear layer but the first and the last
(unless ``quantize_first_last``; the stem's and the classifier's inputs follow their weights). The step of a
weight starts at ``s0 = 2 * mean|w| / sqrt(Q_P)`` from the weights at quantization time; that of an
activation from the first training batch (:func:`calibrate_activations`). VVTQ's module policy for the
vision transformers is :mod:`qgen.vvtq`.

State-dict keys: a quantized layer's latent weight is ``<layer>.parametrizations.weight.original``, its
weight step ``<layer>.parametrizations.weight.0.step`` (as before activations were quantized) and its input
step ``<layer>.input_quantizer.step``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from qgen.errors import QgenError
from qgen.quant.layers import (
    QUANTIZABLE,
    ActivationQuantizer,
    LSQWeightQuantizer,
    QuantizedLayer,
    WeightsInOneNode,
    computes_on_codes,
    quantize_layer,
    quantized_matmul,
    weight_quantizer,
)
from qgen.quant.ops import (
    GradScale,
    LSQCodes,
    LSQFakeQuant,
    LSQFakeQuantJvp,
    LSQFakeQuantMany,
    fake_quant,
    initial_step,
    level_bounds,
    lsq_fake_quant,
)
from qgen.vocab import ACTIVATION_BITS, PRECISIONS

__all__ = [
    "PRECISIONS",
    "QUANTIZABLE",
    "STEP_KEY_SUFFIX",
    "STEP_MIN",
    "ActivationQuantizer",
    "GradScale",
    "LSQCodes",
    "LSQFakeQuant",
    "LSQFakeQuantJvp",
    "LSQFakeQuantMany",
    "LSQWeightQuantizer",
    "QuantizedLayer",
    "WeightsInOneNode",
    "activation_bits_of",
    "activation_quantizers",
    "bits_of",
    "calibrate_activations",
    "clamp_steps_",
    "computes_on_codes",
    "fake_quant",
    "initial_step",
    "input_signs",
    "latent_weight",
    "level_bounds",
    "lsq_fake_quant",
    "offset_parameters",
    "quantize_layer",
    "quantize_model",
    "quantized_matmul",
    "quantizer_parameters",
    "quantizers",
    "step_parameters",
    "step_sizes",
    "step_sizes_of_state",
    "weight_quantizer",
]

STEP_MIN: Final = 1e-8
"""Floor that keeps every learned step strictly positive (see :func:`clamp_steps_`)."""


def bits_of(precision: str) -> int | None:
    """Weight bit width of a precision name (``"int4"`` -> 4, ``"w2a2"`` -> 2, ``"fp32"`` -> None)."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise QgenError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}") from None


def activation_bits_of(precision: str) -> int | None:
    """Bit width of the quantized layers' inputs (``"w4a4"`` -> 4; ``None`` for weight-only precisions)."""
    bits_of(precision)
    return ACTIVATION_BITS[precision]


def quantize_model(
    model: nn.Module,
    bits: int | None,
    *,
    activation_bits: int | None = None,
    quantize_first_last: bool = False,
    example: Tensor | None = None,
) -> nn.Module:
    """Quantize every targeted conv/linear layer of ``model`` (in place): LSQ's layer policy.

    Targets are all ``Conv*d`` and ``Linear`` modules; the first and the last of them in definition order
    (the stem and the classifier of every registry model) are skipped unless ``quantize_first_last``. Each
    target's weight gets ``bits``; with ``activation_bits`` its input gets an :class:`ActivationQuantizer`,
    unsigned where the input is non-negative (after a ReLU) and signed otherwise, as a forward pass of
    ``example`` (an input batch, e.g. one random image) shows (:func:`input_signs`). ``bits=None``
    (FP32) returns the model unchanged. Weight steps are initialised eagerly from the current weights, so
    quantize *after* loading pretrained weights; activation steps by :func:`calibrate_activations`.
    """
    if bits is None:
        if activation_bits is not None:
            raise QgenError("activation_bits without weight bits: no precision quantizes only activations")
        return model
    level_bounds(bits)
    layers = [m for m in model.modules() if isinstance(m, QUANTIZABLE)]
    if not quantize_first_last:
        layers = layers[1:-1]
    signed: Mapping[nn.Module, bool] = {}
    if activation_bits is not None:
        if example is None:
            raise QgenError("quantizing activations needs an example input to tell signed from unsigned ones")
        signed = input_signs(model, layers, example)
    for layer in layers:
        inputs = None if activation_bits is None else ActivationQuantizer(activation_bits, signed[layer])
        quantize_layer(layer, bits, inputs)
    return model


@torch.no_grad()
def input_signs(model: nn.Module, layers: list[nn.Module], example: Tensor) -> dict[nn.Module, bool]:
    """Layer -> whether its input takes negative values in an eval-mode forward pass of ``example``.

    A ReLU's output is non-negative whatever the input, so a layer after one reads as unsigned; any other
    input (a normalized image, a BatchNorm or residual output, a GELU) has negative values for a random
    ``example``. The model's training flags are restored; a layer the pass does not reach is an error.
    """
    seen: dict[nn.Module, bool] = {}

    def record(layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        seen[layer] = seen.get(layer, False) or bool((args[0] < 0).any())

    flags = {m: m.training for m in model.modules()}
    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
        for module, flag in flags.items():
            module.train(flag)
    missing = [type(m).__name__ for m in layers if m not in seen]
    if missing:
        raise QgenError(
            f"the example forward pass did not reach {len(missing)} layer(s) to quantize: {missing}"
        )
    return {layer: seen[layer] for layer in layers}


Reduce = Callable[[Tensor], Tensor]
"""Averages a tensor over data-parallel processes (identity for one process)."""


@torch.no_grad()
def calibrate_activations(model: nn.Module, images: Tensor, average: Reduce | None = None) -> int:
    """Set every activation step to LSQ's ``2 * mean|x| / sqrt(Q_P)`` of its input on ``images`` (§2.1).

    One forward pass of ``images`` (the first training batch) in the model's current mode; each quantizer's
    step is set from its input just before it quantizes it, so later quantizers see earlier ones already
    calibrated. ``average`` combines ``mean|x|`` over data-parallel processes, which then agree on every
    step (each process passing its slice of the global batch). Buffers (BatchNorm statistics) and the
    random number streams are left as they were. Returns the number of quantizers calibrated.
    """
    found = list(activation_quantizers(model).values())
    if not found:
        return 0

    def calibrate(quantizer: ActivationQuantizer, args: tuple[Tensor, ...]) -> None:
        magnitude = args[0].detach().abs().float().mean()
        magnitude = magnitude if average is None else average(magnitude)
        quantizer.step.copy_(initial_step(magnitude, quantizer.bits, quantizer.signed))

    buffers = {name: b.clone() for name, b in model.named_buffers()}
    hooks = [q.register_forward_pre_hook(calibrate) for q in found]
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    return len(found)


def quantizers(model: nn.Module) -> dict[str, LSQWeightQuantizer]:
    """Layer name -> its LSQ weight quantizer, in definition order."""
    found: dict[str, LSQWeightQuantizer] = {}
    for name, module in model.named_modules():
        quantizer = weight_quantizer(module)
        if quantizer is not None:
            found[name] = quantizer
    return found


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """Module name -> activation quantizer (inputs of quantized layers and VVTQ's attention), in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ActivationQuantizer)}


def step_sizes(model: nn.Module) -> dict[str, float]:
    """Layer name -> learned weight step ``s`` (= quantization bin width, paper Figure 1)."""
    return {name: float(q.step.detach()) for name, q in quantizers(model).items()}


STEP_KEY_SUFFIX: Final = ".parametrizations.weight.0.step"
"""How a quantized layer's weight step is named in a state dict (``<layer>`` + suffix)."""


def step_sizes_of_state(state_dict: Mapping[str, Tensor]) -> dict[str, float]:
    """Layer name -> learned weight step, read from a saved state dict without building the model.

    Layers come in state-dict order, which is definition order; equals :func:`step_sizes` of the model.
    """
    return {
        key.removesuffix(STEP_KEY_SUFFIX): float(value)
        for key, value in state_dict.items()
        if key.endswith(STEP_KEY_SUFFIX)
    }


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every learned step of ``model``, of weights and of activations (positive: :func:`clamp_steps_`)."""
    weights = [q.step for q in quantizers(model).values()]
    return weights + [q.step for q in activation_quantizers(model).values()]


def offset_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned offsets ``beta`` of the activation quantizers that have one."""
    return [q.offset for q in activation_quantizers(model).values() if q.offset is not None]


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything the quantizers learn (steps and offsets), which the measures never perturb. (Weight decay:
    steps per ``step_weight_decay``, offsets as other parameters; :func:`qgen.train.build_optimizer`.)"""
    return step_parameters(model) + offset_parameters(model)


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
