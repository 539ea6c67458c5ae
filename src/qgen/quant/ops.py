"""LSQ's fake quantization and its integer codes as fused autograd nodes (Esser et al., ICLR 2020).

A tensor ``x`` (a weight or an activation) is quantized with a learned step ``s`` to the integer range
``[lower, upper]`` (paper eqs. 1-2; LSQ eqs. 1-2):

    x_bar = round(clip(x / s, lower, upper))                 (1)   the integer code
    x_hat = x_bar * s                                         (2)   the fake-quantized value

with ``[lower, upper] = [-2^(b-1), 2^(b-1) - 1]`` for signed data (weights, and activations that can be
negative) and ``[0, 2^b - 1]`` for unsigned data (activations after a ReLU). Gradients follow LSQ: the
rounding is a straight-through estimator, so ``d x_hat / d x`` is 1 inside the clip range and 0 outside;
``d x_hat / d s`` is ``round(x/s) - x/s`` inside the range and the clip bound outside, and the step's
gradient is scaled by ``g = 1 / sqrt(N * Q_P)`` (LSQ §2.2), ``N`` the number of weights of the layer or the
number of features of the activation; ``x/s`` exactly at a bound counts as clipped.

- :class:`LSQFakeQuant` computes ``x_hat`` and both gradients in one node (the fake-quantized forward).
- :class:`LSQCodes` computes ``x_bar`` with the gradients of ``x_hat / s`` at fixed ``s``, and
  :class:`GradScale` scales a step's gradient by ``g``; together, ``s' = GradScale(s)``,
  ``LSQCodes(x, s') * s'`` has the values and LSQ gradients of ``LSQFakeQuant(x, s)``. A quantized layer
  computes on the codes this way where its matrix products run in a 16-bit float (:mod:`qgen.quant.layers`):
  ``|x_bar| <= 256`` is exact in bfloat16, while ``x_bar * s`` is not.

Each is applied through :func:`apply` (:func:`fake_quant` for the first), which runs it as a classic
``forward(ctx, ...)`` Function in plain eager mode: the ``setup_context`` form, which ``torch.func``
transforms and TorchDynamo need, costs more per call than the elementwise work of a small layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from qgen.errors import QgenError


def level_bounds(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integer range ``(lower, upper)``: ``(-2^(b-1), 2^(b-1) - 1)`` signed (eq. 1), ``(0, 2^b - 1)``
    unsigned (LSQ §2, activations after a ReLU)."""
    if bits < 2:
        raise QgenError(f"bits must be >= 2, got {bits}")
    if not signed:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def initial_step(x: Tensor, bits: int, signed: bool = True) -> Tensor:
    """LSQ's initial step ``s0 = 2 * mean|x| / sqrt(Q_P)`` (Esser et al. 2020, §2.1), ``Q_P`` the upper
    bound of the range (:func:`level_bounds`)."""
    _, q_p = level_bounds(bits, signed)
    return 2 * x.detach().abs().mean() / math.sqrt(q_p)


def gradient_scale(n: int, upper: int) -> float:
    """LSQ's step-gradient scale ``g = 1 / sqrt(N * Q_P)`` (§2.2)."""
    return 1.0 / math.sqrt(n * upper)


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
    every op used has a batching rule. The backward is itself differentiable (double backward, for the
    Hessian of a network whose activations stay quantized). Forward mode (``torch.func.jvp``) is
    :class:`LSQFakeQuantJvp`'s: TorchDynamo does not trace a Function that defines ``jvp``
    (:func:`fake_quant` picks).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, s: Tensor, lower: int, upper: int, grad_scale: float) -> Tensor:
        return LSQCodes.forward(x, s, lower, upper).mul_(s)  # the codes' one new tensor, scaled in place

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, s, lower, upper, grad_scale = inputs
        ctx.save_for_backward(x, s)
        ctx.lower, ctx.upper, ctx.grad_scale = lower, upper, grad_scale

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        x, s = ctx.saved_tensors
        return *_gradients(x, s, grad_out, ctx.lower, ctx.upper, ctx.grad_scale), None, None, None


