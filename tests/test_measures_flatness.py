"""Flatness searches on a small trained network, checked against plain re-evaluation."""

from __future__ import annotations

import copy
import dataclasses
import logging
import statistics

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qgen import data, quant
from qgen.folding import fold_batchnorm
from qgen.measures import bounds, flatness
from qgen.measures.flatness import FlatnessSearch, MeasureSettings, flatness_measures
from qgen.measures.perturb import (
    EvalSet,
    PerturbedEvaluator,
    PerturbedSet,
    StepTally,
    gaussian_std,
    perturbed_names,
    perturbed_network,
    t_quantile,
)
from qgen.measures.run import measured_network
from qgen.norms import weight_vector
from qgen.runs import build_model

from helpers import tiny_spec, train_tiny

SPEC = tiny_spec()
FAST = MeasureSettings(depth=5, samples=4, copies_per_pass=4, ascent_steps=4, ascent_batch=32)

C, K = 25, 10
"""Channels (base width 25 x width 1) and classes of SPEC's NiN 2x1."""
CONV_BN = [(f"blocks.{b}.conv{i}", f"blocks.{b}.bn{i}") for b in (0, 1) for i in (1, 2, 3)]
CONV_BN.append(("head.conv", "head.bn"))
"""The NiN 2x1's (conv, BN) pairs in execution order: 3 per block, then the head's."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, nn.Module, EvalSet]:
    tmp = tmp_path_factory.mktemp("measures")
    run = train_tiny(SPEC, tmp)
    model, init = build_model(SPEC), build_model(SPEC)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=False)["state_dict"])
    init.load_state_dict(torch.load(run / "init.pt", weights_only=False)["state_dict"])
    loader = data.build_loader(
        "digits",
        "train",
        root=tmp / "data",
        batch_size=400,
        augment="none",
        shuffle=False,
        seed=0,
        subset=SPEC.n_train,
    )
    images, labels = map(torch.cat, zip(*loader, strict=True))
    return model.eval(), init.eval(), EvalSet(images, labels, batch_size=128)


def plain_accuracy(
    model: nn.Module, names: list[str], delta: dict[str, torch.Tensor], evalset: EvalSet
) -> float:
    """Independent re-evaluation: a perturbed deep copy, one forward pass."""
    copy_ = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, p in copy_.named_parameters():
            if name in names:
                p += delta[name]
        return float((copy_(evalset.images).argmax(1) == evalset.labels).float().mean())


def stacked_copies_against_one_at_a_time(
    network: nn.Module, names: list[str], evalset: EvalSet, copies: int, scale: float
) -> tuple[PerturbedEvaluator, dict[str, torch.Tensor], torch.Tensor]:
    """``copies`` seeded perturbations evaluated stacked; each copy's accuracy is checked against
    :func:`plain_accuracy`. Returns the evaluator, the stacked deltas and the stacked accuracies."""
    evaluator = PerturbedEvaluator(network, evalset, names)
    gen = torch.Generator().manual_seed(0)
    deltas = {n: scale * torch.randn((copies, *evaluator.base[n].shape), generator=gen) for n in names}
    batched = evaluator.accuracy(deltas)
    for k in range(copies):
        one_copy = {n: d[k] for n, d in deltas.items()}
        assert batched[k].item() == pytest.approx(plain_accuracy(network, names, one_copy, evalset))
    return evaluator, deltas, batched


def test_batched_copies_equal_one_copy_at_a_time(trained) -> None:
    model, _, evalset = trained
    names = perturbed_names(model, "all")
    evaluator, deltas, batched = stacked_copies_against_one_at_a_time(model, names, evalset, 3, 0.05)
    for k in range(3):
        single = evaluator.accuracy({n: d[k : k + 1] for n, d in deltas.items()})
        assert single.shape == (1,) and single.item() == pytest.approx(batched[k].item())


def test_searches_on_a_wa_network_perturb_weights_with_activations_still_quantized(trained) -> None:
    """The measured network of a w4a4 NiN (weights materialized, BN folded, the identity BNs back) keeps
    its input quantizers: no step is perturbed, and stacked copies equal one perturbed copy at a time."""
    _, _, evalset = trained
    model = build_model(dataclasses.replace(SPEC, precision="w4a4")).eval()
    quant.calibrate_activations(model, evalset.images[:64])
    network = perturbed_network(measured_network(model, "quantized"), "reference")
    assert len(quant.activation_quantizers(network)) == len(quant.activation_quantizers(model)) == 5
    names = perturbed_names(network, "reference")
    assert not any(n.endswith(".step") for n in names) and "blocks.0.conv2.weight" in names
    stacked_copies_against_one_at_a_time(network, names, evalset, 2, 0.02)


def test_perturbed_sets() -> None:
    model = build_model(dataclasses.replace(SPEC, precision="int4"))
    all_names, weights = perturbed_names(model, "all"), perturbed_names(model, "weights")
    assert not any(n.endswith(".step") for n in all_names)
    assert all(n.endswith("weight") or n.endswith("weight.original") for n in weights)
    assert sum(dict(model.named_parameters())[n].numel() for n in weights) == weight_vector(model).numel()
    assert set(weights) < set(all_names)


def test_reference_perturbs_the_identity_bn_gamma_and_beta_too() -> None:
    """On the measured (int4, folded) NiN 2x1: 7 conv weights (weights), with their biases (all; the
    fold gave every conv a bias and removed the BNs), and the 7 identity BNs' gamma and beta (reference)."""
    model = build_model(dataclasses.replace(SPEC, precision="int4"))
    network = measured_network(model, "quantized")
    weights = [f"{conv}.weight" for conv, _ in CONV_BN]
    layers = [f"{conv}.{t}" for conv, _ in CONV_BN for t in ("weight", "bias")]
    reference = [f"{m}.{t}" for pair in CONV_BN for m in pair for t in ("weight", "bias")]

    def chosen(which: PerturbedSet) -> list[str]:  # materializing put some weights after their bias
        return sorted(perturbed_names(perturbed_network(network, which), which))

    assert (chosen("weights"), chosen("all"), chosen("reference")) == (
        sorted(weights),
        sorted(layers),
        sorted(reference),
    )
    identity = perturbed_network(network, "reference")
    assert (len(weights), len(layers), len(reference)) == (7, 14, 28)
    sizes = {n: p.numel() for n, p in identity.named_parameters()}
    omega = 27 * C + 2 * C**2 + 11 * C**2 + C * K  # NiN conv weights, depth 2
    assert sum(sizes[n] for n in weights) == omega == weight_vector(network).numel()
    assert sum(sizes[n] for n in layers) == omega + 6 * C + K
    assert sum(sizes[n] for n in reference) == omega + 3 * (6 * C + K)
    # Latent weights: no BN was folded, so reference perturbs what all does (every BN, no LSQ step).
    latent = measured_network(model, "latent")
    latent_names = perturbed_names(latent, "all")
    assert perturbed_names(perturbed_network(latent, "reference"), "reference") == latent_names
    assert not any(name.endswith(".step") for name in latent_names) and len(latent_names) == 28


