"""Training accuracy of perturbed copies of a model, many copies per pass over the data.

The sigma and alpha searches (QGen App. B.2) evaluate 10 perturbed copies at each of up to 15 scales.
:class:`PerturbedEvaluator` evaluates ``K`` copies per pass with ``torch.func.functional_call`` under
``vmap``: every batch is read once for all copies, the unperturbed weights are never copied back and
forth, and nothing is re-folded per sample. The model is always evaluated in eval mode.

:class:`StepTally` counts one bisection step's predictions as they are made, so that the search can
stop evaluating once the step's move is certain (or, in the opt-in sequential mode, statistically clear).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from qgen import quant
from qgen.folding import with_identity_batchnorm
from qgen.norms import weight_parameters

NoiseConvention = Literal["reference", "jiang"]
NOISE_CONVENTIONS: tuple[NoiseConvention, ...] = get_args(NoiseConvention)

PerturbedSet = Literal["all", "weights", "reference"]
"""Which parameters the searches perturb (``measures.perturb``; see :func:`perturbed_names`)."""
PERTURBED_SETS: tuple[PerturbedSet, ...] = get_args(PerturbedSet)


@dataclass(frozen=True)
class EvalSet:
    """The (unaugmented) training images and labels the measures evaluate, already on the device."""

    images: Tensor
    labels: Tensor
    batch_size: int

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            yield self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]


def perturbed_network(model: nn.Module, which: PerturbedSet) -> nn.Module:
    """The network whose parameters the searches perturb, computing ``model``'s function (for
    ``reference`` up to a factor ``1 / sqrt(1 + eps)`` at each rebuilt BN).

    ``model`` itself for ``all`` and ``weights``; for ``reference`` a copy in which every BN that
    :func:`~qgen.folding.fold_batchnorm` folded away is back as the identity BN the reference code leaves
    in place (:func:`~qgen.folding.with_identity_batchnorm`), so that its gamma and beta are perturbed too.
    """
    return with_identity_batchnorm(model) if which == "reference" else model


def perturbed_names(model: nn.Module, which: PerturbedSet) -> list[str]:
    """Names of the parameters of ``model`` (a :func:`perturbed_network`) that the searches perturb.

    ``weights``: only the conv/linear weights ``W`` of the bounds. ``all`` and ``reference``: every
    parameter except what the quantizers learn (LSQ steps of weights and activations, activation offsets):
    biases, and the gamma and beta of every BN left in the network.
    """
    steps = {id(p) for p in quant.quantizer_parameters(model)}
    weights = {id(p) for p in weight_parameters(model)}
    chosen = weights if which == "weights" else {id(p) for p in model.parameters()} - steps
    return [name for name, p in model.named_parameters() if id(p) in chosen]


class PerturbedEvaluator:
    """Accuracy (and loss) of ``K`` copies of ``model`` whose parameters ``names`` are offset by deltas."""

    def __init__(self, model: nn.Module, data: EvalSet, names: list[str]) -> None:
        self.model = model.eval()
        self.data = data
        self.names = names
        named = [*model.named_parameters(), *model.named_buffers()]
        self.state = {name: tensor.detach() for name, tensor in named}
        self.base = {name: self.state[name] for name in names}
        self.images_evaluated = 0

    def _logits(self, params: dict[str, Tensor], images: Tensor, in_dims: int | None = None) -> Tensor:
        """Logits ``(K, B, classes)`` of the stacked copies ``params`` (each entry ``(K, ...)``).

        Several copies run under ``vmap`` (one grouped pass: fast on a GPU); a single copy runs as a
        plain forward pass, which is faster on a CPU, where vmapped convolutions become grouped ones.
        """
        fixed = {k: v for k, v in self.state.items() if k not in params}

        def one(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(self.model, {**fixed, **p}, (x,))

        if next(iter(params.values())).shape[0] == 1:
            return one({k: v[0] for k, v in params.items()}, images[0] if in_dims == 0 else images).unsqueeze(
                0
            )
        return vmap(one, in_dims=(0, in_dims))(params, images)

    @torch.no_grad()
    def _batch_logits(self, deltas: dict[str, Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """Batch by batch: the logits ``(K, B, classes)`` of the copies ``base + deltas`` and the labels.
        Stopping the iteration early skips the remaining batches."""
        params = {name: self.base[name] + deltas[name] for name in self.names}
        copies = next(iter(deltas.values())).shape[0]
        for images, labels in self.data.batches():
            self.images_evaluated += copies * len(labels)
            yield self._logits(params, images), labels

    def correct_counts(self, deltas: dict[str, Tensor]) -> Iterator[tuple[Tensor, int]]:
        """Batch by batch: the correct predictions of each copy ``base + deltas`` (shape ``(K,)``) and the
        batch's size. Stopping the iteration early skips the remaining batches."""
        for logits, labels in self._batch_logits(deltas):
            yield (logits.argmax(-1) == labels).sum(-1), len(labels)

    def accuracy(self, deltas: dict[str, Tensor]) -> Tensor:
        """Training accuracy of each copy ``base + deltas`` (a fraction per copy, shape ``(K,)``)."""
        return sum(counts for counts, _ in self.correct_counts(deltas)) / len(self.data)

    def loss_and_accuracy(self, deltas: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy (float64) and accuracy (a fraction) of each copy ``base + deltas``.

        Losses are summed per sample, as in :func:`qgen.train.evaluate`; both tensors have shape ``(K,)``.
        """
        total = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros(())
        for logits, labels in self._batch_logits(deltas):
            targets = labels.expand(logits.shape[0], -1)
            total = (
                total + F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").sum(-1).double()
            )
            correct = correct + (logits.argmax(-1) == labels).sum(-1)
        return total / len(self.data), correct / len(self.data)

    def unperturbed_accuracy(self) -> float:
        zeros = {name: torch.zeros_like(self.base[name]).unsqueeze(0) for name in self.names}
        return float(self.accuracy(zeros)[0])

    def ascend(
        self,
        box: dict[str, Tensor],
        scale: float,
        steps: int,
        lr: float,
        batch: int,
        generators: list[torch.Generator],
    ) -> dict[str, Tensor]:
        """Projected gradient *ascent* on the cross-entropy (QGen App. B.2), for several copies at once.

        Copy ``k`` takes ``steps`` SGD steps of size ``lr`` up the mean cross-entropy of a random mini-batch
        of ``batch`` training images drawn with ``generators[k]``, each followed by projection onto the box
        ``|u_i| <= scale * box_i``. Returns the final offsets ``u`` (shape ``(copies, ...)`` each).
        """
        copies, n = len(generators), len(self.data)
        limit = {name: scale * box[name] for name in self.names}
        offsets = {name: torch.zeros((copies, *p.shape), device=p.device) for name, p in self.base.items()}
        for _ in range(steps):
            index = torch.stack(
                [torch.randint(n, (batch,), generator=g, device=g.device) for g in generators]
            )
            index = index.to(self.data.labels.device)
            images, labels = self.data.images[index], self.data.labels[index]
            params = {name: (self.base[name] + offsets[name]).requires_grad_(True) for name in self.names}
            with torch.enable_grad():
                logits = self._logits(params, images, in_dims=0)
                loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / batch
                grads = torch.autograd.grad(loss, [params[name] for name in self.names])
            self.images_evaluated += 3 * copies * batch  # forward + backward, counted as forward passes
            with torch.no_grad():
                for name, grad in zip(self.names, grads, strict=True):
                    offsets[name] = torch.clamp(offsets[name] + lr * grad, -limit[name], limit[name])
        return offsets


def gaussian_std(
    base: Tensor, scale: float, magnitude_aware: bool, convention: NoiseConvention, epsilon: float
) -> Tensor | float:
    """Standard deviation of the perturbation ``u`` at search scale ``scale``.

    ``reference`` reproduces Dziugaite et al.'s code (and, judging by its numbers, the paper): it passes
    the *variance* of Jiang et al.'s definition to ``torch.normal`` as a standard deviation, i.e. std
    ``sigma^2`` and ``sigma'^2 w^2 + eps^2``. ``jiang`` uses the definition, std ``sigma`` and
    ``sqrt(sigma'^2 w^2 + eps^2)``.
    """
    if not magnitude_aware:
        return scale**2 if convention == "reference" else scale
    variance_like = scale**2 * base.square() + epsilon**2
    return variance_like if convention == "reference" else variance_like.sqrt()


def deviation_range(mean_lo: float, mean_hi: float, base: float) -> tuple[float, float]:
    """Smallest and largest ``|mean - base|`` over ``mean`` in ``[mean_lo, mean_hi]``."""
    ends = (abs(mean_lo - base), abs(mean_hi - base))
    return (0.0 if mean_lo <= base <= mean_hi else min(ends)), max(ends)


@dataclass
class StepTally:
    """The predictions counted so far in one bisection step: ``samples`` perturbed copies x ``n`` images.

    The step's deviation is ``|mean accuracy - base|`` with the mean over all ``samples * n`` predictions
    (equal to the mean of the copies' accuracies, as in the reference code). Two ranges bound the value
    the complete step would give, so that its bisection move can be known before it is complete.
    """

    samples: int
    n: int
    base: float
    correct: int = 0
    evaluated: int = 0
    copy_accuracies: list[float] = field(default_factory=list)

    def add(self, correct: int, predictions: int) -> None:
        self.correct += correct
        self.evaluated += predictions

    def deviation(self) -> float:
        """The deviation of the predictions made so far: the step's deviation once it is complete."""
        return abs(self.correct / self.evaluated - self.base)

    def certain_range(self) -> tuple[float, float]:
        """Every deviation the complete step can still give (the predictions left all wrong, or all right).

        The deviation so far, :meth:`deviation`, always lies in this range.
        """
        total = self.samples * self.n
        return deviation_range(
            self.correct / total, (self.correct + total - self.evaluated) / total, self.base
        )

    def confident_range(self, confidence: float) -> tuple[float, float] | None:
        """The deviation's Student-t interval at level ``confidence`` from the accuracies of the copies
        completed so far (sequential mode); ``None`` before two copies are complete."""
        values = self.copy_accuracies
        if len(values) < 2:
            return None
        mean = statistics.fmean(values)
        half = t_quantile(confidence, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        return deviation_range(mean - half, mean + half, self.base)


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t critical value, e.g. 9.925 for 99% with 2 degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(1 - (1 - confidence) / 2, dof))
