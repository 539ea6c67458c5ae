"""Flatness searches on a small trained network, checked against plain re-evaluation."""

from __future__ import annotations

import copy
import dataclasses
import statistics

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qgen import data
from qgen.measures import bounds
from qgen.measures.flatness import MeasureSettings, flatness_measures
from qgen.measures.perturb import (
    EvalSet,
    PerturbedEvaluator,
    StepTally,
    gaussian_std,
    perturbed_names,
    t_quantile,
)
from qgen.norms import weight_vector
from qgen.runs import build_model

from helpers import tiny_spec, train_tiny

SPEC = tiny_spec()
FAST = MeasureSettings(depth=5, samples=4, copies_per_pass=4, ascent_steps=4, ascent_batch=32)


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
        augment=False,
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


def test_batched_copies_equal_one_copy_at_a_time(trained) -> None:
    model, _, evalset = trained
    names = perturbed_names(model, "all")
    evaluator = PerturbedEvaluator(model, evalset, names)
    gen = torch.Generator().manual_seed(0)
    deltas = {n: 0.05 * torch.randn((3, *evaluator.base[n].shape), generator=gen) for n in names}
    batched = evaluator.accuracy(deltas)
    for k in range(3):
        one_copy = {n: d[k] for n, d in deltas.items()}
        assert batched[k].item() == pytest.approx(plain_accuracy(model, names, one_copy, evalset))
        single = evaluator.accuracy({n: d[k : k + 1] for n, d in deltas.items()})
        assert single.shape == (1,) and single.item() == pytest.approx(batched[k].item())


def test_perturbed_sets() -> None:
    model = build_model(dataclasses.replace(SPEC, precision="int4"))
    all_names, weights = perturbed_names(model, "all"), perturbed_names(model, "weights")
    assert not any(n.endswith(".step") for n in all_names)
    assert all(n.endswith("weight") or n.endswith("weight.original") for n in weights)
    assert sum(dict(model.named_parameters())[n].numel() for n in weights) == weight_vector(model).numel()
    assert set(weights) < set(all_names)


def test_noise_conventions() -> None:
    w = torch.tensor([0.5, -2.0])
    assert gaussian_std(w, 0.3, False, "reference", 1e-3) == pytest.approx(0.09)
    assert gaussian_std(w, 0.3, False, "jiang", 1e-3) == 0.3
    torch.testing.assert_close(gaussian_std(w, 0.3, True, "reference", 1e-3), 0.09 * w.square() + 1e-6)
    torch.testing.assert_close(gaussian_std(w, 0.3, True, "jiang", 1e-3), (0.09 * w.square() + 1e-6).sqrt())


def test_sigma_moves_training_accuracy_by_the_target(trained) -> None:
    model, _, evalset = trained
    from qgen.measures.flatness import FlatnessSearch

    search = FlatnessSearch(model, evalset, dataclasses.replace(FAST, depth=12, samples=8, copies_per_pass=8))
    result = search.gaussian(magnitude_aware=False)
    assert result.converged and result.saturated is None
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
