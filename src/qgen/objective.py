"""The training objective of a run: cross-entropy, or VVTQ's distillation, plus its oscillation regularizer.

:func:`build_objective` makes it from the run spec; the trainer calls it once per step:

    loss = objective(logits, images, labels, epoch)

- **Task loss.** The cross-entropy with the labels; with ``spec.distill`` instead the soft cross-entropy
  against the probabilities of a full-precision teacher on the same (augmented) images,
  ``-(1/B) sum_b sum_c softmax(z_t)_bc log softmax(z)_bc`` (:func:`distillation_loss`). This is VVTQ's
  ``Soft_CrossEntropy`` with no temperature and no hard-label term, but with the teacher run *online*:
  VVTQ reads FKD's soft labels, precomputed on 500 stored crops per image (top-5 probabilities, the rest
  spread uniformly) by a stronger teacher. The teacher here is the model's own published ImageNet-1k
  weights in eval mode, never trained (docs/decisions.md).
- **Oscillation-aware bin regularizer** (VVTQ's ``BinReg``, ``util_loss.py``), weighted by
  ``lambda(t)``: 0 for the first quarter of training, then rising along a cosine to ``spec.obr_weight``
  at the last epoch (VVTQ: ``CosineTempDecay(t_max=epochs, temp_range=(0, 0.01), rel_decay_start=0.25)``,
  ``t`` the 0-based epoch index) (:func:`obr_lambda`, :func:`oscillation_regularizer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qgen import data, models, quant
from qgen.experiments import RunSpec
from qgen.quant.ops import level_bounds, weight_step

OBR_START = 0.25
"""Fraction of the epochs before the oscillation regularizer switches on (VVTQ's ``rel_decay_start``)."""


def distillation_loss(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_c p_c log q_c``, ``p = softmax(teacher_logits)``, ``q = softmax(logits)``
    (VVTQ's ``Soft_CrossEntropy``; computed in float32, the teacher's side without gradient)."""
    target = F.softmax(teacher_logits.detach().float(), dim=-1)
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def obr_lambda(epoch_index: int, epochs: int, maximum: float) -> float:
    """VVTQ's regularizer weight at 0-based epoch ``t`` of ``T``: 0 while ``t < T/4``, then
    ``maximum * (1 - cos(pi r)) / 2`` with ``r = (t - T/4) / (3T/4)`` (``CosineTempDecay`` from 0 to
    ``maximum``)."""
    start = OBR_START * epochs
    if epoch_index < start or maximum == 0:
        return 0.0
    r = (epoch_index - start) / (epochs - start)
    return maximum * (1 - math.cos(math.pi * r)) / 2


def bin_regularizer(weight: Tensor, step: Tensor, bits: int) -> Tensor:
    """VVTQ's oscillation regularizer of one layer: ``mean((sg(w_hat) - w_c)^2) + sum_k var_k(w_c)``.

    ``w_c = clip(w / s, -Q_N, Q_P) * s`` is the clipped latent weight and ``w_hat = round(w / s) * s`` its
    quantized value, held fixed; ``var_k`` is the unbiased variance of the ``w_c`` in bin ``k`` (those whose
    code is ``k``), over the bins holding more than one weight (``BinReg.dampening_loss``). Gradients reach
    ``w`` and ``s`` through ``w_c``, the step's scaled as in its quantizer (LSQ's ``1/sqrt(N Q_P)``; VVTQ
    scales by ``1/sqrt(sum|w| Q_P)``). Bins are told by their integer codes rather than by comparing
    ``w_hat / s`` with ``k`` in floating point. Variances are computed about each bin's mean.
    """
    q_n, q_p = level_bounds(bits)
    s = weight_step(step, weight, bits)
    v = (weight / s).clamp(q_n, q_p)
    w_c = (v * s).flatten()
    codes = v.detach().round().flatten()
    penalty = (codes * s.detach() - w_c).square().mean()
    bins = (codes - q_n).long()
    empty = w_c.new_zeros(q_p - q_n + 1)
    counts = empty.index_add(0, bins, torch.ones_like(w_c))  # no host sync, unlike bincount
    means = empty.index_add(0, bins, w_c) / counts.clamp_min(1)
    spread = empty.index_add(0, bins, (w_c - means[bins]).square())
    variances = torch.where(counts > 1, spread / (counts - 1).clamp_min(1), 0)
    return penalty + variances.sum()


def oscillation_regularizer(model: nn.Module) -> Tensor:
    """The sum of :func:`bin_regularizer` over every weight-quantized layer of ``model`` (VVTQ's ``BinReg``,
    before its weight ``lambda``); 0 for a model without quantized weights."""
    total = next(model.parameters()).new_zeros(())
    for layer in model.modules():
        quantizer = quant.weight_quantizer(layer)
        if quantizer is not None:
            total = total + bin_regularizer(quant.latent_weight(layer), quantizer.step, quantizer.bits)
    return total


def training_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The mean cross-entropy of a batch with its labels (paper §4.2): the whole objective of a run that
    neither distils nor regularizes its bins, and the term :class:`Objective` starts from. Every trainer
    (one run, data-parallel, a batched group) computes it here and nowhere else."""
    return F.cross_entropy(logits, labels)


@dataclass
class Objective:
    """``objective(logits, images, labels, epoch)``: a run's training loss (module docstring).

    ``model`` is the network being trained (its weight quantizers feed the regularizer), ``teacher`` the
    frozen full-precision network (``None``: cross-entropy with the labels) and ``epoch`` the 1-based epoch.
    """

    model: nn.Module
    epochs: int
    obr_weight: float = 0.0
    teacher: nn.Module | None = None

    def __call__(self, logits: Tensor, images: Tensor, labels: Tensor, epoch: int) -> Tensor:
        if self.teacher is None:
            loss = training_loss(logits, labels)
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            loss = distillation_loss(logits, teacher_logits)
        weight = obr_lambda(epoch - 1, self.epochs, self.obr_weight)
        if weight > 0:
            loss = loss + weight * oscillation_regularizer(self.model)
        return loss


def build_objective(spec: RunSpec, model: nn.Module, device: torch.device) -> Objective:
    """The objective of ``spec`` for ``model``; with ``spec.distill`` it builds the teacher on ``device``:
    the spec's model with its published weights (``pretrained=True``), unquantized, in eval mode."""
    teacher = None
    if spec.distill:
        classes = data.dataset_info(spec.dataset).num_classes
        teacher = models.create_model(spec.model, classes, **{**spec.model_args, "pretrained": True})
        teacher = teacher.to(device).eval().requires_grad_(False)
    return Objective(model, spec.epochs, spec.obr_weight, teacher)