def test_reference_noise_on_the_identity_bn_follows_the_reference_formula(trained) -> None:
    """Magnitude-aware noise under the reference convention has std ``sigma'^2 |p|^2 + eps^2``: so
    ``sigma'^2 + eps^2`` on gamma = 1 and ``eps^2`` on beta = 0; plain noise has std ``sigma^2``."""
    model, _, evalset = trained
    search = FlatnessSearch(fold_batchnorm(model), evalset, dataclasses.replace(FAST, perturb="reference"))
    sigma, eps = 0.3, FAST.epsilon
    mag = search.gaussian_deltas("sigma_mag", True, sigma, step=0, copies=range(64))
    plain = search.gaussian_deltas("sigma", False, sigma, step=0, copies=range(64))

    def pooled(deltas: dict[str, torch.Tensor], tensor: str) -> torch.Tensor:
        return torch.cat([deltas[f"{bn}.{tensor}"].flatten() for _, bn in CONV_BN])

    samples = 64 * (6 * C + K)
    for values, std in (
        (pooled(mag, "weight"), sigma**2 + eps**2),
        (pooled(mag, "bias"), eps**2),
        (pooled(plain, "weight"), sigma**2),
        (pooled(plain, "bias"), sigma**2),
    ):
        assert values.std().item() == pytest.approx(std, rel=0.05)
        assert abs(values.mean().item()) < 4 * std / samples**0.5
    w = search.evaluator.base["blocks.1.conv2.weight"]
    scaled = mag["blocks.1.conv2.weight"] / (sigma**2 * w.square() + eps**2)
    assert scaled.std().item() == pytest.approx(1.0, rel=0.05)


def test_reference_option_leaves_the_weights_and_norms_of_the_bounds_alone(trained) -> None:
    model, init, evalset = trained
    network, reference = fold_batchnorm(model), fold_batchnorm(init)
    cheap = MeasureSettings(depth=2, samples=2, copies_per_pass=2, ascent_steps=1, ascent_batch=16)
    out = {
        which: flatness_measures(
            network, reference, evalset, SPEC.n_train, dataclasses.replace(cheap, perturb=which)
        )
        for which in ("all", "reference")
    }
    w, w0 = weight_vector(network), weight_vector(reference)
    for record in out.values():
        assert record["omega"] == w.numel() == weight_vector(perturbed_network(network, "reference")).numel()
        assert record["norms"] == {
            "w": pytest.approx(float(w.norm())),
            "w_minus_w0": pytest.approx(float((w - w0).norm())),
        }
    assert (
        out["all"]["omega"] == out["reference"]["omega"] and out["all"]["norms"] == out["reference"]["norms"]
    )
    assert out["all"]["perturbed"] == {"tensors": 14, "parameters": w.numel() + 6 * C + K}
    assert out["reference"]["perturbed"] == {"tensors": 28, "parameters": w.numel() + 3 * (6 * C + K)}
    assert abs(out["all"]["train_accuracy"] - out["reference"]["train_accuracy"]) <= 1 / len(evalset)


