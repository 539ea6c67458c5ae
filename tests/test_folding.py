"""BatchNorm folding: eval-mode equivalence on every BN-bearing registry model, data-flow pairing (not
definition order), the BNs that must stay, and quantized models via :func:`materialize_weights`."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights

from qgen.folding import (
    BatchNorm,
    FoldedBatchNorm,
    fold_batchnorm,
    folded_pairs,
    materialize_weights,
    with_identity_batchnorm,
)
from qgen.models import create_model
from qgen.quant import latent_weight, quantize_model


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial affine parameters and running statistics (in place)."""
    generator = torch.Generator().manual_seed(seed)
    for bn in (m for m in model.modules() if isinstance(m, BatchNorm)):
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5, generator=generator)
            bn.bias.normal_(0.0, 0.2, generator=generator)
        if bn.track_running_stats:
            bn.running_mean.normal_(0.0, 0.2, generator=generator)
            bn.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


@torch.no_grad()
def assert_same_function(actual: nn.Module, expected: nn.Module, x: Tensor) -> None:
    """Eval-mode outputs agree to 1e-4 of the output scale (both models are left in eval mode)."""
    want = expected.eval()(x)
    torch.testing.assert_close(actual.eval()(x), want, rtol=0, atol=1e-4 * float(want.abs().max()))


def batchnorm_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BatchNorm)]


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: t.clone() for name, t in model.state_dict().items()}


REGISTRY_CNNS = {
    "nin": 32,
    "resnet18_cifar": 32,
    "resnet50_cifar": 32,
    "vgg19_cifar": 32,
    "mobilenet_v1_cifar": 32,
    "resnet18": 64,
    "mobilenet_v2": 64,
}
"""BN-bearing registry model -> input resolution used here."""


@pytest.mark.parametrize("name", REGISTRY_CNNS)
def test_registry_model_fold_is_exact_complete_and_leaves_the_original_alone(name: str) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model(name, num_classes=10))  # still in training mode
    before = snapshot(model)
    bn_names = batchnorm_names(model)

    folded = fold_batchnorm(model)

    pairs = folded_pairs(model)
    assert sorted(bn for _, bn in pairs) == sorted(bn_names), "every BN of a registry CNN follows a conv"
    assert batchnorm_names(folded) == [] and folded_pairs(folded) == []
    assert model.training and folded.training
    assert batchnorm_names(model) == bn_names
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before), "the original was modified"
    # Parameter names are the unfolded model's, less the BNs', plus the biases the fold created.
    kept = {n for n, _ in model.named_parameters() if n.rpartition(".")[0] not in bn_names}
    assert {n for n, _ in folded.named_parameters()} == kept | {f"{layer}.bias" for layer, _ in pairs}

    size = REGISTRY_CNNS[name]
    assert_same_function(folded, model, torch.randn(1, 3, size, size))


def test_resnet_projection_shortcut_bn_pairs_with_the_shortcut_conv() -> None:
    pairs = folded_pairs(create_model("resnet18_cifar", num_classes=10, base_width=4))
    assert ("stages.1.0.shortcut.conv", "stages.1.0.shortcut.bn") in pairs
    assert ("stages.1.0.residual.1.conv", "stages.1.0.residual.1.bn") in pairs


class BnDefinedFirst(nn.Module):
    """The BN is defined before the conv it follows (definition-order pairing finds no conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class CrossedNames(nn.Module):
    """Defined conv_a, bn_a, conv_b, bn_b, but run conv_a -> bn_b -> conv_b -> bn_a: definition-order
    pairing would fold the 6-channel bn_a into the 4-channel conv_a."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(6)
        self.conv_b = nn.Conv2d(4, 6, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn_a(self.conv_b(torch.relu(self.bn_b(self.conv_a(x)))))


@pytest.mark.parametrize(
    ("model_class", "expected"),
    [
        (BnDefinedFirst, [("conv", "bn")]),
        (CrossedNames, [("conv_a", "bn_b"), ("conv_b", "bn_a")]),
    ],
)
def test_pairs_follow_the_data_flow_not_the_definition_order(
    model_class: type[nn.Module], expected: list[tuple[str, str]]
) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(model_class())
    assert folded_pairs(model) == expected
    assert_same_function(fold_batchnorm(model), model, torch.randn(4, 3, 8, 8))


FOLDABLE = {
    "bias_free_conv": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)),
        (4, 3, 8, 8),
    ),
    "linear_bn1d": (lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)), (8, 5)),
    "conv1d_bn1d": (lambda: nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4)), (4, 3, 9)),
    "depthwise_conv": (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4)), (4, 4, 8, 8)),
    "grouped_conv": (lambda: nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)), (4, 4, 8, 8)),
    "bn_without_affine": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)),
        (4, 3, 8, 8),
    ),
}


