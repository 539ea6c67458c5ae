"""Kendall's tau against scipy and hand counts, Psi on a hand-computed design, the jackknife's coverage."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats

from qgen import correlation as corr
from qgen.experiments import expand_runs


def hand_tau_a(x: list[float], y: list[float]) -> float:
    """Jiang's formula over ordered pairs of distinct models, by explicit loops."""
    n = len(x)
    total = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(n) for j in range(n) if i != j)
    return total / (n * (n - 1))


@pytest.mark.parametrize("seed", range(5))
def test_tau_b_equals_scipy_and_tau_a_the_pair_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=30).astype(float).tolist()  # many ties
    y = (np.array(x) + rng.integers(0, 4, size=30)).astype(float).tolist()
    result = corr.kendall_tau(x, y)
    assert result.n == 30
    assert result.tau_b == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert result.tau_a == pytest.approx(hand_tau_a(x, y), abs=1e-12)
    assert result.tau_a != pytest.approx(result.tau_b, abs=1e-3)  # ties make them differ


def test_reference_note_example_and_undefined_cases() -> None:
    # Reference note §1.1: measure [1,1,2,3] vs gap [.1,.2,.3,.4]: tau_a = 0.8333, tau_b = 0.9129.
    tau = corr.kendall_tau([1, 1, 2, 3], [0.1, 0.2, 0.3, 0.4])
    assert tau.tau_a == pytest.approx(5 / 6)
    assert tau.tau_b == pytest.approx(5 / math.sqrt(30))
    constant = corr.kendall_tau([2, 2, 2], [0.1, 0.3, 0.2])
    assert (constant.tau_b, constant.tau_a, constant.ci_low, constant.std_error) == (None, 0.0, None, None)
    assert corr.kendall_tau([1.0], [0.5]) == corr.Tau(1, None, None, None, None, None)
    assert corr.kendall_tau([], []) == corr.Tau(0, None, None, None, None, None)
    two = corr.kendall_tau([1, 2], [3, 4])
    assert (two.tau_b, two.tau_a, two.ci_low) == (1.0, 1.0, None)  # no jackknife with two models
    with pytest.raises(ValueError, match=r"not finite at model index\(es\) \[1\]"):
        corr.kendall_tau([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="one length"):
        corr.kendall_tau([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        corr.kendall_tau([1.0, 2.0], [1.0, 2.0], confidence=1.0)


def test_jackknife_standard_error_equals_a_direct_leave_one_out() -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(0, 6, size=12).astype(float)
    y = x + rng.normal(size=12)
    loo = np.array([stats.kendalltau(np.delete(x, i), np.delete(y, i)).statistic for i in range(12)])
    expected = math.sqrt(11 / 12 * np.square(loo - loo.mean()).sum())
    result = corr.kendall_tau(x.tolist(), y.tolist(), confidence=0.9)
    assert result.std_error == pytest.approx(expected, rel=1e-12)
    z = stats.norm.ppf(0.95)
    assert result.ci_low == pytest.approx(max(-1, result.tau_b - z * expected))
    assert result.ci_high == pytest.approx(min(1, result.tau_b + z * expected))


def coverage(tau_true: float, draw, replications: int = 400) -> float:
    hits = 0
    for _ in range(replications):
        x, y = draw()
        t = corr.kendall_tau(x.tolist(), y.tolist())
        hits += t.ci_low <= tau_true <= t.ci_high
    return hits / replications


@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_jackknife_interval_covers_the_true_tau_about_95_percent(rho: float) -> None:
    rng = np.random.default_rng(11)
    cov = [[1, rho], [rho, 1]]

    def draw() -> tuple[np.ndarray, np.ndarray]:
        xy = rng.multivariate_normal([0, 0], cov, size=60)
        return xy[:, 0], xy[:, 1]

    # For a bivariate normal, tau = (2/pi) arcsin(rho) (Greiner's relation).
    assert 0.90 <= coverage(2 / math.pi * math.asin(rho), draw) <= 0.99


def test_jackknife_interval_covers_tau_b_with_ties() -> None:
    rng = np.random.default_rng(12)
    cov = [[1, 0.5], [0.5, 1]]
    edges = [-0.5, 0.3, 1.0]  # the measure takes 4 values: many ties

    def draw(size: int = 60) -> tuple[np.ndarray, np.ndarray]:
        xy = rng.multivariate_normal([0, 0], cov, size=size)
        return np.digitize(xy[:, 0], edges).astype(float), xy[:, 1]

    big_x, big_y = draw(400_000)
    population = stats.kendalltau(big_x, big_y).statistic  # tau_b of the population, to about 1e-3
    assert 0.90 <= coverage(population, draw) <= 0.99


def design_2x2x2() -> list[corr.ModelRecord]:
    """Axes a, b, c in {0, 1}; gap = 4a + 2b + c, so the gap rises along every axis.

    measure (a, b, c):   000: 0   001: 0   010: 1   011: -1
                         100: 10  101: 12  110: 11  111: 11.5
    Each group has two models, so its tau is the sign of the measure's change along the axis:
    - axis a, groups (b, c) = 00, 01, 10, 11: 10-0, 12-0, 11-1, 11.5+1 all > 0 -> psi_a = 1;
    - axis b, groups (a, c): 1-0 > 0, -1-0 < 0, 11-10 > 0, 11.5-12 < 0 -> psi_b = (1-1+1-1)/4 = 0;
    - axis c, groups (a, b): 0-0 tie (tau_b undefined, tau_a 0), -1-1 < 0, 12-10 > 0, 11.5-11 > 0
      -> psi_c = (-1+1+1)/3 = 1/3 over 3 used groups; with tau_a (0-1+1+1)/4 = 1/4.
    Psi = (1 + 0 + 1/3)/3 = 4/9; Psi_a = (1 + 0 + 1/4)/3 = 5/12.
    """
    measure = {
        (0, 0, 0): 0.0,
        (0, 0, 1): 0.0,
        (0, 1, 0): 1.0,
        (0, 1, 1): -1.0,
        (1, 0, 0): 10.0,
        (1, 0, 1): 12.0,
        (1, 1, 0): 11.0,
        (1, 1, 1): 11.5,
    }
    return [
        corr.ModelRecord(f"m{a}{b}{c}", {"a": a, "b": b, "c": c}, 4.0 * a + 2 * b + c, {"mu": value})
        for (a, b, c), value in measure.items()
    ]


def test_psi_equals_the_hand_computed_value_on_a_2x2x2_design() -> None:
    result = corr.correlate(design_2x2x2(), precision_axis=None)
    g = result.measures["mu"].granulated
    assert g.psi == pytest.approx(4 / 9)
    assert g.psi_a == pytest.approx(5 / 12)
    assert g.axes_used == 3
    assert (g.axes["a"].psi, g.axes["b"].psi, g.axes["c"].psi) == pytest.approx((1, 0, 1 / 3))
    assert (g.axes["c"].psi_a, g.axes["c"].groups, g.axes["c"].groups_used) == (pytest.approx(0.25), 4, 3)
    assert all(axis.singletons == 0 for axis in g.axes.values())
    # psi_b's interval: group taus (1, -1, 1, -1), sd = sqrt(4/3), SE = sd/2.
    b = g.axes["b"]
    assert b.std_error == pytest.approx(math.sqrt(4 / 3) / 2)
    assert (b.ci_low, b.ci_high) == (-1.0, 1.0)  # ±1.96 SE = ±1.13, clipped
    assert g.axes["a"].std_error == 0.0 and (g.axes["a"].ci_low, g.axes["a"].ci_high) == (1.0, 1.0)


def test_a_missing_model_leaves_singleton_groups_that_are_skipped() -> None:
    records = design_2x2x2()
    records[-1] = corr.ModelRecord("m111", records[-1].hyperparameters, records[-1].gap, {"mu": None})
    m = corr.correlate(records, precision_axis=None).measures["mu"]
    assert (m.n_models, m.excluded) == (7, ["m111"])
    # Without model 111 each axis loses the group that contained it (now a singleton):
    # a: 1, 1, 1 -> 1;  b: 1, -1, 1 -> 1/3;  c: tie, -1, 1 -> 0 over 2 used groups.
    axes = m.granulated.axes
    assert (axes["a"].psi, axes["b"].psi, axes["c"].psi) == pytest.approx((1, 1 / 3, 0))
    assert [axes[k].singletons for k in "abc"] == [1, 1, 1]
    assert [axes[k].groups_used for k in "abc"] == [3, 3, 2]


def test_the_gap_itself_gives_one_and_its_negative_minus_one() -> None:
    records = [
        corr.ModelRecord(
            f"r{a}{b}{p}",
            {"a": a, "b": b, "precision": p},
            gap := 0.3 * a + 0.1 * b + 0.07 * i + 0.01 * (a * b) ** 2,
            {"gap": gap, "minus": -gap},
        )
        for i, (a, b, p) in enumerate(itertools.product(range(3), range(2), ["fp32", "int4"]))
    ]
    result = corr.correlate(records)
    for name, sign in (("gap", 1), ("minus", -1)):
        m = result.measures[name]
        assert (m.tau.tau_b, m.tau.tau_a) == (sign, sign)
        assert m.granulated.psi == sign and m.granulated.axes_used == 3
        assert all(t.tau_b == sign for t in m.per_precision.values())
    assert list(result.measures["gap"].per_precision) == ["fp32", "int4"]
    assert result.axes == ["a", "b", "precision"]


def test_per_precision_tau_is_tau_within_that_precision() -> None:
    rng = np.random.default_rng(3)
    records = [
        corr.ModelRecord(
            f"r{i}", {"w": i % 4, "precision": p}, float(rng.normal()), {"mu": float(rng.normal())}
        )
        for i, p in enumerate(["fp32", "int8"] * 10)
    ]
    result = corr.correlate(records).measures["mu"]
    for precision in ("fp32", "int8"):
        chosen = [r for r in records if r.hyperparameters["precision"] == precision]
        expected = corr.kendall_tau([r.measures["mu"] for r in chosen], [r.gap for r in chosen])
        assert result.per_precision[precision] == expected
    json.loads(json.dumps(asdict(corr.correlate(records))))


def qgen_like_experiment() -> dict:
    return {
        "name": "nin",
        "dataset": "digits",
        "model": "nin",
        "grid": {
            "model": {"depth": [2, 3]},
            "optimizer": {"sgd": [0.1, 0.05, 0.01], "adam": [0.001, 0.0005, 0.0001]},
            "weight_decay": [0.0, 0.0001],
        },
        "epochs": 1,
        "batch_size": 8,
        "milestones": [1],
    }


def test_lr_is_keyed_by_its_level_within_the_optimizer() -> None:
    experiment = qgen_like_experiment()
    runs = expand_runs({"precisions": ["fp32", "int4"], "experiments": [experiment]})
    axes = [corr.grid_hyperparameters(spec, experiment) for spec in runs]
    assert list(axes[0]) == ["depth", "optimizer", "lr_level", "weight_decay", "precision"]
    level = {(s.optimizer, s.lr): h["lr_level"] for s, h in zip(runs, axes, strict=True)}
    assert level == {
        ("sgd", 0.01): 0, ("sgd", 0.05): 1, ("sgd", 0.1): 2,
        ("adam", 0.0001): 0, ("adam", 0.0005): 1, ("adam", 0.001): 2,
    }  # fmt: skip
    rng = np.random.default_rng(0)
    gaps = rng.normal(size=len(runs))
    by_level = [
        corr.ModelRecord(s.run_id, h, float(gap), {"mu": float(gap)})
        for s, h, gap in zip(runs, axes, gaps, strict=True)
    ]
    by_value = [
        corr.ModelRecord(
            r.run_id,
            {k: v for k, v in r.hyperparameters.items() if k != "lr_level"} | {"lr": s.lr},
            r.gap,
            r.measures,
        )
        for s, r in zip(runs, by_level, strict=True)
    ]
    optimizer_level = corr.correlate(by_level).measures["mu"].granulated.axes["optimizer"]
    optimizer_value = corr.correlate(by_value).measures["mu"].granulated.axes["optimizer"]
    # 3 levels x 2 depths x 2 weight decays x 2 precisions = 24 pairs (SGD, Adam) at one level.
    assert (optimizer_level.groups, optimizer_level.singletons, optimizer_level.psi) == (24, 0, 1.0)
    # By value, no two models differ only in optimizer: 48 groups of one model, psi undefined.
    assert (optimizer_value.groups, optimizer_value.singletons, optimizer_value.psi) == (0, 48, None)


def test_grid_hyperparameters_names_a_run_outside_the_grid() -> None:
    experiment = qgen_like_experiment()
    spec = expand_runs({"precisions": ["fp32"], "experiments": [experiment]})[0]
    with pytest.raises(ValueError, match=r"lr 0\.1 is not in experiment 'nin' grid\.optimizer\.sgd"):
        corr.grid_hyperparameters(
            spec, experiment | {"grid": experiment["grid"] | {"optimizer": {"sgd": [0.2]}}}
        )
    with pytest.raises(ValueError, match="optimizer 'sgd' is not in experiment 'nin'"):
        corr.grid_hyperparameters(
            spec, experiment | {"grid": experiment["grid"] | {"optimizer": {"adam": [0.1]}}}
        )


def test_correlate_rejects_inconsistent_records() -> None:
    a = corr.ModelRecord("a", {"x": 1, "precision": "fp32"}, 0.1, {"mu": 1.0})
    with pytest.raises(ValueError, match=r"model b has hyperparameters \['precision'\]"):
        corr.correlate([a, corr.ModelRecord("b", {"precision": "fp32"}, 0.2, {"mu": 2.0})])
    with pytest.raises(ValueError, match="duplicate run ids"):
        corr.correlate([a, a])
    with pytest.raises(ValueError, match="precision axis 'bits'"):
        corr.correlate([a], precision_axis="bits")
    with pytest.raises(ValueError, match="no model records"):
        corr.correlate([])