def test_unknown_setting_choices_are_rejected_naming_key_and_choices() -> None:
    with pytest.raises(
        ValueError, match=r"measures\.perturb must be one of all, weights, reference; got 'bn'"
    ):
        MeasureSettings(perturb="bn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"measures\.noise must be one of reference, jiang; got 'std'"):
        MeasureSettings(noise="std")  # type: ignore[arg-type]


def test_search_logs_each_step_with_scale_deviation_fraction_and_time(
    trained, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With no interval between lines, every batch logs too; each completed step logs its outcome."""
    monkeypatch.setattr(flatness, "PROGRESS_EVERY_S", 0.0)
    model, _, evalset = trained
    search = FlatnessSearch(model, evalset, dataclasses.replace(FAST, depth=4, samples=2, copies_per_pass=1))
    with caplog.at_level(logging.INFO, logger="qgen.measures.flatness"):
        result = search.gaussian(magnitude_aware=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "qgen.measures.flatness"]

    assert lines[0] == "sigma search: at most 4 steps of 2 copies x 400 images"
    steps = [line for line in lines[1:-1] if "so far" not in line]
    assert len(steps) == result.iterations
    fractions = search.evaluated_fraction["sigma"]
    for k, ((scale, deviation), line) in enumerate(zip(result.trajectory, steps, strict=True)):
        assert line.startswith(
            f"sigma search, step {k + 1}/4 at scale {scale:.6g}: deviation {deviation:.4f} ("
        )
        assert f", {100 * fractions[k]:.0f}% of the step evaluated; elapsed " in line and line.endswith(
            " left"
        )
    during = [line for line in lines if "so far" in line]
    assert len(during) >= result.iterations and all("% of the step evaluated; elapsed" in x for x in during)
    assert lines[-1].startswith(f"sigma search: {result.value:.6g} after {result.iterations} steps (")


def test_noise_conventions() -> None:
    w = torch.tensor([0.5, -2.0])
    assert gaussian_std(w, 0.3, False, "reference", 1e-3) == pytest.approx(0.09)
    assert gaussian_std(w, 0.3, False, "jiang", 1e-3) == 0.3
    torch.testing.assert_close(gaussian_std(w, 0.3, True, "reference", 1e-3), 0.09 * w.square() + 1e-6)
    torch.testing.assert_close(gaussian_std(w, 0.3, True, "jiang", 1e-3), (0.09 * w.square() + 1e-6).sqrt())


def test_sigma_moves_training_accuracy_by_the_target(trained) -> None:
    model, _, evalset = trained
    search = FlatnessSearch(model, evalset, dataclasses.replace(FAST, depth=12, samples=8, copies_per_pass=8))
    result = search.gaussian(magnitude_aware=False)
    # Converging inside tol=0.01 on 8 noisy copies per step is luck; bracketing the scale is not.
    assert result.saturated is None and result.iterations >= 2
    sigma = result.value
    names = perturbed_names(model, "all")
    gen = torch.Generator().manual_seed(123)
    params = dict(model.named_parameters())
    accs = []
    for _ in range(30):
        noise = {n: sigma**2 * torch.randn(params[n].shape, generator=gen) for n in names}
        accs.append(plain_accuracy(model, names, noise, evalset))
    deviation = abs(sum(accs) / len(accs) - search.base_accuracy)
    assert deviation == pytest.approx(0.1, abs=0.03)


def test_ascent_raises_the_loss_and_stays_in_the_box(trained) -> None:
    model, _, evalset = trained
    names = perturbed_names(model, "all")
    evaluator = PerturbedEvaluator(model, evalset, names)
    box = {n: p.abs() for n, p in evaluator.base.items()}
    generators = [torch.Generator().manual_seed(k) for k in range(2)]
    offsets = evaluator.ascend(box, 0.05, steps=5, lr=0.05, batch=64, generators=generators)
    for n in names:
        assert (offsets[n].abs() <= 0.05 * box[n] + 1e-7).all()
        assert offsets[n].abs().max() > 0
    clean = F.cross_entropy(model(evalset.images), evalset.labels).item()
    for k in range(2):
        perturbed = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in perturbed.named_parameters():
                p += offsets[n][k]
        assert F.cross_entropy(perturbed(evalset.images), evalset.labels).item() > clean


@pytest.fixture(scope="module")
def measured(trained) -> tuple[dict, dict]:
    """The model's state before measuring, and the measures."""
    model, init, evalset = trained
    before = copy.deepcopy(model.state_dict())
    return before, flatness_measures(model, init, evalset, m=SPEC.n_train, settings=FAST)


def test_measures_leave_the_model_unchanged_and_are_reproducible(trained, measured) -> None:
    model, init, evalset = trained
    before, first = measured
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = flatness_measures(model, init, evalset, m=SPEC.n_train, settings=FAST)
    assert first["normalized"] == again["normalized"] and first["searches"] == again["searches"]


def test_reported_values_follow_from_the_searches(trained, measured) -> None:
    model, init, _ = trained
    out = measured[1]
    w, w0 = weight_vector(model), weight_vector(init)
    sigma = out["searches"]["sigma"]["value"]
    alpha = out["searches"]["alpha"]["value"]
    assert out["omega"] == w.numel() and out["norms"]["w"] == pytest.approx(float(w.norm()))
    assert out["raw"]["pacbayes.orig"] == pytest.approx(bounds.pacbayes(float(w.square().sum()), sigma, 400))
    assert out["raw"]["sharpness.init"] == pytest.approx(
        bounds.sharpness(float((w - w0).square().sum()), w.numel(), alpha, 400)
    )
    for key, value in out["raw"].items():
        assert out["normalized"][key] == pytest.approx((value / 400) ** 0.5)
    for key in ("sigma", "sigma_mag", "alpha", "alpha_mag"):
        assert out["flatness"][key] == pytest.approx(out["searches"][key]["value"] ** -2)
        assert len(out["searches"][key]["samples_used"]) == out["searches"][key]["iterations"]
    # The measure at the ends of its search's bracket: here PAC-Bayes orig, eq. 16, at each end.
    ends = out["searches"]["sigma"]["bracket"]
    expected = [
        None if e is None else (bounds.pacbayes(float(w.square().sum()), e, 400) / 400) ** 0.5 for e in ends
    ]
    assert out["normalized_bracket"]["pacbayes.orig"] == pytest.approx(expected)
    assert set(out["normalized_bracket"]) == set(out["normalized"])


def test_stopping_when_certain_changes_no_search(trained) -> None:
    """The early stop skips only predictions that cannot change a move: same trajectory of scales."""
    model, init, evalset = trained
    settings = dataclasses.replace(FAST, copies_per_pass=1)
    full = flatness_measures(
        model, init, evalset, SPEC.n_train, dataclasses.replace(settings, stop_when_certain=False)
    )
    early = flatness_measures(model, init, evalset, SPEC.n_train, settings)
    for key, search in full["searches"].items():
        assert all(f == 1.0 for f in search["evaluated_fraction"])
        stopped = early["searches"][key]
        assert [scale for scale, _ in stopped["trajectory"]] == [scale for scale, _ in search["trajectory"]]
        assert (stopped["value"], stopped["converged"], stopped["saturated"]) == (
            search["value"],
            search["converged"],
            search["saturated"],
        )
    assert early["raw"] == full["raw"]
    assert early["forward_images"] < full["forward_images"]


def test_step_tally_ranges_contain_every_completion() -> None:
    """After some predictions, the certain range holds the deviation of any way the step can end."""
    tally = StepTally(samples=3, n=4, base=0.75)
    tally.add(correct=1, predictions=4)
    lo, hi = tally.certain_range()
    assert lo <= tally.deviation() <= hi
    for rest in range(9):  # correct among the 8 predictions left
        assert lo <= abs((1 + rest) / 12 - 0.75) <= hi
    assert (lo, hi) == (0.0, pytest.approx(0.75 - 1 / 12))
    assert tally.confident_range(0.99) is None
    tally.copy_accuracies += [0.25, 0.5]
    lo, hi = tally.confident_range(0.99)
    half = t_quantile(0.99, 1) * statistics.stdev([0.25, 0.5]) / 2**0.5
    assert (lo, hi) == (pytest.approx(0.0), pytest.approx(0.375 + half))


def test_sequential_mode_uses_fewer_samples(trained) -> None:
    model, init, evalset = trained
    settings = dataclasses.replace(FAST, samples=10, copies_per_pass=2, sequential=True)
    out = flatness_measures(model, init, evalset, m=SPEC.n_train, settings=settings)
    used = [n for s in out["searches"].values() for n in s["samples_used"]]
    assert all(2 <= n <= 10 for n in used) and min(used) < 10


def test_evalset_batches_cover_every_sample() -> None:
    images, labels = torch.zeros(10, 3, 4, 4), torch.arange(10)
    batches = list(EvalSet(images, labels, batch_size=4).batches())
    assert [len(y) for _, y in batches] == [4, 4, 2] and torch.equal(
        torch.cat([y for _, y in batches]), labels
    )
