"""LSQ quantizer: forward against eqs. 1-2, gradients against LSQ's closed forms, init, model policy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
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
    with pytest.raises(ValueError, match="already parametrized"):
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