class LSQFakeQuantJvp(LSQFakeQuant):
    """:class:`LSQFakeQuant` with forward-mode differentiation: the tangent ``inside(x_t) + g d s_t`` is
    the transpose of the backward, so ``torch.func.jvp`` and ``vjp`` agree (``R(Δ)`` of a W/A model)."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        LSQFakeQuant.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:2])

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor | None, s_t: Tensor | None, *_: Any) -> Tensor:
        x, s = ctx.saved_tensors
        v = x / s
        out = torch.zeros_like(v) if x_t is None else _where_inside(x_t, v, ctx.lower, ctx.upper)
        if s_t is not None:
            out = out + _step_derivative_times(s_t * ctx.grad_scale, v, ctx.lower, ctx.upper)
        return out


class LSQFakeQuantMany(torch.autograd.Function):
    """:class:`LSQFakeQuant` of several tensors in one node: ``apply(ranges, *xs, *steps)`` returns the
    fake-quantized ``x_hat`` of each ``x`` with its step and its ``(lower, upper, grad_scale)`` range.

    Outputs and gradients come from the same per-tensor code as :class:`LSQFakeQuant`'s, so they are equal
    bit for bit; an output that gets no gradient gives its inputs none. What one node saves is a Python
    call per tensor in each direction, whose cost inside a training step exceeds the elementwise work of
    a small layer (:class:`qgen.quant.WeightsInOneNode`). Plain eager autograd only: no vmap rule, no
    forward mode.
    """

    @staticmethod
    def forward(ctx: Any, ranges: tuple[tuple[int, int, float], ...], *tensors: Tensor) -> tuple[Tensor, ...]:
        xs, steps = tensors[: len(ranges)], tensors[len(ranges) :]
        ctx.ranges = ranges
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)
        return tuple(LSQFakeQuant.forward(x, s, *r) for x, s, r in zip(xs, steps, ranges, strict=True))

    @staticmethod
    def backward(ctx: Any, *grad_outs: Tensor | None) -> tuple[Tensor | None, ...]:
        tensors = ctx.saved_tensors
        xs, steps = tensors[: len(ctx.ranges)], tensors[len(ctx.ranges) :]
        grads = [
            (None, None) if grad is None else _gradients(x, s, grad, *r)
            for x, s, grad, r in zip(xs, steps, grad_outs, ctx.ranges, strict=True)
        ]
        return None, *(g for g, _ in grads), *(g for _, g in grads)


def _gradients(
    x: Tensor, s: Tensor, grad_out: Tensor, lower: int, upper: int, grad_scale: float
) -> tuple[Tensor, Tensor]:
    """``(dL/dx, dL/ds)`` of LSQ's fake quantization for the upstream gradient ``grad_out``
    (:class:`LSQFakeQuant`, Esser et al. eq. 3 and §2.2)."""
    v = x / s
    grad_x = _where_inside(grad_out, v, lower, upper)
    grad_s = _step_derivative_times(grad_out, v, lower, upper).sum_to_size(s.shape)
    return grad_x, grad_s * grad_scale


def fake_quant(x: Tensor, s: Tensor, lower: int, upper: int, grad_scale: float) -> Tensor:
    """LSQ's fake quantization of ``x`` (:class:`LSQFakeQuant`), forward mode included outside
    ``torch.compile`` (which graph-breaks on a Function with ``jvp``, and never needs one while training)."""
    if torch.compiler.is_compiling():
        return LSQFakeQuant.apply(x, s, lower, upper, grad_scale)
    return apply(LSQFakeQuantJvp, x, s, lower, upper, grad_scale)


def _step_derivative_times(factor: Tensor, v: Tensor, lower: int, upper: int) -> Tensor:
    """``d x_hat / d s`` per element times ``factor``: ``d = round(v) - v`` inside the range, the bound
    outside (LSQ eq. 3).

    ``round(clip(v))`` is ``round(v)`` inside and the bound outside; ``v`` is subtracted inside only, so
    ``round(v) - v`` is exact (Sterbenz). In place on ``v`` unless gradients are being recorded (a double
    backward needs ``v`` as it was). The product is a new tensor: ``factor`` may be batched where ``v`` is
    not (batched gradients).
    """
    inside_v = _where_inside(v, v, lower, upper)
    if torch.is_grad_enabled():
        return (F.hardtanh(v, lower, upper).round() - inside_v) * factor
    return F.hardtanh_(v, lower, upper).round_().sub_(inside_v) * factor


def _where_inside(values: Tensor, v: Tensor, lower: int, upper: int) -> Tensor:
    """``values`` where ``lower < v < upper``, else 0: the gradient of ``F.hardtanh`` (one fused kernel;
    a bool mask with ``torch.where``/``masked_fill`` is several times slower on a CPU)."""
    return torch.ops.aten.hardtanh_backward(values, v, lower, upper)


def weight_step(step: Tensor, w: Tensor, bits: int) -> Tensor:
    """``step`` with LSQ's gradient scale ``1/sqrt(N Q_P)`` for the weight ``w`` at ``bits`` signed bits
    (:class:`GradScale`): its value, for computations that apply the step themselves."""
    return apply(GradScale, step, gradient_scale(w.numel(), level_bounds(bits)[1]))


def lsq_fake_quant(w: Tensor, s: Tensor, bits: int) -> Tensor:
    """Quantize the weight ``w`` with step ``s`` to ``bits`` signed bits: ``w_hat`` of paper eqs. 1-2.

    Differentiable in ``w`` (straight-through inside the clip range, zero outside) and in ``s``
    (``round(w/s) - w/s`` inside the range, the clip bound outside, times ``1/sqrt(N * Q_P)`` with ``N``
    the number of weights). A weight exactly at a bound (``w/s == -Q_N`` or ``Q_P``) counts as clipped,
    as in LSQ's eq. 3. One fused node, :class:`LSQFakeQuant`. ``s`` must be positive (a scalar tensor).
    """
    q_n, q_p = level_bounds(bits)
    return fake_quant(w, s, q_n, q_p, gradient_scale(w.numel(), q_p))


class LSQCodes(torch.autograd.Function):
    """The integer codes ``round(clip(x / s, lower, upper))`` with the straight-through gradients of
    ``x / s``: ``dL/dx = dL/dq / s`` and ``dL/ds = -sum(dL/dq * v / s)`` where ``lower < v < upper``
    (``v = x / s``), nothing where clipped (the code is the constant bound there).

    With ``s`` passed through :class:`GradScale`, ``LSQCodes(x, s) * s`` has the value and the LSQ
    gradients of :class:`LSQFakeQuant`: inside the range ``d(q s)/ds = q - v = round(v) - v``, outside
    ``q = `` the bound. Codes are returned in ``x``'s dtype.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, s: Tensor, lower: int, upper: int) -> Tensor:
        # In place on the one new tensor: on a CPU a fresh allocation per op costs more than the op.
        # hardtanh_ is clamp_(lower, upper) with a batching rule under vmap (clamp_ has none).
        return F.hardtanh_(x / s, lower, upper).round_()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, s, lower, upper = inputs
        ctx.save_for_backward(x, s)
        ctx.lower, ctx.upper = lower, upper

    @staticmethod
    def backward(ctx: Any, grad_q: Tensor) -> tuple[Tensor, Tensor, None, None]:
        x, s = ctx.saved_tensors
        v = x / s
        inside = _where_inside(grad_q, v, ctx.lower, ctx.upper)
        grad_s = -(inside * v).sum_to_size(s.shape) / s
        return inside / s, grad_s, None, None


