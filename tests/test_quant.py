"""LSQ quantizer: forward against eqs. 1-2, gradients against LSQ's closed forms, init, model policy."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import grad, vmap
from torch.nn.utils import parametrize

from qgen import quant


def closed_form(w: torch.Tensor, s: float, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Independent LSQ reference: (w_hat, d w_hat/d w, d w_hat/d s before gradient scaling), elementwise."""
    q_n, q_p = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    v = w / s
    below, above = v <= q_n, v >= q_p
    w_hat = torch.where(below, q_n * s, torch.where(above, q_p * s, torch.round(v) * s))
    d_w = (~below & ~above).to(w.dtype)
    d_s = torch.where(
        below, torch.full_like(v, q_n), torch.where(above, torch.full_like(v, q_p), torch.round(v) - v)
    )
    return w_hat, d_w, d_s


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_forward_matches_equations_1_2(bits: int) -> None:
    torch.manual_seed(bits)
    w = torch.randn(257) * 3
    s = torch.tensor(0.37)
    expected, _, _ = closed_form(w, 0.37, bits)
    torch.testing.assert_close(quant.lsq_fake_quant(w, s, bits), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gradients_match_lsq_closed_form_including_both_clip_regions(bits: int) -> None:
    q_n, q_p = quant.level_bounds(bits)
    s_value = 0.25
    # Points strictly inside the range plus points beyond both clip edges.
    inside = (torch.linspace(q_n + 0.1, q_p - 0.1, 41) + 0.013) * s_value
    outside = torch.tensor([q_n - 3.0, q_n - 0.6, q_p + 0.6, q_p + 5.0]) * s_value
    w = torch.cat([inside, outside]).requires_grad_(True)
    s = torch.tensor(s_value, requires_grad=True)
    upstream = torch.randn(w.shape, generator=torch.Generator().manual_seed(0))

    (quant.lsq_fake_quant(w, s, bits) * upstream).sum().backward()

    _, d_w, d_s = closed_form(w.detach(), s_value, bits)
    g = 1.0 / math.sqrt(w.numel() * q_p)
    torch.testing.assert_close(w.grad, upstream * d_w)
    torch.testing.assert_close(s.grad, g * (upstream * d_s).sum())
    assert d_w[-4:].sum() == 0, "weights beyond the clip range must get no gradient"
    assert d_s[-4].item() == q_n and d_s[-1].item() == q_p


def composite_lsq(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    """The pre-fusion ``lsq_fake_quant``, kept as the reference: the LSQ paper's Appendix pseudocode
    (``gradscale``, clip, ``roundpass``), six autograd nodes."""
    q_n, q_p = quant.level_bounds(bits)
    g = 1.0 / math.sqrt(w.numel() * q_p)
    s = (s - s * g).detach() + s * g
    v = torch.clamp(w / s, q_n, q_p)
    return ((v.round() - v).detach() + v) * s


def edge_cases(bits: int, s: float, dtype: torch.dtype) -> torch.Tensor:
    """Weights with ``w/s`` exactly at each clip bound, one ulp inside and one ulp beyond it, far beyond
    it, at every rounding tie ``k + 0.5`` in the range, and at random points inside (``s`` a power of 2,
    so that ``w/s`` is exact)."""
    q_n, q_p = quant.level_bounds(bits)
    at = torch.tensor([q_n, q_p], dtype=dtype) * s
    just_inside = torch.nextafter(at, torch.zeros_like(at))
    just_beyond = torch.nextafter(at, 2 * at)
    far_beyond = torch.tensor([q_n - 2.7, q_p + 2.7], dtype=dtype) * s
    ties = (torch.arange(q_n, q_p, dtype=dtype) + 0.5) * s
    inside = (q_n + (q_p - q_n) * torch.rand(50, generator=torch.Generator().manual_seed(bits))).to(dtype) * s
    return torch.cat([at, just_inside, just_beyond, far_beyond, ties, inside])


def values_and_gradients(
    fake_quant: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    w: torch.Tensor,
    s: torch.Tensor,
    bits: int,
    upstream: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fake_quant(w, s, bits)`` and its gradients in ``w`` and ``s`` for the upstream gradient."""
    w, s = w.clone().requires_grad_(True), s.clone().requires_grad_(True)
    out = fake_quant(w, s, bits)
    grad_w, grad_s = torch.autograd.grad(out, (w, s), upstream)
    return out.detach(), grad_w, grad_s


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_op_equals_the_composite_at_and_around_both_clip_edges(bits: int, dtype: torch.dtype) -> None:
    """Same values and weight gradients; the step gradient within a few roundings of the float64 closed form
    for both (relative to ``sum |upstream * d|``, the scale of its rounding error)."""
    s = torch.tensor(0.25, dtype=dtype)
    w = edge_cases(bits, 0.25, dtype)
    g = 1.0 / math.sqrt(w.numel() * quant.level_bounds(bits)[1])
    assert (s - s * g) + s * g == s, "the composite's scaled step must equal s for the bound cases"
    upstream = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)).to(dtype)

    out, grad_w, grad_s = values_and_gradients(quant.lsq_fake_quant, w, s, bits, upstream)
    ref_out, ref_grad_w, ref_grad_s = values_and_gradients(composite_lsq, w, s, bits, upstream)

    assert out.dtype == grad_w.dtype == grad_s.dtype == dtype
    assert torch.equal(out, ref_out)
    assert torch.equal(grad_w, ref_grad_w)
    # One ulp inside the bounds passes the gradient; the bounds themselves and everything beyond do not.
    assert torch.equal(grad_w[2:4], upstream[2:4]) and (grad_w[:2] == 0).all() and (grad_w[4:8] == 0).all()
    _, _, d_s = closed_form(w.double(), 0.25, bits)
    terms = g * upstream.double() * d_s
    tolerance = 2 * torch.finfo(dtype).eps * float(terms.abs().sum())
    for step_grad in (grad_s, ref_grad_s):
        assert abs(float(step_grad) - float(terms.sum())) <= tolerance


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fused_jacobian_equals_the_composite_elementwise_in_double(bits: int) -> None:
    """Full Jacobians in (w, s): the STE diagonal and every element's d w_hat / d s, bounds included."""
    q_n, q_p = quant.level_bounds(bits)
    w = edge_cases(bits, 0.25, torch.float64)
    s = torch.tensor(0.25, dtype=torch.float64)
    fused = torch.autograd.functional.jacobian(lambda w, s: quant.lsq_fake_quant(w, s, bits), (w, s))
    composite = torch.autograd.functional.jacobian(lambda w, s: composite_lsq(w, s, bits), (w, s))
    torch.testing.assert_close(fused, composite, rtol=1e-12, atol=1e-15)
    g = 1.0 / math.sqrt(w.numel() * q_p)
    d_w, d_s = fused[0].diagonal(), fused[1] / g
    _, expected_d_w, expected_d_s = closed_form(w, 0.25, bits)
    assert torch.equal(d_w, expected_d_w)
    torch.testing.assert_close(d_s, expected_d_s, rtol=1e-12, atol=1e-15)
    # Order of edge_cases: at the bounds, one ulp inside, one ulp beyond, far beyond (lower, upper each).
    # A bound counts as clipped (LSQ eq. 3): no weight gradient, d = the bound.
    assert d_w[:2].sum() == 0 and d_w[2:4].sum() == 2 and d_w[4:8].sum() == 0
    bounds = torch.tensor([q_n, q_p] * 3, dtype=torch.float64)
    torch.testing.assert_close(d_s[[0, 1, 4, 5, 6, 7]], bounds, rtol=1e-12, atol=0)
    assert d_s[2:4].abs().max() < 1e-12  # round(v) - v, one ulp inside


def test_fused_gradient_is_the_true_derivative_beyond_the_clip_range() -> None:
    """Where every weight is clipped, w_hat = bound * s is differentiable and LSQ's gradient (without its
    scale) is its true derivative, so ``torch.autograd.gradcheck`` applies (inside the range, LSQ's
    straight-through gradient is not a derivative; the composite comparisons above cover it). Batched
    gradients check the backward under vmap."""
    q_n, q_p = quant.level_bounds(4)
    w = torch.tensor([q_n - 3.2, q_n - 1.1, q_p + 0.7, q_p + 4.4], dtype=torch.float64) * 0.3
    s = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def unscaled(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return quant.LSQFakeQuant.apply(w, s, q_n, q_p, 1.0)

    assert torch.autograd.gradcheck(unscaled, (w.requires_grad_(True), s), check_batched_grad=True)


def test_fused_op_runs_under_vmap_like_a_loop_and_without_a_batching_fallback() -> None:
    """Stacked copies (weights and steps batched, or weights only), gradients through the vmap, and
    per-copy gradients with ``torch.func.grad`` (batched upstream, shared weights and step)."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(3, 40, generator=generator, requires_grad=True)
    steps = torch.tensor([0.2, 0.3, 0.4], requires_grad=True)
    shared = torch.tensor(0.3, requires_grad=True)
    upstream = torch.randn(3, 40, generator=generator)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="There is a performance drop")
        both = vmap(lambda w, s: quant.lsq_fake_quant(w, s, 4))(w, steps)
        weights_only = vmap(lambda w: quant.lsq_fake_quant(w, shared, 4))(w)
        grads = torch.autograd.grad(
            (both * upstream).sum() + (weights_only * upstream).sum(), (w, steps, shared)
        )

        def loss(w: torch.Tensor, s: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
            return (quant.lsq_fake_quant(w, s, 4) * up).sum()

        per_copy = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, None, 0))(
            w[0].detach(), shared.detach(), upstream
        )

    loop_both = torch.stack([quant.lsq_fake_quant(w[i], steps[i], 4) for i in range(3)])
    loop_weights = torch.stack([quant.lsq_fake_quant(w[i], shared, 4) for i in range(3)])
    assert torch.equal(both, loop_both) and torch.equal(weights_only, loop_weights)
    loop_grads = torch.autograd.grad(
        (loop_both * upstream).sum() + (loop_weights * upstream).sum(), (w, steps, shared)
    )
    for batched, looped in zip(grads, loop_grads, strict=True):
        torch.testing.assert_close(batched, looped)
    for i in range(3):
        expected = torch.autograd.grad(loss(w[0], shared, upstream[i]), (w, shared))
        torch.testing.assert_close(per_copy[0][i], expected[0][0])
        torch.testing.assert_close(per_copy[1][i], expected[1])


class CompositeQuantizer(quant.LSQWeightQuantizer):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return composite_lsq(weight, self.step, self.bits)


def test_training_with_the_fused_op_gives_the_composites_weights_and_steps() -> None:
    """Five SGD steps (momentum, weight decay) of the same quantized net, in double precision."""
    images = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.arange(16) % 5
    trained = []
    for composite in (False, True):
        model = quant.quantize_model(small_net().double(), 4)
        if composite:
            for q in quant.quantizers(model).values():
                q.__class__ = CompositeQuantizer
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            quant.clamp_steps_(quant.step_parameters(model))
        trained.append(model.state_dict())
    fused, composite = trained
    assert fused.keys() == composite.keys()
    for key in fused:
        torch.testing.assert_close(fused[key], composite[key], rtol=1e-9, atol=1e-12, msg=key)
    initial = quant.quantize_model(small_net().double(), 4).state_dict()
    assert not torch.equal(
        fused["3.parametrizations.weight.0.step"], initial["3.parametrizations.weight.0.step"]
    )


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_initial_step_is_two_mean_abs_over_sqrt_qp(bits: int) -> None:
    w = torch.tensor([[-1.0, 2.0], [3.0, -6.0]])
    assert quant.initial_step(w, bits).item() == pytest.approx(2 * 3.0 / math.sqrt(2 ** (bits - 1) - 1))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantized_weights_take_at_most_2_pow_b_values_all_multiples_of_s(bits: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(10_000)
    s = quant.initial_step(w, bits)
    w_hat = quant.lsq_fake_quant(w, s, bits)
    levels = torch.unique(w_hat)
    assert len(levels) <= 2**bits
    ratios = levels / s
    torch.testing.assert_close(ratios, ratios.round(), rtol=0, atol=1e-4)
    q_n, q_p = quant.level_bounds(bits)
    assert ratios.min() >= q_n - 1e-4 and ratios.max() <= q_p + 1e-4


def test_level_bounds_and_precisions() -> None:
    assert quant.level_bounds(2) == (-2, 1)
    assert quant.level_bounds(4) == (-8, 7)
    assert quant.level_bounds(8) == (-128, 127)
    assert [quant.bits_of(p) for p in ("fp32", "int8", "int4", "int2")] == [None, 8, 4, 2]
    with pytest.raises(ValueError, match="int3"):
        quant.bits_of("int3")


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def test_quantize_model_skips_first_and_last_by_default() -> None:
    model = quant.quantize_model(small_net(), 4)
    assert list(quant.step_sizes(model)) == ["3", "5"]
    everything = quant.quantize_model(small_net(), 4, quantize_first_last=True)
    assert list(quant.step_sizes(everything)) == ["0", "3", "5", "8"]


def test_quantized_layer_uses_quantized_weight_and_keeps_latent_weight() -> None:
    model = quant.quantize_model(small_net(), 2)
    layer = model[3]
    latent = quant.latent_weight(layer)
    step = quant.quantizers(model)["3"].step
    torch.testing.assert_close(layer.weight, quant.lsq_fake_quant(latent, step, 2))
    assert len(torch.unique(layer.weight.detach())) <= 4
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(layer(x), nn.functional.conv2d(x, layer.weight, layer.bias))


def test_steps_initialised_from_weights_and_learned() -> None:
    net = small_net()
    w = net[3].weight.detach().clone()
    model = quant.quantize_model(net, 4)
    assert quant.step_sizes(model)["3"] == pytest.approx(quant.initial_step(w, 4).item())
    model(torch.randn(4, 3, 8, 8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in quant.step_parameters(model))


def test_fp32_is_a_no_op_and_double_quantization_is_refused() -> None:
    net = small_net()
    assert quant.quantize_model(net, None) is net and quant.step_sizes(net) == {}
    quant.quantize_model(net, 8)
    with pytest.raises(ValueError, match="already quantized; quantize a model only once"):
        quant.quantize_model(net, 8)


def test_clamp_steps_keeps_steps_positive() -> None:
    model = quant.quantize_model(small_net(), 4)
    with torch.no_grad():
        for p in quant.step_parameters(model):
            p.fill_(-1.0)
    quant.clamp_steps_(quant.step_parameters(model))
    assert all(v == pytest.approx(quant.STEP_MIN) for v in quant.step_sizes(model).values())


def test_state_dict_round_trip_restores_steps() -> None:
    model = quant.quantize_model(small_net(), 4)
    with torch.no_grad():
        quant.step_parameters(model)[0].fill_(0.123)
    fresh = quant.quantize_model(small_net(), 4)
    fresh.load_state_dict(model.state_dict())
    assert quant.step_sizes(fresh)["3"] == pytest.approx(0.123)


@pytest.mark.parametrize(
    "name",
    [
        "nin",
        "resnet18_cifar",
        "resnet50_cifar",
        "vgg19_cifar",
        "mobilenet_v1_cifar",
        "resnet18",
        "mobilenet_v2",
        "deit_tiny_patch16_224",
        "swin_tiny_patch4_window7_224",
    ],
)
def test_skipped_layers_are_the_first_and_last_executed(name: str) -> None:
    """The default policy skips layers by definition order; check that order against a forward trace."""
    from qgen.models import create_model

    model = create_model(name, 10).eval()
    executed: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, *_: executed.append(mod))
        for m in model.modules()
        if isinstance(m, quant.QUANTIZABLE)
    ]
    size = 32 if name.endswith("_cifar") or name == "nin" else 224
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    defined = [m for m in model.modules() if isinstance(m, quant.QUANTIZABLE)]
    assert executed[0] is defined[0] and executed[-1] is defined[-1]
    quant.quantize_model(model, 4)
    assert not parametrize.is_parametrized(defined[0]) and not parametrize.is_parametrized(defined[-1])
    assert len(quant.step_sizes(model)) == len(defined) - 2


@pytest.mark.parametrize("name", ["nin", "resnet18_cifar"])
def test_steps_read_from_a_state_dict_equal_the_models_in_definition_order(name: str) -> None:
    from qgen.models import create_model

    model = quant.quantize_model(create_model(name, 10), 4)
    with torch.no_grad():
        for i, q in enumerate(quant.quantizers(model).values()):
            q.step.fill_(0.01 * (i + 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert list(quant.step_sizes_of_state(state).items()) == list(quant.step_sizes(model).items())
    assert quant.step_sizes_of_state(create_model(name, 10).state_dict()) == {}
