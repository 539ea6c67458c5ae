"""Curvature: HVPs, power iteration and Hutchinson's trace against exact Hessians, model left untouched."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from qgen import hessian

Batches = list[tuple[Tensor, Tensor]]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: extra threads only contend for the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batches(sizes: list[int], input_shape: tuple[int, ...], num_classes: int, seed: int) -> Batches:
    """Float64 inputs with random labels, split into batches of unequal ``sizes``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(sum(sizes), *input_shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(num_classes, (sum(sizes),), generator=generator)
    return list(zip(images.split(sizes), labels.split(sizes), strict=True))


def linear_classifier() -> tuple[nn.Module, Batches]:
    torch.manual_seed(0)
    return nn.Linear(4, 3).double(), make_batches([5, 4, 2], (4,), 3, seed=1)


def batchnorm_net() -> tuple[nn.Module, Batches]:
    """A conv net whose running statistics differ from any batch's, so eval and train mode disagree."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, bias=False),
        nn.BatchNorm2d(2),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 3),
    ).double()
    net[1].running_mean.fill_(0.3)
    net[1].running_var.fill_(2.0)
    return net, make_batches([4, 4, 2], (1, 6, 6), 3, seed=2)


def exact_hessian(model: nn.Module, batches: Batches, names: list[str]) -> Tensor:
    """The Hessian of the eval-mode mean loss over all the data at once, w.r.t. the flattened ``names``."""
    model = copy.deepcopy(model).eval()
    named = dict(model.named_parameters())
    shapes = [named[name].shape for name in names]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])

    def loss(flat: Tensor) -> Tensor:
        chunks = flat.split([shape.numel() for shape in shapes])
        weights = {name: c.view(s) for name, c, s in zip(names, chunks, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, weights, (images,)), labels)

    flat = torch.cat([named[name].detach().flatten() for name in names])
    return torch.autograd.functional.hessian(loss, flat)


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.flatten() for t in tensors])


def random_like(params: list[Tensor], seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]


def test_hvp_equals_exact_hessian_times_v_over_unequal_batches() -> None:
    model, batches = linear_classifier()
    params = list(model.parameters())
    v = random_like(params, seed=3)
    hv = hessian.hessian_vector_product(model, batches, v, params)
    assert [h.shape for h in hv] == [p.shape for p in params]
    h = exact_hessian(model, batches, ["weight", "bias"])
    torch.testing.assert_close(flat(hv), h @ flat(v), rtol=1e-10, atol=1e-12)


def test_top_eigenvalue_equals_largest_eigenvalue() -> None:
    model, batches = linear_classifier()
    result = hessian.top_eigenvalue(model, batches, max_iter=1000, tol=1e-12)
    largest = torch.linalg.eigvalsh(exact_hessian(model, batches, ["weight", "bias"]))[-1].item()
    assert result.converged
    assert result.iterations == len(result.history)
    assert result.value == result.history[-1]
    assert result.value == pytest.approx(largest, rel=1e-6)


def test_top_eigenvalue_reports_non_convergence() -> None:
    model, batches = linear_classifier()
    result = hessian.top_eigenvalue(model, batches, max_iter=2, tol=1e-12)
    assert not result.converged
    assert result.iterations == len(result.history) == 2


def test_trace_is_within_three_standard_errors_with_the_right_standard_error() -> None:
    model, batches = linear_classifier()
    samples = 1000
    result = hessian.trace(model, batches, samples=samples, seed=4)
    h = exact_hessian(model, batches, ["weight", "bias"])
    # Var(zᵀHz) = 2 Σ_{i≠j} H_ij² for Rademacher z.
    expected_std_error = ((2 * (h.square().sum() - h.diag().square().sum()) / samples) ** 0.5).item()
    assert abs(result.value - h.trace().item()) < 3 * result.std_error
    assert result.std_error == pytest.approx(expected_std_error, rel=0.15)
    assert result.samples == len(result.history) == samples
    assert result.value == result.history[-1]


def logged_number(label: str, line: str) -> float:
    """The number after ``label`` in a log line."""
    match = re.search(re.escape(label) + r" ([-+0-9.e]+)", line)
    assert match is not None, f"no {label!r} in {line!r}"
    return float(match.group(1))


def test_power_iteration_and_trace_log_their_progress(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With no interval between lines, every iteration and probe logs its count and running estimate."""
    monkeypatch.setattr(hessian, "PROGRESS_EVERY_S", 0.0)
    model, batches = linear_classifier()
    with caplog.at_level(logging.INFO, logger="qgen.hessian"):
        top = hessian.top_eigenvalue(model, batches, max_iter=3, tol=1e-12)
        tr = hessian.trace(model, batches, samples=3, seed=4)
    lines = [r.getMessage() for r in caplog.records if r.name == "qgen.hessian"]
    iterations = [line for line in lines if line.startswith("top eigenvalue: iteration")]
    assert [line.split(",")[0] for line in iterations] == [
        f"top eigenvalue: iteration {i} (at most 3)" for i in (1, 2, 3)
    ]
    assert [logged_number("estimate", line) for line in iterations] == pytest.approx(top.history, rel=1e-5)
    assert f"top eigenvalue: {top.value:.6g} after 3 iterations (not converged)" in lines[3]
    probes = [line for line in lines if line.startswith("Hessian trace: probe")]
    assert [line.split(",")[0] for line in probes] == [f"Hessian trace: probe {i}/3" for i in (1, 2, 3)]
    assert [logged_number("running mean", line) for line in probes] == pytest.approx(tr.history, rel=1e-5)
    assert all("elapsed" in line for line in iterations + probes)
    assert lines[-1].startswith(f"Hessian trace: {tr.value:.6g} +- ")


def test_params_subset_gives_the_hessian_block() -> None:
    model, batches = batchnorm_net()
    names = [name for name, _ in model.named_parameters()]
    assert names[0] == "0.weight"
    first = model[0].weight
    block = exact_hessian(model, batches, names)[: first.numel(), : first.numel()]
    v = random_like([first], seed=5)
    hv = hessian.hessian_vector_product(model, batches, v, [first])
    torch.testing.assert_close(flat(hv), block @ flat(v), rtol=1e-10, atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(block)
    dominant = eigenvalues[eigenvalues.abs().argmax()].item()
    result = hessian.top_eigenvalue(model, batches, params=[first], max_iter=1000, tol=1e-12)
    assert result.converged
    assert result.value == pytest.approx(dominant, rel=1e-6)


def test_batchnorm_net_is_differentiated_in_eval_mode() -> None:
    model, batches = batchnorm_net()
    assert model.training
    params = list(model.parameters())
    v = random_like(params, seed=6)
    hv = hessian.hessian_vector_product(model, batches, v, params)
    h = exact_hessian(model, batches, [name for name, _ in model.named_parameters()])
    torch.testing.assert_close(flat(hv), h @ flat(v), rtol=1e-10, atol=1e-12)


def test_model_is_left_unchanged() -> None:
    model, batches = batchnorm_net()
    model[5].eval()  # mixed training flags must come back per module
    model[1].bias.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    hessian.top_eigenvalue(model, batches, max_iter=3)
    hessian.trace(model, batches, samples=2)
    hessian.hessian_vector_product(model, batches, [torch.ones(2, dtype=torch.float64)], [model[1].bias])
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True, True]
    assert all(p.grad is None for p in model.parameters())


def test_same_seed_reproduces_and_another_seed_differs() -> None:
    model, batches = batchnorm_net()
    eigen = hessian.top_eigenvalue(model, batches, max_iter=5, seed=7)
    assert hessian.top_eigenvalue(model, batches, max_iter=5, seed=7) == eigen
    assert hessian.top_eigenvalue(model, batches, max_iter=5, seed=8).history[0] != eigen.history[0]
    estimate = hessian.trace(model, batches, samples=5, seed=7)
    assert hessian.trace(model, batches, samples=5, seed=7) == estimate
    assert hessian.trace(model, batches, samples=5, seed=8).history != estimate.history


def test_saturated_softmax_has_zero_curvature() -> None:
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(1e3 * torch.eye(2))
    batches = [(torch.eye(2, dtype=torch.float64), torch.tensor([0, 1]))]
    assert hessian.top_eigenvalue(model, batches) == hessian.EigenResult(0.0, 1, True, [0.0])
    estimate = hessian.trace(model, batches, samples=3)
    assert (estimate.value, estimate.std_error) == (0.0, 0.0)


def test_invalid_arguments_raise() -> None:
    model, batches = linear_classifier()
    with pytest.raises(ValueError, match="parameters of model"):
        hessian.trace(model, batches, params=[nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="repeat"):
        hessian.trace(model, batches, params=[model.bias, model.bias])
    with pytest.raises(ValueError, match="no parameters"):
        hessian.top_eigenvalue(model, batches, params=[])
    with pytest.raises(ValueError, match="shaped like"):
        hessian.hessian_vector_product(model, batches, [model.bias.detach()], [model.weight])
    with pytest.raises(ValueError, match="no samples"):
        hessian.top_eigenvalue(model, [])
    with pytest.raises(ValueError, match="max_iter"):
        hessian.top_eigenvalue(model, batches, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        hessian.top_eigenvalue(model, batches, tol=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        hessian.trace(model, batches, samples=1)


def test_parameter_the_loss_does_not_use_raises() -> None:
    model, batches = linear_classifier()
    model.register_parameter("unused", nn.Parameter(torch.zeros(2, dtype=torch.float64)))
    with pytest.raises(ValueError, match="does not depend"):
        hessian.trace(model, batches, params=[model.unused])
    assert all(p.requires_grad for p in model.parameters())
