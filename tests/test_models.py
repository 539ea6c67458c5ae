"""Tests for qgen.models: architecture sizes, forward passes, offline pretrained loading, errors."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn
from torch.func import functional_call, vmap

from qgen.errors import QgenError
from qgen.models import MODELS, create_model, model_names
from qgen.models._factory import check_signature
from qgen.models._layers import GlobalAvgPool2d
from qgen.registry import Registry
from qgen.vocab import MODEL_ARGUMENTS

CIFAR_MODELS = ("mobilenet_v1_cifar", "nin", "resnet18_cifar", "resnet50_cifar", "vgg19_cifar")
IMAGENET_MODELS = (
    "deit_tiny_patch16_224",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "swin_tiny_patch4_window7_224",
)


def conv_weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def feature_shapes(model: nn.Module, stages: nn.Sequential, x: torch.Tensor) -> list[tuple[int, ...]]:
    """The output shape (without batch) of each child of ``stages`` when ``model`` runs on ``x``."""
    shapes: list[tuple[int, ...]] = []
    hooks = [s.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:]))) for s in stages]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    return shapes


def test_registry_holds_exactly_the_paper_models() -> None:
    assert model_names() == sorted(CIFAR_MODELS + IMAGENET_MODELS)
    assert MODELS.names() == model_names()


@pytest.mark.parametrize(
    ("depth", "width", "num_classes"),
    [(2, 8, 10), (3, 12, 10), (4, 10, 10), (5, 12, 100), (1, 1, 7)],
)
def test_nin_conv_weights_number_omega(depth: int, width: int, num_classes: int) -> None:
    c, d, k = 25 * width, depth, num_classes
    omega = 27 * c + 2 * c**2 + 11 * (d - 1) * c**2 + c * k
    model = create_model("nin", num_classes, depth=depth, width=width)
    assert conv_weight_count(model) == omega


@pytest.mark.parametrize(
    ("depth", "width", "num_classes", "omega", "total"),
    [(4, 10, 10, 2_196_750, 2_205_780), (5, 12, 100, 4_178_100, 4_191_900)],
)
def test_nin_sizes_of_the_paper_configurations(
    depth: int, width: int, num_classes: int, omega: int, total: int
) -> None:
    model = create_model("nin", num_classes, depth=depth, width=width)
    assert conv_weight_count(model) == omega
    assert parameter_count(model) == total


def test_nin_keeps_the_reference_layer_names() -> None:
    model = create_model("nin", 10, depth=2, width=1, base_width=4)
    batch_norms = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert batch_norms == [f"blocks.{b}.bn{i}" for b in (0, 1) for i in (1, 2, 3)] + ["head.bn"]
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == [f"blocks.{b}.conv{i}" for b in (0, 1) for i in (1, 2, 3)] + ["head.conv"]
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_nin_halves_resolution_per_block_and_returns_non_negative_logits() -> None:
    model = create_model("nin", 10, depth=5, width=1, base_width=4)
    for batch in (1, 3):
        shapes = feature_shapes(model, model.blocks, torch.randn(batch, 3, 32, 32))
        assert shapes == [(4, 16, 16), (4, 8, 8), (4, 4, 4), (4, 2, 2), (4, 1, 1)]
        with torch.no_grad():
            logits = model(torch.randn(batch, 3, 32, 32))
        assert logits.shape == (batch, 10)
        assert (logits >= 0).all()


@pytest.mark.parametrize(
    ("name", "input_size", "batch"),
    [(name, 32, 2) for name in CIFAR_MODELS] + [(name, 224, 1) for name in IMAGENET_MODELS],
)
def test_every_model_runs_forward_with_the_right_output_shape(name: str, input_size: int, batch: int) -> None:
    model = create_model(name, 7).eval()
    with torch.no_grad():
        logits = model(torch.randn(batch, 3, input_size, input_size))
    assert logits.shape == (batch, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet18_cifar", (16, 32, 64, 128)), ("resnet50_cifar", (64, 128, 256, 512))],
)
def test_cifar_resnet_stage_shapes(name: str, channels: tuple[int, ...]) -> None:
    model = create_model(name, 10)
    shapes = feature_shapes(model, model.stages, torch.randn(1, 3, 32, 32))
    assert shapes == [(c, s, s) for c, s in zip(channels, (32, 16, 8, 4), strict=True)]


def test_cifar_resnet18_parameter_count() -> None:
    """Counted from He et al. (2016): 3x3 convolutions without bias, BN (2 parameters per channel),
    1x1 projection + BN where the block changes width, linear head."""
    base, num_classes = 16, 10

    def conv_bn(c_in: int, c_out: int, kernel: int) -> int:
        return kernel * kernel * c_in * c_out + 2 * c_out

    def basic_block(c_in: int, c: int) -> int:
        projection = conv_bn(c_in, c, 1) if c_in != c else 0
        return conv_bn(c_in, c, 3) + conv_bn(c, c, 3) + projection

    widths = [base * 2**i for i in range(4)]
    expected = conv_bn(3, base, 3) + widths[-1] * num_classes + num_classes
    for c_in, c in zip([base, *widths[:-1]], widths, strict=True):
        expected += basic_block(c_in, c) + basic_block(c, c)

    assert expected == 701_466
    assert parameter_count(create_model("resnet18_cifar", num_classes)) == expected


def test_mobilenet_v1_width_multiplier_scales_every_layer() -> None:
    model = create_model("mobilenet_v1_cifar", 10, width_mult=0.5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 13
    assert [c.out_channels for c in convs[:3]] == [16, 16, 32]
    assert sum(c.groups == c.in_channels > 1 for c in convs) == 13
    assert model.fc.in_features == 512


def test_pretrained_resnet18_loads_torchvision_weights_from_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.hub skips the download when $TORCH_HOME/hub/checkpoints holds the checkpoint."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        reference.conv1.weight.fill_(0.125)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    checkpoint = tmp_path / "hub" / "checkpoints" / Path(urlparse(url).path).name
    checkpoint.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoint)
    expected = reference.state_dict()

    imagenet = create_model("resnet18", 1000, pretrained=True).state_dict()
    assert imagenet.keys() == expected.keys()
    assert all(torch.equal(imagenet[key], expected[key]) for key in expected)
    assert (imagenet["conv1.weight"] == 0.125).all()

    finetune = create_model("resnet18", 10, pretrained=True)
    backbone = {key: value for key, value in finetune.state_dict().items() if not key.startswith("fc.")}
    assert backbone.keys() == {key for key in expected if not key.startswith("fc.")}
    assert all(torch.equal(backbone[key], expected[key]) for key in backbone)
    assert finetune.fc.weight.shape == (10, 512)


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="resnet1000") as error:
        create_model("resnet1000", 10)
    assert all(name in str(error.value) for name in model_names())


@pytest.mark.parametrize(("name", "kwarg"), [("resnet18_cifar", "widht"), ("vgg19_cifar", "pretrained")])
def test_unknown_keyword_argument_is_named(name: str, kwarg: str) -> None:
    with pytest.raises(QgenError, match=f"'{kwarg}' is not an argument of model '{name}'"):
        create_model(name, 10, **{kwarg: 1})


def test_mistyped_argument_is_named() -> None:
    with pytest.raises(QgenError, match=r"width='8' is a str, expected a int"):
        create_model("nin", 10, width="8")


def test_torch_free_descriptions_match_every_constructor() -> None:
    """qgen.vocab describes each model's arguments for the DAG; they must be the constructors' own."""
    assert set(MODEL_ARGUMENTS) == set(model_names())
    for name in model_names():
        parameters = list(inspect.signature(MODELS.get(name)).parameters.values())[1:]
        assert [(p.name, p.default) for p in parameters] == [
            (a.name, a.default) for a in MODEL_ARGUMENTS[name]
        ], name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters), name


def test_a_constructor_that_differs_from_its_description_is_refused() -> None:
    registry: Registry[nn.Module] = Registry("model", check=check_signature)

    def nin(num_classes: int, *, depth: int = 3) -> nn.Module:  # qgen.vocab says depth=2, width, base_width
        return nn.Identity()

    def undescribed(num_classes: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(TypeError, match="differ from their description"):
        registry.register("nin")(nin)
    with pytest.raises(TypeError, match=r"no description in qgen\.vocab\.MODEL_ARGUMENTS"):
        registry.register("undescribed")(undescribed)
    assert registry.names() == []


def test_num_classes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("nin", 0)


@pytest.mark.parametrize("shape", [(4, 6, 1, 1), (4, 6, 2, 2), (3, 5, 3, 5), (2, 16, 8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_global_pool_equals_adaptive_average_pool_in_value_and_gradient(
    shape: tuple[int, ...], channels_last: bool
) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    upstream = torch.randn(shape[0], shape[1], 1, 1, generator=torch.Generator().manual_seed(1))
    ours, theirs = GlobalAvgPool2d()(x), nn.AdaptiveAvgPool2d(1)(x)
    torch.testing.assert_close(ours, theirs)
    (grad_ours,) = torch.autograd.grad(ours, x, upstream)
    (grad_theirs,) = torch.autograd.grad(theirs, x, upstream)
    torch.testing.assert_close(grad_ours, grad_theirs)


POOLED_MODELS = [
    ("nin", {"depth": 2, "width": 1, "base_width": 4}, "head.pool"),
    ("resnet18_cifar", {"base_width": 2}, "pool"),
    ("mobilenet_v1_cifar", {"width_mult": 0.125}, "pool"),
]


@pytest.mark.parametrize(("name", "kwargs", "pool"), POOLED_MODELS)
def test_global_pool_keeps_the_state_dict_and_the_logits_of_adaptive_pooling(
    name: str, kwargs: dict, pool: str
) -> None:
    """Runs trained with ``nn.AdaptiveAvgPool2d(1)`` at the same attribute load and compute the same."""
    torch.manual_seed(0)
    model = create_model(name, 10, **kwargs).eval()
    assert isinstance(model.get_submodule(pool), GlobalAvgPool2d)
    old = create_model(name, 10, **kwargs).eval()
    parent, _, attribute = pool.rpartition(".")
    setattr(old.get_submodule(parent), attribute, nn.AdaptiveAvgPool2d(1))
    old.load_state_dict(model.state_dict())
    assert list(old.state_dict()) == list(model.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), old(x))


@pytest.mark.parametrize(("name", "kwargs"), [(name, kwargs) for name, kwargs, _ in POOLED_MODELS])
def test_stacked_copies_run_under_vmap_without_a_batching_fallback(name: str, kwargs: dict) -> None:
    """Perturbed copies on channels_last images, as :mod:`qgen.measures.perturb` evaluates them; with
    ``nn.AdaptiveAvgPool2d(1)`` PyTorch falls back to a per-copy loop for ``aten::as_strided_``."""
    torch.manual_seed(0)
    model = create_model(name, 10, **kwargs).eval()
    state = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    moved = [k for k, p in model.named_parameters() if p.dim() > 1]
    copies = {k: state[k] + 0.01 * torch.randn(2, *state[k].shape) for k in moved}
    fixed = {k: v for k, v in state.items() if k not in copies}
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def logits(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, {**fixed, **params}, (images,))

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="There is a performance drop")
        batched = vmap(logits)(copies)
    with torch.no_grad():
        one_by_one = torch.stack([logits({k: v[i] for k, v in copies.items()}) for i in range(2)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-5)
