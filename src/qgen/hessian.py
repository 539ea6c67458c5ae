"""Curvature of the training loss: Hessian-vector products, the top Hessian eigenvalue and the trace.

Everything here concerns the mean cross-entropy over every sample a loader yields,
``L(θ) = (1/N) Σ_i CE(f_θ(x_i), y_i)``, and its Hessian ``H = ∇²L`` with respect to a chosen list of
parameters ``θ``, which is never formed:

* :func:`hessian_vector_product` computes ``H v`` exactly by double backpropagation (Pearlmutter, 1994):
  per batch, the gradient ``g`` is built with ``create_graph=True`` and ``H v = ∇(g · v)``; batches are
  weighted by their size, so unequal batches give the same ``H`` as one batch of all the data;
* :func:`top_eigenvalue` runs power iteration on ``H v``;
* :func:`trace` is Hutchinson's (1989) estimator, ``tr H = E[zᵀ H z]`` for Rademacher ``z``.

PyHessian (Yao et al., 2020) reports the same two quantities. The model runs in eval mode, so batch norm
uses its running statistics and does not update them, and it is left as it was found: weights, buffers,
``requires_grad`` flags and every module's training flag. Power iteration and the trace estimator make
many passes over the loader, which must yield the same batches on each pass (qgen's loaders do for a
fixed epoch). Random vectors come from a generator seeded by ``seed``, so results are reproducible on one
device. Both estimators log their progress at INFO: the first pass, then at most every
:data:`PROGRESS_EVERY_S` seconds (checked once per pass), and the result.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qgen.progress import ProgressClock, duration

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0
"""Seconds between progress lines of power iteration and the trace estimator (the first pass always logs)."""

Batches = Iterable[tuple[Tensor, Tensor]]
"""Any iterable of ``(images, labels)`` batches on the model's device, e.g. a ``qgen.data.BatchLoader``."""


@dataclass(frozen=True)
class EigenResult:
    """Power iteration's estimate of the dominant Hessian eigenvalue.

    ``history`` holds the Rayleigh quotient ``vᵀ H v`` after each iteration; ``value`` is its last entry.
    """

    value: float
    iterations: int
    converged: bool
    history: list[float]


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson's estimate of ``tr H``: the mean of ``samples`` draws of ``zᵀ H z`` and its standard error.

    ``history`` holds the running mean after each draw; ``value`` is its last entry.
    """

    value: float
    std_error: float
    samples: int
    history: list[float]


def hessian_vector_product(
    model: nn.Module, loader: Batches, vectors: Sequence[Tensor], params: Sequence[Tensor]
) -> list[Tensor]:
    """``H v`` for the mean cross-entropy over ``loader``, ``H`` being the Hessian with respect to ``params``.

    ``vectors`` holds ``v`` as one tensor per parameter, shaped like it, and so does the result.
    """
    params = _checked_params(model, params)
    if len(vectors) != len(params) or any(v.shape != p.shape for v, p in zip(vectors, params, strict=True)):
        raise ValueError("vectors must hold one tensor per parameter, shaped like that parameter")
    with _curvature_mode(model, params):
        return _hvp(model, loader, vectors, params)


def top_eigenvalue(
    model: nn.Module,
    loader: Batches,
    *,
    params: Sequence[Tensor] | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> EigenResult:
    """The Hessian eigenvalue of largest magnitude, by power iteration.

    From a standard normal start drawn with ``seed``, repeat ``v ← H v / ‖H v‖`` until the Rayleigh quotient
    ``vᵀ H v`` (``‖v‖ = 1``) changes by less than ``tol`` relative to the previous one, or ``max_iter``
    iterations have run (``converged=False``). Near a minimum ``H`` is close to positive semi-definite and
    this is its largest eigenvalue. ``params`` defaults to every parameter that requires grad.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    params = _checked_params(model, params)
    generator = _generator(params, seed)
    start = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in params]
    start_norm = _dot(start, start).sqrt()
    v = [x / start_norm for x in start]
    history: list[float] = []
    clock = ProgressClock(PROGRESS_EVERY_S)
    with _curvature_mode(model, params):
        for iteration in range(1, max_iter + 1):
            hv = _hvp(model, loader, v, params)
            quotient, norm = torch.stack([_dot(v, hv), _dot(hv, hv).sqrt()]).tolist()
            history.append(quotient)
            if iteration == 1 or clock.due():
                log.info(
                    "top eigenvalue: iteration %d (at most %d), estimate %.6g; elapsed %s",
                    iteration,
                    max_iter,
                    quotient,
                    duration(clock.elapsed()),
                )
            if norm == 0.0:  # H v = 0 for a random v, so H = 0 almost surely (e.g. a saturated softmax)
                return _eigen_result(quotient, iteration, True, history, clock)
            if iteration > 1 and abs(quotient - history[-2]) < tol * abs(history[-2]):
                return _eigen_result(quotient, iteration, True, history, clock)
            v = [h / norm for h in hv]
    return _eigen_result(history[-1], max_iter, False, history, clock)