class GradScale(torch.autograd.Function):
    """``s`` in the forward pass, its gradient times ``g`` in the backward (LSQ's ``gradscale``, one node
    that returns ``s`` itself rather than the composite's ``(s - g s).detach() + g s``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(s: Tensor, g: float) -> Tensor:
        return s.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.g = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.g, None


def _classic(cls: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """``cls``, a ``setup_context``-style Function, as a classic ``forward(ctx, ...)`` Function: its
    forward, saved state, backward and forward mode (``jvp``) called as they are."""

    def forward(ctx: Any, *args: Any) -> Tensor:
        output = cls.forward(*args)
        cls.setup_context(ctx, args, output)
        return output

    attrs: dict[str, Any] = {"forward": staticmethod(forward), "backward": staticmethod(cls.backward)}
    if cls.jvp is not torch.autograd.Function.jvp:
        attrs["jvp"] = staticmethod(cls.jvp)
    attrs["__doc__"] = f"{cls.__name__} as a classic Function (:func:`apply`)."
    return type(f"{cls.__name__}Classic", (torch.autograd.Function,), attrs)


_CLASSIC = {cls: _classic(cls) for cls in (LSQFakeQuantJvp, LSQCodes, GradScale)}


def apply(cls: type[torch.autograd.Function], *args: Any) -> Tensor:
    """``cls.apply(*args)``, for ``cls`` one of this module's Functions.

    In plain eager mode it runs ``cls``'s classic twin: ``Function.apply`` binds the arguments of a
    ``setup_context``-style Function by its signature on every call (``inspect.signature``), which in a
    CIFAR ResNet-18 training step cost about 0.1 ms per weight quantizer on this project's CPU, more than
    the quantizer's elementwise work on most of its layers (``bench/lsq_overhead.py``). Under a
    ``torch.func`` transform (vmap, grad, jvp) or TorchDynamo it runs ``cls`` itself, whose ``setup_context``
    form they need; both compute the same.
    """
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return cls.apply(*args)
    return _CLASSIC[cls].apply(*args)