@pytest.mark.parametrize("case", FOLDABLE)
def test_layer_kinds_fold_exactly_into_a_biased_layer(case: str) -> None:
    factory, shape = FOLDABLE[case]
    torch.manual_seed(0)
    model = randomize_batchnorm_(factory())

    folded = fold_batchnorm(model)

    assert folded_pairs(model) == [("0", "1")]
    assert isinstance(folded[1], nn.Identity)
    assert isinstance(folded[0].bias, nn.Parameter) and folded[0].bias.shape == (folded[0].weight.shape[0],)
    assert_same_function(folded, model, torch.randn(shape))


def test_identity_batchnorm_is_the_reference_leftover_computing_x_over_sqrt_one_plus_eps() -> None:
    """The reference's ``_reparam`` leaves gamma 1, beta 0, mean 0, var 1 and the BN's own eps."""
    torch.manual_seed(0)
    model = randomize_batchnorm_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=0.1))).eval()
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], FoldedBatchNorm) and folded[1].eps == 0.1

    reference = with_identity_batchnorm(folded)

    bn = reference[1]
    assert type(bn) is nn.BatchNorm2d and bn.eps == 0.1 and not bn.training
    for tensor, value in ((bn.weight, 1.0), (bn.bias, 0.0), (bn.running_mean, 0.0), (bn.running_var, 1.0)):
        assert torch.equal(tensor, torch.full((4,), value))
    assert isinstance(folded[1], FoldedBatchNorm), "the folded model was modified"
    assert all(torch.equal(reference[0].state_dict()[k], v) for k, v in folded[0].state_dict().items())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), folded(x) / 1.1**0.5)


def test_identity_batchnorm_nin_computes_the_folded_function_with_the_unfolded_names() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model("nin", num_classes=10, depth=2, width=1)).eval()
    folded = fold_batchnorm(model)

    reference = with_identity_batchnorm(folded)

    assert batchnorm_names(reference) == batchnorm_names(model)
    assert [n for n, _ in reference.named_parameters()] == [n for n, _ in model.named_parameters()]
    folded_params = dict(folded.named_parameters())
    for name, p in reference.named_parameters():
        if name.rpartition(".")[0] not in batchnorm_names(model):
            assert torch.equal(p, folded_params[name]), name
    assert_same_function(reference, folded, torch.randn(4, 3, 32, 32))
    assert_same_function(reference, model, torch.randn(4, 3, 32, 32))


class Wired(nn.Module):
    """Two 4->4 convs and one BN, composed by ``wiring(self, x)``."""

    def __init__(self, wiring: Callable[[Wired, Tensor], Tensor], bn: nn.Module | None = None) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = bn or nn.BatchNorm2d(4)
        self.wiring = wiring

    def forward(self, x: Tensor) -> Tensor:
        return self.wiring(self, x)


def conv_with_two_users(m: Wired, x: Tensor) -> Tensor:
    y = m.conv_a(x)
    return m.bn(y) + y


UNFOLDABLE = {
    "bn_after_add": lambda: Wired(lambda m, x: m.bn(m.conv_a(x) + m.conv_b(x))),
    "conv_output_with_two_users": lambda: Wired(conv_with_two_users),
    "conv_called_twice": lambda: Wired(lambda m, x: m.bn(m.conv_a(torch.relu(m.conv_a(x))))),
    "bn_called_twice": lambda: Wired(lambda m, x: m.bn(m.conv_a(x)) + m.bn(m.conv_b(x))),
    "conv_weight_read_in_forward": lambda: Wired(lambda m, x: m.bn(m.conv_a(x)) * m.conv_a.weight.mean()),
    "bn_without_running_stats": lambda: Wired(
        lambda m, x: m.bn(m.conv_a(x)), bn=nn.BatchNorm2d(4, track_running_stats=False)
    ),
}


