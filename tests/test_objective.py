"""The training objective: distillation and VVTQ's oscillation regularizer against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qgen import quant
from qgen.objective import (
    Objective,
    bin_regularizer,
    build_objective,
    distillation_loss,
    obr_lambda,
    oscillation_regularizer,
)

from helpers import tiny_spec


def test_distillation_loss_equals_its_closed_form_on_fixed_logits() -> None:
    """-(1/B) sum_b sum_c p_bc log q_bc, computed by hand from the logits."""
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.0, 2.0]])
    expected = 0.0
    for z, t in zip(student.tolist(), teacher.tolist(), strict=True):
        log_q = [v - math.log(sum(math.exp(u) for u in z)) for v in z]
        p = [math.exp(v) / sum(math.exp(u) for u in t) for v in t]
        expected -= sum(pc * lq for pc, lq in zip(p, log_q, strict=True)) / len(student)
    assert distillation_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # Against one-hot "teacher" probabilities (very confident logits) it is the cross-entropy.
    hard = torch.tensor([0, 2])
    assert distillation_loss(student, 1e4 * F.one_hot(hard, 3).float()).item() == pytest.approx(
        F.cross_entropy(student, hard).item(), rel=1e-6
    )


def test_distillation_gradient_reaches_the_student_only() -> None:
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    distillation_loss(student, teacher).backward()
    expected = (F.softmax(student.detach(), -1) - F.softmax(teacher.detach(), -1)) / 4
    torch.testing.assert_close(student.grad, expected)
    assert teacher.grad is None


def test_obr_weight_follows_vvtqs_cosine_temperature_decay() -> None:
    """CosineTempDecay(t_max=T, temp_range=(0, m), rel_decay_start=0.25), written out as VVTQ does."""
    epochs, maximum = 150, 0.01
    for t in range(epochs):
        start = 0.25 * epochs
        if t < start:
            expected = 0.0
        else:
            rel = (t - start) / (epochs - start)
            expected = maximum + 0.5 * (0 - maximum) * (1 + math.cos(rel * math.pi))
        assert obr_lambda(t, epochs, maximum) == pytest.approx(expected, abs=1e-15)
    assert obr_lambda(37, epochs, maximum) == 0 < obr_lambda(38, epochs, maximum)
    assert obr_lambda(epochs, epochs, maximum) == pytest.approx(maximum)
    assert obr_lambda(100, epochs, 0.0) == 0


def loop_regularizer(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    """VVTQ's BinReg.dampening_loss, bin by bin: mean((sg(w_hat) - w_c)^2) + sum of torch.var per bin."""
    q_n, q_p = quant.level_bounds(bits)
    g = 1 / math.sqrt(w.numel() * q_p)
    s = (s - s * g).detach() + s * g
    w_c = torch.clamp(w / s, q_n, q_p) * s
    codes = torch.clamp(w / s, q_n, q_p).round().detach()
    total = ((codes * s).detach() - w_c).square().mean()
    for k in range(q_n, q_p + 1):
        members = w_c[codes == k]
        if members.numel() > 1:
            total = total + torch.var(members)
    return total


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_bin_regularizer_equals_the_bin_by_bin_loop_with_its_gradients(bits: int) -> None:
    generator = torch.Generator().manual_seed(bits)
    w = (0.1 * torch.randn(32, 24, generator=generator, dtype=torch.float64)).requires_grad_(True)
    s = torch.tensor(0.08 if bits == 2 else 0.03, dtype=torch.float64, requires_grad=True)
    ours = bin_regularizer(w, s, bits)
    grads = torch.autograd.grad(ours, (w, s))
    ref = loop_regularizer(w, s, bits)
    ref_grads = torch.autograd.grad(ref, (w, s))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    assert ours.item() > 0 and grads[0].abs().sum() > 0


def test_a_bin_of_one_weight_adds_no_variance() -> None:
    w = torch.tensor([0.0, 0.11, 0.09, 0.5])  # codes 0, 1, 1, 5 with s = 0.1 (4 bits)
    s = torch.tensor(0.1)
    penalty = ((torch.tensor([0.0, 0.1, 0.1, 0.5]) - w).square()).mean()
    assert bin_regularizer(w, s, 4).item() == pytest.approx((penalty + torch.var(w[1:3])).item(), rel=1e-5)


def small_quantized() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3)
    )
    return quant.quantize_model(net, 4)


def test_objective_adds_the_weighted_regularizer_of_every_quantized_layer() -> None:
    model = small_quantized()
    images, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    logits = model(images)
    ce = F.cross_entropy(logits, labels)
    per_layer = [
        bin_regularizer(quant.latent_weight(model[i]), model[i].parametrizations.weight[0].step, 4)
        for i in (2, 4)
    ]
    objective = Objective(model, epochs=8, obr_weight=0.5)
    assert objective(logits, images, labels, epoch=2).item() == pytest.approx(ce.item())  # t = 1 < 2
    weight = obr_lambda(6, 8, 0.5)
    expected = ce + weight * (per_layer[0] + per_layer[1])
    assert objective(logits, images, labels, epoch=7).item() == pytest.approx(expected.item(), rel=1e-6)
    assert oscillation_regularizer(nn.Linear(3, 3)).item() == 0


def test_objective_with_a_teacher_distills_and_build_objective_follows_the_spec() -> None:
    model, teacher = small_quantized(), nn.Linear(6, 3)
    images, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    logits = model(images)
    loss = Objective(model, epochs=4, teacher=teacher)(logits, images, labels, epoch=1)
    assert loss.item() == pytest.approx(distillation_loss(logits, teacher(images)).item())
    built = build_objective(tiny_spec(precision="int4", obr_weight=0.01), model, torch.device("cpu"))
    assert built.teacher is None and built.obr_weight == 0.01 and built.epochs == tiny_spec().epochs
