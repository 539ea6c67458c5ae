"""R(Δ) of eq. 7: JVPs against finite differences, closed forms and full Jacobians; the Taylor check."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F

from qgen import regularizer as reg
from qgen.folding import materialize_weights
from qgen.quant import initial_step, latent_weight, quantize_model, quantizers

Batches = list[tuple[Tensor, Tensor]]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_net(bits: int | None, *, first_last: bool = True, seed: int = 0) -> nn.Module:
    """conv -> BN -> tanh -> conv -> BN -> tanh -> linear, float64, BN running statistics not trivial."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).double()
    net[1].running_mean.fill_(0.2)
    net[1].running_var.fill_(1.5)
    net[4].running_var.fill_(0.7)
    return quantize_model(net, bits, quantize_first_last=first_last)


def batches(sizes: list[int], shape: tuple[int, ...], classes: int, seed: int = 1) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(sum(sizes), *shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(classes, (sum(sizes),), generator=generator)
    return list(zip(images.split(sizes), labels.split(sizes), strict=True))


def image_batches() -> Batches:
    return batches([5, 3], (1, 6, 6), 5)


def weights_of(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Latent and quantized weights of every quantized layer, keyed as in the plain copy."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        latent = {f"{n}.weight": latent_weight(modules[n]).detach().clone() for n in quantizers(model)}
        quantized = {f"{n}.weight": modules[n].weight.detach().clone() for n in quantizers(model)}
    return latent, quantized


@torch.no_grad()
def logits_at(plain: nn.Module, weights: dict[str, Tensor], data: Batches) -> Tensor:
    return torch.cat([functional_call(plain, weights, (x,)) for x, _ in data])


def set_noise(model: nn.Module, step: float, seed: int = 9) -> None:
    """Steps ``s`` and latent weights ``w = k s + u s`` (``k`` integer, fixed ``|u| < 0.4``): ``Δ = s u``."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, q in quantizers(model).items():
            w = latent_weight(modules[name])
            u = (torch.rand(w.shape, generator=generator, dtype=w.dtype) - 0.5) * 0.8
            w.copy_((w / step).round() * step + u * step)
            q.step.fill_(step)


def test_r_equals_finite_difference_directional_derivative() -> None:
    model, data = conv_net(4), image_batches()
    result = reg.regularizer(model, data)
    latent, quantized = weights_of(model)
    plain = materialize_weights(model, quantized=False).eval()
    direction = {k: quantized[k] - latent[k] for k in latent}
    t = 1e-6

    def fd(keys: list[str]) -> Tensor:
        plus = {k: latent[k] + (t * direction[k] if k in keys else 0) for k in latent}
        minus = {k: latent[k] - (t * direction[k] if k in keys else 0) for k in latent}
        return (logits_at(plain, plus, data) - logits_at(plain, minus, data)) / (2 * t)

    n = sum(len(y) for _, y in data)
    assert result.samples == n
    assert result.value == pytest.approx(float(fd(list(latent)).square().sum()) / n, rel=1e-7)
    assert [layer.layer for layer in result.layers] == ["0", "3", "7"]
    for layer in result.layers:
        expected = float(fd([f"{layer.layer}.weight"]).square().sum()) / n
        assert layer.r == pytest.approx(expected, rel=1e-7)
        assert layer.share == pytest.approx(layer.r / result.value)
    assert result.cross_layer == pytest.approx(result.value - sum(layer.r for layer in result.layers))
    assert result.cross_layer != pytest.approx(0.0, abs=1e-3 * result.value)


def test_linear_model_r_is_the_closed_form_quadratic() -> None:
    torch.manual_seed(2)
    model = quantize_model(nn.Linear(6, 3, bias=False).double(), 4, quantize_first_last=True)
    data = batches([4, 3], (6,), 3)
    x = torch.cat([images for images, _ in data])
    with torch.no_grad():
        delta = model.parametrizations.weight.original - model.weight  # eq. 3, shape (K, D)
    # R = (1/n) Σ_n Σ_k (x_n · Δ_k)²  =  tr(Δ XᵀX Δᵀ) / n
    closed = float(torch.trace(delta @ x.T @ x @ delta.T)) / len(x)
    for at in ("latent", "quantized"):
        result = reg.regularizer(model, data, reg.RegularizerSettings(at=at))
        assert result.value == pytest.approx(closed, rel=1e-12)
        assert result.layers[0].layer == ""
        # f is linear in w: the first-order expansion is exact and f(q) - f(p) is ±XΔᵀ.
        assert result.taylor.output_relative_error == pytest.approx(0.0, abs=1e-12)
        assert result.taylor.output_change_sq == pytest.approx(closed, rel=1e-12)


def test_uniform_noise_expectation_matches_the_full_jacobian_closed_form() -> None:
    model, data = conv_net(4), image_batches()
    samples = 400
    result = reg.regularizer(model, data, reg.RegularizerSettings(noise_samples=samples, seed=3))
    latent, _ = weights_of(model)
    plain = materialize_weights(model, quantized=False).eval()
    steps = {f"{n}.weight": float(q.step.detach()) for n, q in quantizers(model).items()}
    images = torch.cat([x for x, _ in data])
    jac = jacrev(lambda w: functional_call(plain, w, (images,)))(latent)  # key -> (N, K, *w.shape)
    n = len(images)
    flat = torch.cat([jac[k].detach().reshape(n * 5, -1) for k in latent], dim=1)  # (N K, P)
    variance = torch.cat([torch.full((latent[k].numel(),), steps[k] ** 2 / 12) for k in latent])
    fourth = torch.cat([torch.full((latent[k].numel(),), steps[k] ** 4 / 80) for k in latent])
    # E‖JΔ‖² averaged over samples = Σ_i (δ_i²/12) Σ_{n,k} J_nki² / N
    exact = float((flat.square().sum(0) * variance).sum()) / n
    # R(Δ) = ΔᵀAΔ with A = JᵀJ / N; for independent zero-mean Δ_i:
    # Var = Σ_i A_ii² (E Δ_i⁴ - 3 Var_i²) + 2 Σ_ij A_ij² Var_i Var_j
    a = flat.T @ flat / n
    var = float(
        (a.diag().square() * (fourth - 3 * variance**2)).sum()
        + 2 * (a.square() * torch.outer(variance, variance)).sum()
    )
    expected_se = math.sqrt(var / samples)
    assert result.expected.samples == samples and result.expected.seed == 3
    assert abs(result.expected.value - exact) < 4 * expected_se
    assert result.expected.std_error == pytest.approx(expected_se, rel=0.2)


def test_splitting_the_batches_changes_nothing() -> None:
    """Each noise draw is one Δ for all batches, so the estimate does not depend on how data is split."""
    model, data = conv_net(4), image_batches()
    settings = reg.RegularizerSettings(noise_samples=5, seed=3)
    split = reg.regularizer(model, data, settings)
    whole = [(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))]
    one = reg.regularizer(model, whole, settings)
    assert one.expected.value == pytest.approx(split.expected.value, rel=1e-12)
    assert one.expected.std_error == pytest.approx(split.expected.std_error, rel=1e-10)
    assert one.value == pytest.approx(split.value, rel=1e-12)
    assert one.taylor.loss_second_order == pytest.approx(split.taylor.loss_second_order, rel=1e-12)


def test_taylor_relative_errors_vanish_as_the_noise_shrinks() -> None:
    data = image_batches()
    steps = (1e-2, 1e-3, 1e-4)
    checks = {}
    for at in ("latent", "quantized"):
        for step in steps:
            model = conv_net(16)  # 16 bits: no weight is clipped even at the smallest step
            set_noise(model, step)
            result = reg.regularizer(model, data, reg.RegularizerSettings(at=at, noise_samples=2))
            assert all(layer.clipped_fraction == 0 for layer in result.layers)
            checks[at, step] = result.taylor
    for at in ("latent", "quantized"):
        out = [checks[at, s].output_relative_error for s in steps]
        first = [checks[at, s].loss_first_order_relative_error for s in steps]
        second = [checks[at, s].loss_second_order_relative_error for s in steps]
        # Δ = s u with a fixed u: first-order remainders shrink like s, the second-order one like s².
        for errors, order in ((out, 1), (first, 1), (second, 2)):
            ratios = [errors[i] / errors[i + 1] for i in range(2)]
            assert all(10**order / 2 < r < 10**order * 2 for r in ratios), (at, order, errors)
        assert out[2] < 1e-3 and first[2] < 1e-3 and second[2] < 1e-6
    # Swapping the expansion point reverses the step: L(q) - L(p) changes sign exactly.
    for step in steps:
        assert checks["latent", step].loss_change == pytest.approx(-checks["quantized", step].loss_change)


def test_loss_terms_equal_the_exact_gradient_and_hessian() -> None:
    model, data = conv_net(2), image_batches()
    result = reg.regularizer(model, data, reg.RegularizerSettings(noise_samples=2))
    latent, quantized = weights_of(model)
    plain = materialize_weights(model, quantized=False).eval()
    keys = list(latent)
    sizes = [latent[k].numel() for k in keys]
    images = torch.cat([x for x, _ in data])
    labels = torch.cat([y for _, y in data])

    def loss(flat: Tensor) -> Tensor:
        chunks = flat.split(sizes)
        weights = {k: c.view(latent[k].shape) for k, c in zip(keys, chunks, strict=True)}
        return F.cross_entropy(functional_call(plain, weights, (images,)), labels)

    w = torch.cat([latent[k].flatten() for k in keys]).detach()
    d = torch.cat([(quantized[k] - latent[k]).flatten() for k in keys])
    gradient = torch.autograd.functional.jacobian(loss, w)
    hess = torch.autograd.functional.hessian(loss, w)
    t = result.taylor
    assert t.loss_at_point == pytest.approx(float(loss(w).detach()), rel=1e-12)
    assert t.loss_at_other == pytest.approx(float(loss(w + d).detach()), rel=1e-12)
    assert t.loss_first_order == pytest.approx(float(gradient @ d), rel=1e-10)
    assert t.loss_second_order - t.loss_first_order == pytest.approx(0.5 * float(d @ hess @ d), rel=1e-9)


def test_layer_noise_statistics() -> None:
    model, data = conv_net(2, seed=4), image_batches()
    with torch.no_grad():
        for q in quantizers(model).values():
            q.step.mul_(0.5)  # half LSQ's initial step, so that some weights are clipped
    result = reg.regularizer(model, data, reg.RegularizerSettings(noise_samples=2))
    for layer, (name, q) in zip(result.layers, quantizers(model).items(), strict=True):
        module = dict(model.named_modules())[name]
        w = latent_weight(module).detach()
        with torch.no_grad():
            delta = w - module.weight
        s = float(q.step.detach())
        assert (layer.layer, layer.bits, layer.step, layer.numel) == (name, 2, s, w.numel())
        assert layer.delta_rms_over_step == pytest.approx(float(delta.square().mean().sqrt()) / s)
        # At 2 bits the levels are {-2, -1, 0, 1} s: w/s beyond [-2.5, 1.5] is clipped.
        assert layer.clipped_fraction == pytest.approx(
            float(((w / s > 1.5) | (w / s < -2.5)).double().mean())
        )
    assert max(layer.clipped_fraction for layer in result.layers) > 0


def test_delta_is_close_to_uniform_at_eight_bits() -> None:
    torch.manual_seed(5)
    model = quantize_model(
        nn.Sequential(nn.Linear(40, 50), nn.Tanh(), nn.Linear(50, 3)).double(), 8, quantize_first_last=True
    )
    result = reg.regularizer(model, batches([4], (40,), 3), reg.RegularizerSettings(noise_samples=2))
    for layer in result.layers:
        assert layer.clipped_fraction == 0
        assert layer.delta_rms_over_step == pytest.approx(1 / math.sqrt(12), rel=0.1)


def test_initial_step_regularizer_quantizes_a_copy_at_lsq_initial_steps() -> None:
    model, data = conv_net(None), image_batches()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    settings = reg.RegularizerSettings(noise_samples=4, seed=6)
    results = {b: reg.initial_step_regularizer(model, data, b, settings=settings) for b in (8, 4, 2)}
    assert not quantizers(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # quantize_first_last=False: only the middle conv, as in quantize_model.
    assert [layer.layer for layer in results[8].layers] == ["3"]
    assert results[4].layers[0].step == pytest.approx(float(initial_step(model[3].weight, 4)))
    # s0 ∝ 1/sqrt(Q_P) with Q_P = 127, 7, 1 and the same uniform draws: E R ∝ 1/Q_P exactly.
    assert results[4].expected.value / results[8].expected.value == pytest.approx(127 / 7, rel=1e-9)
    assert results[2].expected.value / results[4].expected.value == pytest.approx(7, rel=1e-9)
    both = reg.initial_step_regularizer(model, data, 4, quantize_first_last=True, settings=settings)
    assert [layer.layer for layer in both.layers] == ["0", "3", "7"]


def test_model_is_left_unchanged() -> None:
    model, data = conv_net(4), image_batches()
    model[7].eval()
    model[1].bias.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    for at in ("latent", "quantized"):
        reg.regularizer(model, data, reg.RegularizerSettings(at=at, noise_samples=2))
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert list(quantizers(model)) == ["0", "3", "7"]


def test_result_is_json_ready_and_reproducible() -> None:
    import json

    model, data = conv_net(4), image_batches()
    settings = reg.RegularizerSettings(noise_samples=3, seed=7)
    first = reg.regularizer(model, data, settings)
    assert reg.regularizer(model, data, settings) == first
    assert (
        reg.regularizer(model, data, reg.RegularizerSettings(noise_samples=3, seed=8)).expected
        != first.expected
    )
    record = json.loads(json.dumps(asdict(first)))
    assert record["direction"] == "w_hat - w" and record["at"] == "latent"
    assert set(record["taylor"]) >= {"output_relative_error", "loss_first_order", "loss_second_order"}


def test_errors_name_the_problem() -> None:
    data = image_batches()
    with pytest.raises(ValueError, match=r"no LSQ-quantized layer.*initial_step_regularizer"):
        reg.regularizer(conv_net(None), data)
    with pytest.raises(ValueError, match="already quantized"):
        reg.initial_step_regularizer(conv_net(4), data, 4)
    with pytest.raises(ValueError, match="at='folded'"):
        reg.RegularizerSettings(at="folded")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_samples=1"):
        reg.RegularizerSettings(noise_samples=1)
    with pytest.raises(ValueError, match="no samples"):
        reg.regularizer(conv_net(4), [])