@pytest.mark.parametrize("case", UNFOLDABLE)
def test_bn_that_is_not_an_affine_map_of_one_layer_output_stays(case: str) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(UNFOLDABLE[case]())

    folded = fold_batchnorm(model)

    assert folded_pairs(model) == []
    assert batchnorm_names(folded) == ["bn"]
    assert_same_function(folded, model, torch.randn(4, 4, 8, 8))


class DataDependent(nn.Module):
    """Python control flow on a tensor value: not symbolically traceable."""

    def __init__(self, with_bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4) if with_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) if y.sum() > 0 else y


def test_untraceable_model_with_bn_raises_naming_the_model_class() -> None:
    with pytest.raises(ValueError, match="DataDependent"):
        fold_batchnorm(DataDependent(with_bn=True))


@pytest.mark.parametrize(
    "factory",
    [lambda: DataDependent(with_bn=False), lambda: create_model("deit_tiny_patch16_224", num_classes=10)],
    ids=["untraceable", "deit_tiny"],
)
def test_model_without_batchnorm_is_copied_untraced(factory: Callable[[], nn.Module]) -> None:
    model = factory()
    folded = fold_batchnorm(model)
    assert folded is not model
    assert folded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(t, folded.state_dict()[k]) for k, t in model.state_dict().items())


@pytest.fixture
def quantized() -> nn.Module:
    """A 4-bit LSQ CIFAR ResNet-18 (stem and classifier FP32) with non-trivial BNs, in eval mode."""
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", num_classes=10, base_width=4)
    return quantize_model(randomize_batchnorm_(model), bits=4).eval()


def parametrized_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if parametrize.is_parametrized(m)]


def test_folding_a_quantized_layer_raises_naming_it(quantized: nn.Module) -> None:
    first_quantized = "stages.0.0.residual.0.conv"
    assert parametrized_names(quantized)[0] == first_quantized
    with pytest.raises(ValueError, match=re.escape(f"{first_quantized!r}") + ".*materialize"):
        fold_batchnorm(quantized)


def test_materialized_quantized_weights_compute_the_quantized_function(quantized: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = quantized(x)
    plain = materialize_weights(quantized)

    assert parametrized_names(plain) == []
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), expected, rtol=0, atol=0, msg="the original changed")
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
    assert not any("parametrizations" in name for name, _ in plain.named_parameters())
    for name in parametrized_names(quantized):
        torch.testing.assert_close(plain.get_submodule(name).weight, quantized.get_submodule(name).weight)
    assert_same_function(fold_batchnorm(plain), quantized, x)


def test_materialized_latent_weights_are_the_float_weights(quantized: nn.Module) -> None:
    plain = materialize_weights(quantized, quantized=False)

    assert parametrized_names(plain) == []
    for name in parametrized_names(quantized):
        module = quantized.get_submodule(name)
        weight = plain.get_submodule(name).weight
        torch.testing.assert_close(weight, latent_weight(module), rtol=0, atol=0)
        assert not torch.equal(weight, module.weight), f"{name}: latent weight equals its quantized image"


def test_folding_is_done_in_float64_then_rounded_once() -> None:
    """PyTorch's fusion arithmetic in float64, cast back: each folded weight is the correctly rounded product,
    which float32 fusion is not always."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 64, 3, bias=False), nn.BatchNorm2d(64)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 3.0)
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1, 1)
    folded = fold_batchnorm(nn.Sequential(conv, bn).eval())[0]
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    exact = (conv.weight.double() * scale.view(-1, 1, 1, 1)).float()
    assert torch.equal(folded.weight, exact)
    single, _ = fuse_conv_bn_weights(
        conv.weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    assert not torch.equal(single, exact)  # float32 fusion rounds twice
