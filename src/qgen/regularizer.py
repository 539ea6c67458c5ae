"""The regularizer ``R(Δ)`` of paper eq. 7, measured on a quantized network (beyond the paper).

QGen §3 models a quantized network as its float network plus weight noise and expands the output to
first order (eq. 6), ``f(x, w + Δ) ≈ f(x, w) + Δᵀ ∇_w f(x, w)``; for a squared loss the noisy loss is
then ``L + R(Δ)`` with ``R(Δ) = E ‖Δᵀ ∇_w ŷ‖²`` (eq. 7). This module measures ``R`` exactly, with
forward-mode differentiation (one Jacobian-vector product per batch gives ``J d`` for every sample):

    R = (1/N) Σ_n ‖J_n d‖²,     J_n = ∂f(x_n, ·)/∂W at the expansion point p,

``f`` the logits and ``N`` the number of samples the batches yield.

**Sign and expansion point.** Eq. 3 defines ``Δ = w - ŵ`` (latent minus quantized weights), while
eqs. 5-6 write the quantized output as ``f(x, w + Δ)``; with eq. 3's ``Δ`` the quantized weights are
``w - Δ``. ``R`` is quadratic in the direction, so its value does not depend on that sign, but the
Taylor check does. Here the expansion point ``p`` and the other point ``q`` are

* ``at="latent"`` (default, eq. 6: ``f(x, w)`` is the network before quantization): ``p = w``,
  ``q = ŵ``, direction ``d = q - p = ŵ - w = -Δ``;
* ``at="quantized"``: ``p = ŵ``, ``q = w``, ``d = w - ŵ = Δ``;

and the Taylor check compares the exact change ``f(x, q) - f(x, p)`` with ``J d``, and the loss change
``L(q) - L(p)`` with ``g·d`` and ``g·d + ½ dᵀ H d`` (``g``, ``H``: gradient and Hessian of the mean
cross-entropy at ``p``; ``H d`` is one Hessian-vector product of :mod:`qgen.hessian`).

**Weights.** ``W`` is the weight of every LSQ-quantized layer (:func:`qgen.quant.quantizers`);
biases, BatchNorm and the unquantized first and last layers have ``Δ = 0`` and stay fixed. ``R`` covers
weight noise only: in a W/A model (``w4a4`` etc.) the activation quantizers stay active at both points, so
the rounding of the activations is part of ``f`` rather than of ``Δ``. The
Jacobian is taken with respect to the layers' own (unfolded) weights, BatchNorm in eval mode (running
statistics). All evaluations are functional calls on a plain copy of the model
(:func:`qgen.folding.materialize_weights`); the model passed in is not modified.

**Expected value** under the paper's noise model: ``Δ_i ~ U[-s_l/2, s_l/2]`` independently, ``s_l`` the
learned step (bin width ``δ``) of the weight's layer, so ``E‖J Δ‖² = Σ_i (s_i²/12) ‖J_{:,i}‖²``. It is
estimated Hutchinson-style (Hutchinson, 1989) as the mean of ``R`` over ``noise_samples`` uniform draws,
each one JVP per batch, with the draws' standard error.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.nn import functional as F

from qgen import hessian
from qgen.folding import materialize_weights
from qgen.quant import LSQWeightQuantizer, latent_weight, level_bounds, quantize_model, quantizers

ExpansionPoint = Literal["latent", "quantized"]
DIRECTIONS: dict[str, str] = {"latent": "w_hat - w", "quantized": "w - w_hat"}
"""Expansion point -> the direction ``d = q - p`` in words (``w`` latent, ``w_hat`` quantized)."""


@dataclass(frozen=True)
class RegularizerSettings:
    """The choices of one measurement of ``R``: the expansion point and the uniform-noise estimate."""

    at: ExpansionPoint = "latent"
    noise_samples: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.at not in DIRECTIONS:
            raise ValueError(f"regularizer setting at={self.at!r}; expected one of {list(DIRECTIONS)}")
        if self.noise_samples < 2:
            raise ValueError(
                f"regularizer setting noise_samples={self.noise_samples}; at least 2 give a standard error"
            )


@dataclass(frozen=True)
class LayerNoise:
    """One quantized layer: its realized noise and ``R`` with the direction restricted to it.

    ``delta_rms_over_step`` is ``rms(w - ŵ) / s``; the uniform model predicts ``1/√12 ≈ 0.2887``.
    ``clipped_fraction`` counts weights outside the clip range by more than half a bin (``|Δ| > s/2``).
    ``share`` is ``r / R``; shares need not sum to 1, since ``R`` also holds cross-layer terms.
    """

    layer: str
    bits: int
    step: float
    numel: int
    delta_rms_over_step: float
    clipped_fraction: float
    r: float
    share: float | None


@dataclass(frozen=True)
class ExpectedRegularizer:
    """``E_Δ ‖J Δ‖²`` (mean over samples) for ``Δ_i ~ U[-s/2, s/2]``: mean of ``samples`` draws, its
    standard error (sample std over ``√samples``) and the generator seed."""

    value: float
    std_error: float
    samples: int
    seed: int


@dataclass(frozen=True)
class TaylorCheck:
    """How well the expansion of eq. 6 describes the step from ``p`` to ``q`` (see the module docstring).

    ``output_change_sq`` is ``(1/N) Σ_n ‖f(x_n, q) - f(x_n, p)‖²``, the exact counterpart of ``R``.
    ``output_relative_error`` is ``sqrt(Σ_n ‖f(x_n, q) - f(x_n, p) - J_n d‖² / Σ_n ‖f(x_n, q) -
    f(x_n, p)‖²)``. Losses are the mean cross-entropy over all samples; ``loss_first_order`` is ``g·d``,
    ``loss_second_order`` is ``g·d + ½ dᵀ H d`` and each relative error is ``|L(q) - L(p) - estimate| /
    |L(q) - L(p)|``. A relative error is ``None`` where its denominator is 0.
    """

    output_change_sq: float
    output_relative_error: float | None
    loss_at_point: float
    loss_at_other: float
    loss_change: float
    loss_first_order: float
    loss_second_order: float
    loss_first_order_relative_error: float | None
    loss_second_order_relative_error: float | None


@dataclass(frozen=True)
class RegularizerResult:
    """``R`` of one quantized model on the given batches (JSON-ready with :func:`dataclasses.asdict`).

    ``at`` is the expansion point and ``direction`` the direction ``d`` in words; ``samples`` is ``N``.
    ``value`` is ``R``, ``cross_layer`` is ``R - Σ_l r_l``.
    """

    at: ExpansionPoint
    direction: str
    samples: int
    value: float
    cross_layer: float
    layers: list[LayerNoise]
    expected: ExpectedRegularizer
    taylor: TaylorCheck


def regularizer(
    model: nn.Module, batches: hessian.Batches, settings: RegularizerSettings | None = None
) -> RegularizerResult:
    """``R`` of eq. 7 for the realized noise of ``model``'s quantized layers, its expected value under the
    uniform noise model, the per-layer terms and the Taylor check (module docstring).

    ``batches`` yields ``(images, labels)`` on the model's device and must yield the same batches on
    each pass (two passes: the JVPs, then the Hessian-vector product). ``model`` is left unchanged.
    """
    settings = settings or RegularizerSettings()
    layer_quantizers = quantizers(model)
    if not layer_quantizers:
        raise ValueError(
            f"{type(model).__name__} has no LSQ-quantized layer (an FP32 model, or one whose only "
            "conv/linear layers are the unquantized first and last); use initial_step_regularizer("
            "model, batches, bits) for the regularizer a bit width would add"
        )
    keys = {layer: _weight_key(layer) for layer in layer_quantizers}
    latent, quantized = _latent_and_quantized(model, keys)
    point, other = (latent, quantized) if settings.at == "latent" else (quantized, latent)
    direction = {k: other[k] - point[k] for k in point}
    plain = materialize_weights(model, quantized=settings.at == "quantized").eval()
    steps = {keys[layer]: q.step.detach() for layer, q in layer_quantizers.items()}

    sums = _first_order_pass(plain, batches, point, other, direction, steps, settings)
    n = sums.samples
    params = dict(plain.named_parameters())
    hv = hessian.hessian_vector_product(
        plain, batches, list(direction.values()), [params[k] for k in direction]
    )
    curvature = sum(
        float((d.double() * h.double()).sum()) for d, h in zip(direction.values(), hv, strict=True)
    )

    value = sums.jd_sq / n
    layer_r = {k: r / n for k, r in sums.layer_jd_sq.items()}
    draws = torch.tensor(sums.noise_jd_sq, dtype=torch.float64) / n
    loss_p, loss_q, first = sums.loss_point / n, sums.loss_other / n, sums.loss_slope / n
    second = first + 0.5 * curvature
    change = loss_q - loss_p
    return RegularizerResult(
        at=settings.at,
        direction=DIRECTIONS[settings.at],
        samples=n,
        value=value,
        cross_layer=value - sum(layer_r.values()),
        layers=[
            _layer_noise(layer, q, latent[keys[layer]], quantized[keys[layer]], layer_r[keys[layer]], value)
            for layer, q in layer_quantizers.items()
        ],
        expected=ExpectedRegularizer(
            value=float(draws.mean()),
            std_error=float(draws.std()) / math.sqrt(len(draws)),
            samples=settings.noise_samples,
            seed=settings.seed,
        ),
        taylor=TaylorCheck(
            output_change_sq=sums.change_sq / n,
            output_relative_error=_ratio(math.sqrt(sums.residual_sq), math.sqrt(sums.change_sq)),
            loss_at_point=loss_p,
            loss_at_other=loss_q,
            loss_change=change,
            loss_first_order=first,
            loss_second_order=second,
            loss_first_order_relative_error=_ratio(abs(change - first), abs(change)),
            loss_second_order_relative_error=_ratio(abs(change - second), abs(change)),
        ),
    )


def initial_step_regularizer(
    model: nn.Module,
    batches: hessian.Batches,
    bits: int,
    *,
    quantize_first_last: bool = False,
    settings: RegularizerSettings | None = None,
) -> RegularizerResult:
    """:func:`regularizer` of an FP32 ``model`` quantized to ``bits`` with LSQ's initial step of its own
    weights (:func:`qgen.quant.initial_step`): the regularizer that bit width would add here.

    The layers are those :func:`qgen.quant.quantize_model` quantizes (``quantize_first_last`` as in the
    run's spec). Since ``s0 ∝ 1/√Q_P`` in every layer, the expected value at two bit widths drawn with one
    seed is in the exact ratio of their ``Q_P``. ``model`` is left unchanged.
    """
    if quantizers(model):
        raise ValueError(
            f"{type(model).__name__} is already quantized; use regularizer(model, batches) for its own steps"
        )
    quantized = quantize_model(copy.deepcopy(model), bits, quantize_first_last=quantize_first_last)
    return regularizer(quantized, batches, settings)


@dataclass
class _Sums:
    """Sums over all samples of one pass (:func:`_first_order_pass`); divided by ``samples`` later."""

    samples: int
    jd_sq: float
    layer_jd_sq: dict[str, float]
    noise_jd_sq: list[float]
    change_sq: float
    residual_sq: float
    loss_point: float
    loss_other: float
    loss_slope: float


@torch.no_grad()
def _first_order_pass(
    plain: nn.Module,
    batches: hessian.Batches,
    point: dict[str, Tensor],
    other: dict[str, Tensor],
    direction: dict[str, Tensor],
    steps: dict[str, Tensor],
    settings: RegularizerSettings,
) -> _Sums:
    """One pass over ``batches``: every JVP at ``point`` (full, per layer, per noise draw) and the
    forward pass at ``other``. ``plain`` holds ``point`` as its own weights."""
    sums = _Sums(
        0, 0.0, dict.fromkeys(direction, 0.0), [0.0] * settings.noise_samples, 0.0, 0.0, 0.0, 0.0, 0.0
    )
    device = next(iter(point.values())).device
    for images, labels in batches:
        outputs = _outputs(plain, images, labels)
        (logits, loss), (jd, slope) = jvp(outputs, (point,), (direction,))
        other_logits, other_loss = outputs(other)
        change = other_logits - logits
        sums.samples += len(labels)
        sums.jd_sq += _sq(jd)
        sums.change_sq += _sq(change)
        sums.residual_sq += _sq(change - jd)
        sums.loss_point += float(loss)
        sums.loss_other += float(other_loss)
        sums.loss_slope += float(slope)
        for key in direction:
            _, (layer_jd, _) = jvp(outputs, ({key: point[key]},), ({key: direction[key]},))
            sums.layer_jd_sq[key] += _sq(layer_jd)
        generator = torch.Generator(device=device).manual_seed(settings.seed)  # same draws for every batch
        for k in range(settings.noise_samples):
            noise = {key: _uniform_noise(p, steps[key], generator) for key, p in point.items()}
            _, (noise_jd, _) = jvp(outputs, (point,), (noise,))
            sums.noise_jd_sq[k] += _sq(noise_jd)
    if sums.samples == 0:
        raise ValueError("the batches yielded no samples")
    return sums


def _outputs(
    plain: nn.Module, images: Tensor, labels: Tensor
) -> Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]:
    """Weights -> (logits as ``(B, K)``, summed cross-entropy) of ``plain`` on one batch.

    The cross-entropy is taken in float64: the loss change between two nearby points is a small
    difference of large sums.
    """

    def outputs(weights: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = functional_call(plain, weights, (images,)).reshape(len(labels), -1)
        return logits, F.cross_entropy(logits.double(), labels, reduction="sum")

    return outputs


def _uniform_noise(like: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
    """``U[-s/2, s/2]`` noise shaped like ``like``."""
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return (u - 0.5) * step.to(like.dtype)


def _latent_and_quantized(
    model: nn.Module, keys: dict[str, str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Weight key -> latent ``w`` and quantized ``ŵ`` (eq. 2) of each quantized layer, detached."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        latent = {key: latent_weight(modules[layer]).detach().clone() for layer, key in keys.items()}
        quantized = {key: modules[layer].weight.detach().clone() for layer, key in keys.items()}
    return latent, quantized


def _layer_noise(
    layer: str, quantizer: LSQWeightQuantizer, w: Tensor, w_hat: Tensor, r: float, total: float
) -> LayerNoise:
    """The noise statistics of one layer (see :class:`LayerNoise`)."""
    step = float(quantizer.step.detach())
    q_n, q_p = level_bounds(quantizer.bits)
    scaled = w.double() / step
    clipped = (scaled > q_p + 0.5) | (scaled < q_n - 0.5)
    return LayerNoise(
        layer=layer,
        bits=quantizer.bits,
        step=step,
        numel=w.numel(),
        delta_rms_over_step=float((w - w_hat).double().square().mean().sqrt()) / step,
        clipped_fraction=float(clipped.double().mean()),
        r=r,
        share=_ratio(r, total),
    )


def _weight_key(layer: str) -> str:
    """The name of a layer's weight in the plain copy (``""`` is the model itself)."""
    return f"{layer}.weight" if layer else "weight"


def _sq(x: Tensor) -> float:
    """``Σ x²`` accumulated in float64."""
    return float(x.double().square().sum())


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator != 0 else None
