"""VVTQ's module policy on timm's DeiT-T and Swin-T (random init, CPU, batch 1)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qgen import quant, vvtq
from qgen.experiments import RunSpec
from qgen.measures.run import measured_network
from qgen.models import create_model
from qgen.objective import Objective
from qgen.runs import build_model

VITS = ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]


def vit_spec(model: str, precision: str) -> RunSpec:
    return RunSpec(
        experiment="vit",
        point="p",
        precision=precision,
        dataset="imagenet",
        model=model,
        model_args={},
        optimizer="adam",
        lr=5e-4,
        weight_decay=0.0,
        epochs=4,
        batch_size=1,
        milestones=[3],
        quant_policy="vvtq",
        obr_weight=0.01,
    )


def image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", VITS)
def test_splitting_qkv_keeps_the_attentions_function(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    split = copy.deepcopy(model)
    attentions = [m for m in split.modules() if type(m) in (vvtq.Attention, vvtq.WindowAttention)]
    for attn in attentions:
        vvtq.split_attention(attn)
    assert len(attentions) == 12
    first = attentions[0]
    assert list(first._modules)[:3] == ["q", "k", "v"] and not hasattr(first, "qkv")
    with torch.no_grad():
        torch.testing.assert_close(split(image()), model(image()), rtol=1e-5, atol=1e-5)


def layer_plan(model: nn.Module) -> dict[str, tuple[int | None, int | None, bool | None, bool]]:
    """Layer name -> (weight bits, input bits, input signed, input offset) of every quantized layer."""
    plan = {}
    for name, m in model.named_modules():
        if isinstance(m, quant.QuantizedLayer):
            w, x = quant.weight_quantizer(m), m.input_quantizer
            plan[name] = (
                w and w.bits,
                x and x.bits,
                x and x.signed,
                x is not None and x.offset is not None,
            )
    return plan


@pytest.mark.parametrize("name", VITS)
def test_the_policy_quantizes_each_module_as_vvtq(name: str) -> None:
    model = build_model(vit_spec(name, "w4a4"))
    plan = layer_plan(model)
    assert all(
        isinstance(m, quant.QuantizedLayer) for m in model.modules() if isinstance(m, quant.QUANTIZABLE)
    )
    block = "blocks.0" if name.startswith("deit") else "layers.0.blocks.0"
    head = "head" if name.startswith("deit") else "head.fc"
    assert plan["patch_embed.proj"] == (8, 8, True, False)
    assert plan[head] == (8, 8, True, False)
    for projection in "qkv":
        assert plan[f"{block}.attn.{projection}"] == (4, 4, True, False)
    assert plan[f"{block}.attn.proj"] == (4, 4, True, False)
    assert plan[f"{block}.mlp.fc1"] == (4, 4, True, False)
    assert plan[f"{block}.mlp.fc2"] == (4, 4, False, True)
    attn = model.get_submodule(f"{block}.attn")
    assert attn.q.input_quantizer is attn.k.input_quantizer is attn.v.input_quantizer, (
        "one quantizer for q, k, v"
    )
    assert [attn.q_quantizer.signed, attn.k_quantizer.signed, attn.v_quantizer.signed] == [True] * 3
    assert not attn.attn_quantizer.signed and attn.attn_quantizer.bits == 4
    if name.startswith("swin"):
        assert plan["layers.1.downsample.reduction"] == (8, None, None, False)
    weight_only = layer_plan(build_model(vit_spec(name, "int2")))
    assert weight_only.keys() == plan.keys()
    assert (
        weight_only["patch_embed.proj"] == (8, None, None, False) and weight_only[f"{block}.attn.q"][0] == 2
    )
    assert not quant.activation_quantizers(build_model(vit_spec(name, "int2")))


def test_the_policy_refuses_a_model_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="the vvtq policy knows the vision transformers"):
        vit_spec("resnet18", "w4a4")


def quantizer_outputs(model: nn.Module) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        q.register_forward_hook(lambda mod, args, out, name=name: outputs.setdefault(name, out.detach()))
        for name, q in quant.activation_quantizers(model).items()
    ]
    with torch.no_grad():
        model(image(1))
    for hook in hooks:
        hook.remove()
    return outputs


@pytest.mark.parametrize("name", VITS)
def test_forward_backward_at_batch_1_reaches_every_quantizer(name: str) -> None:
    """After calibration every operand VVTQ quantizes takes at most 2^b values (with its offset), and one
    backward pass gives every weight, step and offset a gradient."""
    model = build_model(vit_spec(name, "w2a2")).train()
    assert quant.calibrate_activations(model, image()) == 98
    outputs = quantizer_outputs(model)
    for quantizer_name, q in quant.activation_quantizers(model).items():
        assert len(torch.unique(outputs[quantizer_name])) <= 2**q.bits, quantizer_name
    loss = nn.functional.cross_entropy(model(image()), torch.tensor([3]))
    loss.backward()
    assert torch.isfinite(loss)
    layers = [m for m in model.modules() if isinstance(m, quant.QuantizedLayer)]
    learned = quant.quantizer_parameters(model) + [quant.latent_weight(m) for m in layers]
    missing = [p.shape for p in learned if p.grad is None or not torch.isfinite(p.grad).all()]
    # Activation steps, the 12 MLP offsets, and a latent weight and its step per layer.
    assert not missing and len(learned) == 98 + 12 + 2 * len(layers)


def steps(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective, batches: range) -> None:
    for i in batches:
        images, labels = image(10 + i), torch.tensor([i % 10])
        loss = objective(model(images), images, labels, epoch=4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        quant.clamp_steps_(quant.step_parameters(model))


@pytest.mark.parametrize("name", VITS)
def test_checkpoint_and_resume_are_bit_identical(name: str) -> None:
    """Three Adam steps (objective with the oscillation regularizer on) equal two, a state-dict round trip
    into a freshly built model and optimizer, and one more. The checkpoint holds the random stream too:
    timm's Swin-T drops paths at random (rate 0.1 by default)."""
    spec = vit_spec(name, "w4a4")

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer, Objective]:
        torch.manual_seed(0)
        model = build_model(spec).train()
        quant.calibrate_activations(model, image())
        return model, torch.optim.Adam(model.parameters(), lr=spec.lr), Objective(model, 4, spec.obr_weight)

    straight, optimizer, objective = fresh()
    steps(straight, optimizer, objective, range(3))
    first, optimizer, objective = fresh()
    steps(first, optimizer, objective, range(2))
    saved = copy.deepcopy((first.state_dict(), optimizer.state_dict(), torch.get_rng_state()))
    resumed, optimizer, objective = fresh()
    resumed.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    steps(resumed, optimizer, objective, range(2, 3))
    expected, got = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), [
        k for k in expected if not torch.equal(expected[k], got[k])
    ]
    assert not torch.equal(
        expected["patch_embed.proj.input_quantizer.step"], saved[0]["patch_embed.proj.input_quantizer.step"]
    )


def test_the_measured_network_keeps_the_attentions_quantizers_active() -> None:
    """Materialized weights (w_hat as plain tensors) with every activation quantizer left in place: the same
    function, bit for bit, and the searches perturb no step or offset."""
    from qgen.measures.perturb import perturbed_names

    model = build_model(vit_spec(VITS[0], "w4a4")).train()
    quant.calibrate_activations(model, image())
    network = measured_network(model, "quantized")
    assert not quant.quantizers(network) and len(quant.activation_quantizers(network)) == 98
    with torch.no_grad():
        assert torch.equal(network(image(2)), model.eval()(image(2)))
    names = perturbed_names(network, "all")
    assert not [n for n in names if n.endswith((".step", ".offset"))]
    assert "blocks.0.attn.q.weight" in names