def _eigen_result(
    value: float, iterations: int, converged: bool, history: list[float], clock: ProgressClock
) -> EigenResult:
    """The result of :func:`top_eigenvalue`, logged."""
    log.info(
        "top eigenvalue: %.6g after %d iterations (%s) in %s",
        value,
        iterations,
        "converged" if converged else "not converged",
        duration(clock.elapsed()),
    )
    return EigenResult(value, iterations, converged, history)


def trace(
    model: nn.Module,
    loader: Batches,
    *,
    params: Sequence[Tensor] | None = None,
    samples: int = 100,
    seed: int = 0,
) -> TraceResult:
    """Hutchinson's (1989) estimate of ``tr H``: the mean of ``zᵀ H z`` over ``samples`` Rademacher ``z``.

    Each draw is unbiased, ``E[zᵀ H z] = tr H``, with variance ``2 Σ_{i≠j} H_ij²``; ``std_error`` is the
    sample standard deviation of the draws over ``√samples``. ``params`` defaults to every parameter that
    requires grad.
    """
    if samples < 2:
        raise ValueError(f"samples must be at least 2 to give a standard error, got {samples}")
    params = _checked_params(model, params)
    generator = _generator(params, seed)
    draws = []
    clock = ProgressClock(PROGRESS_EVERY_S)
    with _curvature_mode(model, params):
        for probe in range(1, samples + 1):
            z = [torch.empty_like(p).bernoulli_(0.5, generator=generator).mul_(2).sub_(1) for p in params]
            draws.append(_dot(z, _hvp(model, loader, z, params)))
            if probe == 1 or clock.due():
                elapsed = clock.elapsed()
                log.info(
                    "Hessian trace: probe %d/%d, running mean %.6g; elapsed %s, ~%s left",
                    probe,
                    samples,
                    float(torch.stack(draws).mean()),
                    duration(elapsed),
                    duration(elapsed / probe * (samples - probe)),
                )
    values = torch.stack(draws)
    running = values.cumsum(0) / torch.arange(1, samples + 1, dtype=values.dtype, device=values.device)
    history = running.tolist()
    std_error = float(values.std()) / math.sqrt(samples)
    log.info(
        "Hessian trace: %.6g +- %.2g from %d probes in %s",
        history[-1],
        std_error,
        samples,
        duration(clock.elapsed()),
    )
    return TraceResult(history[-1], std_error, samples, history)


def _hvp(model: nn.Module, loader: Batches, vectors: Sequence[Tensor], params: list[Tensor]) -> list[Tensor]:
    """``H v`` summed over the loader's batches, then divided by the sample count (in ``_curvature_mode``)."""
    total = [torch.zeros_like(p) for p in params]
    num_samples = 0
    for images, labels in loader:
        loss = F.cross_entropy(model(images), labels, reduction="sum")
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on any of params")
        grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
        hvs = torch.autograd.grad(_dot(grads, vectors), params, materialize_grads=True)
        for acc, hv in zip(total, hvs, strict=True):
            acc.add_(hv)
        num_samples += len(labels)
    if num_samples == 0:
        raise ValueError("the loader yielded no samples")
    return [acc.div_(num_samples) for acc in total]


@contextmanager
def _curvature_mode(model: nn.Module, params: list[Tensor]) -> Iterator[None]:
    """Eval mode with gradients tracked for ``params`` only; restores every flag it changes."""
    training = [(module, module.training) for module in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for p in params}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        with torch.enable_grad():
            yield
    finally:
        for module, flag in training:
            module.training = flag
        for p, flag in requires_grad:
            p.requires_grad_(flag)


def _checked_params(model: nn.Module, params: Sequence[Tensor] | None) -> list[Tensor]:
    """``params`` (if None, every parameter that requires grad), checked to be distinct ones of ``model``."""
    chosen = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not chosen:
        raise ValueError("no parameters to take the Hessian with respect to")
    owned = {id(p) for p in model.parameters()}
    if any(id(p) not in owned for p in chosen):
        raise ValueError("params must be parameters of model")
    if len({id(p) for p in chosen}) != len(chosen):
        raise ValueError("params must not repeat a parameter")
    return chosen


def _generator(params: list[Tensor], seed: int) -> torch.Generator:
    """A generator on the parameters' device, seeded with ``seed``."""
    return torch.Generator(device=params[0].device).manual_seed(seed)


def _dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """The inner product of two parameter-shaped tensor lists, accumulated in float64."""
    return torch.stack([(x * y).sum(dtype=torch.float64) for x, y in zip(xs, ys, strict=True)]).sum()
