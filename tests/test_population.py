"""qgen.population: the measured sweep as model records, the correlation rows, Figure 3's data, sampling."""

from __future__ import annotations

import itertools

import pytest
import scipy.stats

from qgen.experiments import expand_runs, sampled_points, summary_config, summary_rows
from qgen.population import READERS, correlation_records, figure3_records
from qgen.vocab import MEASURES, POPULATION_MEASURES

CONFIG = {
    "code_version": 1,
    "precisions": ["fp32", "int4"],
    "experiments": [
        {
            "name": "nin_sweep",
            "label": "NiN",
            "dataset": "digits",
            "model": "nin",
            "grid": {
                "model": {"width": [1, 2]},
                "optimizer": {"sgd": [0.1, 0.05], "adam": [0.001, 0.0005]},
                "weight_decay": [0.0],
            },
            "epochs": 1,
            "batch_size": 64,
            "milestones": [1],
        }
    ],
    "correlation": {"experiments": ["nin_sweep"]},
}


def fake_results(measure_of_gap) -> list[dict]:
    """A measures.json record per run; the gap is a known function of the axes, each measure of the gap."""
    results = []
    for k, spec in enumerate(expand_runs(CONFIG)):
        gap = (
            0.1 * spec.model_args["width"] + spec.lr + (0.05 if spec.precision == "fp32" else 0.0) + 1e-4 * k
        )
        value = measure_of_gap(gap)
        record = {
            "spec": spec.to_dict(),
            "status": "ok",
            "generalization_gap": gap,
            "normalized": {m.name: value for m in MEASURES},
            "curvature": {"top_eigenvalue": {"value": value}, "trace": {"value": value}},
            "norms": {"w": value, "w_minus_w0": value},
            "regularizer": {"realized": {"value": value}},
        }
        results.append(record)
    return results


def test_every_population_measure_has_a_reader() -> None:
    assert list(READERS) == list(POPULATION_MEASURES)


@pytest.mark.parametrize(("orientation", "expected"), [(lambda g: 3 * g + 1, 1.0), (lambda g: -g, -1.0)])
def test_a_measure_equal_to_the_gap_has_tau_and_psi_one(orientation, expected: float) -> None:
    rows = correlation_records(fake_results(orientation), summary_config(CONFIG, "correlation"))
    for measure in POPULATION_MEASURES:
        mine = {(r["statistic"], r["group"]): r for r in rows if r["measure"] == measure}
        assert mine[("tau", "all")]["value"] == pytest.approx(expected)
        assert mine[("tau", "all")]["n"] == 16
        assert mine[("Psi", "all")]["value"] == pytest.approx(expected)
        axes = {group for statistic, group in mine if statistic == "psi"}
        assert axes == {"width", "optimizer", "lr_level", "weight_decay", "precision"}
        assert mine[("psi", "weight_decay")]["value"] is None  # one value: every group is a single model
        assert mine[("psi", "precision")]["groups_used"] == 8  # every (width, optimizer, lr) point
        assert mine[("tau", "precision=int4")]["n"] == 8


def test_tau_over_all_models_equals_scipy_on_a_noisy_measure() -> None:
    results = fake_results(lambda g: g)
    for k, record in enumerate(results):  # scramble one measure: a deterministic, tie-rich permutation
        record["norms"]["w"] = float((7 * k) % 5)
    rows = correlation_records(results, summary_config(CONFIG, "correlation"))
    tau = next(r for r in rows if r["measure"] == "norm.w" and (r["statistic"], r["group"]) == ("tau", "all"))
    gaps = [r["generalization_gap"] for r in results]
    assert tau["value"] == pytest.approx(
        scipy.stats.kendalltau([r["norms"]["w"] for r in results], gaps).statistic
    )


def test_the_configured_confidence_sets_the_level_of_the_intervals() -> None:
    results = fake_results(lambda g: g)
    for k, record in enumerate(results):
        record["norms"]["w"] = float((7 * k) % 5)

    def tau_row(confidence: float) -> dict:
        config = CONFIG | {"correlation": CONFIG["correlation"] | {"confidence": confidence}}
        rows = correlation_records(results, summary_config(config, "correlation"))
        return next(
            r for r in rows if r["measure"] == "norm.w" and (r["statistic"], r["group"]) == ("tau", "all")
        )

    wide, narrow = tau_row(0.95), tau_row(0.5)
    assert wide["value"] == narrow["value"] and wide["std_error"] == narrow["std_error"] > 0
    assert (wide["confidence"], narrow["confidence"]) == (0.95, 0.5)
    for row, level in ((wide, 0.95), (narrow, 0.5)):
        half = scipy.stats.norm.ppf(0.5 + level / 2) * row["std_error"]
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((row["value"] - half, row["value"] + half))


def test_diverged_runs_are_left_out_and_figure3_has_one_row_per_model() -> None:
    results = fake_results(lambda g: g)
    results[0] = {"spec": results[0]["spec"], "status": "diverged"}
    rows = figure3_records(results, summary_config(CONFIG, "correlation"))
    assert len(rows) == 15 and {r["dataset"] for r in rows} == {"Digits"}
    first = rows[0]
    assert {"axis.width", "axis.optimizer", "axis.lr_level", "axis.precision", "gap", "regularizer"} <= set(
        first
    )


def test_a_seeded_sample_takes_the_same_points_at_every_precision() -> None:
    runs = expand_runs(CONFIG)
    sample = sampled_points(runs, 3, seed=1)
    points = {r.point for r in sample}
    assert len(points) == 3 and len(sample) == 3 * 2
    assert all({r.precision for r in sample if r.point == p} == {"fp32", "int4"} for p in points)
    assert (
        sampled_points(runs, 3, seed=1) == sample and {r.point for r in sampled_points(runs, 3, 2)} != points
    )
    assert sampled_points(runs, None, 0) == runs
    config = CONFIG | {"correlation": {"experiments": ["nin_sweep"], "points": 3, "seed": 1}}
    (row,) = summary_rows(summary_config(config, "correlation"))
    assert row.runs == sample
    assert (
        list(itertools.chain.from_iterable(r.runs for r in summary_rows(summary_config(CONFIG, "figure3"))))
        == runs
    )
